"""Source adapters: where changes are read from."""
