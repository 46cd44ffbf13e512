"""SQLite: schema discovery, trigger capture, the source, and the reverse sink."""
