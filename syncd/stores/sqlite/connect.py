"""Opening a SQLite database, its errors as syncd's, and reading the selected tables once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from syncd.config import SqliteConfig
from syncd.errors import CaptureError, SourceBusy, SourceError, SyncdError
from syncd.ports.tables import Table
from syncd.sql import sqlite_error
from syncd.stores.sqlite.schema import discover, uri


def open_connection(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """Open an existing SQLite database read-write, with clear errors."""
    if not path.exists():
        raise SourceError(f"SQLite database {path} does not exist (source.sqlite.path)")
    try:
        conn = sqlite3.connect(uri(path, "rw"), uri=True, timeout=timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise SourceBusy(f"SQLite database {path}: {exc}") from exc
        raise SourceError(f"SQLite database {path}: {exc} (source.sqlite.path)") from exc
    return conn


def translate(exc: BaseException, path: Path) -> SyncdError:
    return sqlite_error(exc, f"SQLite {path}")


def read_tables(config: SqliteConfig) -> list[Table]:
    """The SQLite tables of the forward stream (same selection), described."""
    conn = open_connection(config.path)
    try:
        return discover(conn, tables=config.tables, exclude=config.exclude,
                        no_primary_key=config.no_primary_key)
    except sqlite3.Error as exc:
        raise CaptureError(f"SQLite {config.path}: {exc}") from exc
    finally:
        conn.close()
