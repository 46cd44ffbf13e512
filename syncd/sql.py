"""SQL text shared by every store: quoting (the same rules in SQLite and PostgreSQL) and the name
of the PostgreSQL schema that holds syncd's own state."""

from __future__ import annotations

STATE_SCHEMA = "syncd"
"""The PostgreSQL schema of syncd's state tables (checkpoints, rejects, objects, …)."""


def qi(name: str) -> str:
    """Quote an SQL identifier (same rules in SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def ql(text: str) -> str:
    """Quote an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
