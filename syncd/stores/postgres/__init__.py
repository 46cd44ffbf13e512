"""PostgreSQL: connections, the embedded server, syncd's state, types, capture, source, sink."""
