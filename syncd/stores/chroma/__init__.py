"""Chroma: its log and catalog, server and HTTP-only reading, retention, fence, the sink."""
