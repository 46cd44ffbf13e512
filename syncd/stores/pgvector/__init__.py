"""pgvector: a collection's table, its plan, the sink and the reverse source."""
