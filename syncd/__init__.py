"""syncd: change-data-capture from SQLite + ChromaDB to PostgreSQL + pgvector."""

__version__ = "0.1.0"
