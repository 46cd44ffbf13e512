"""Sink adapters: where changes are written, with the checkpoint."""
