"""`syncd verify`: evidence that PostgreSQL holds what the old stores hold."""
