"""Files: backups of the app's stores and their restore (docs/files.md)."""
