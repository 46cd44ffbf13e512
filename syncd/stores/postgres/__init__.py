"""PostgreSQL tables as a store: the target of the SQLite tables (sink, schema changes) and the
reverse source; the plumbing it stands on is :mod:`syncd.pg`."""
