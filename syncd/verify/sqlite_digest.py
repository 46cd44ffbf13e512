"""Per-range digests of a SQLite table, in this process or in worker processes.

A digest is computed inside SQLite (:mod:`syncd.verify.expect_sql`), but the parts SQL
cannot render (jsonb's text, float bits) and each row's MD5 are Python functions SQLite
calls, under the GIL: one process digests at the speed of one core. :class:`DigestPool`
runs the digests of a table's key ranges in worker processes, each with its own read-only
connection, so that several ranges are digested at once.

Everything a worker needs is plain data (:class:`RowSpec`: column names, types and the
SQLite expressions of the columns); the worker builds the SQL and the functions itself,
from the same :func:`syncd.verify.expect_sql.row_sql`, and keeps them (and the JSON parts
they remember) for the following ranges.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import multiprocessing
import signal
import sqlite3
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.stores.sqlite.schema import changelog_head as schema_changelog_head
from syncd.stores.sqlite.schema import uri
from syncd.verify.expect import expect
from syncd.verify.expect_sql import RowSql, row_sql


@dataclass(frozen=True, slots=True)
class RowSpec:
    """What a row's canonical text is made of: per target column (name, type, rounded on
    purpose), and the SQLite expression of each column in the same order."""

    columns: tuple[tuple[str, str, bool], ...]
    sources: tuple[str, ...]

    def row(self) -> RowSql:
        """The SQL and functions of this spec (built once per process)."""
        return _built(self)


@functools.lru_cache(maxsize=64)
def _built(spec: RowSpec) -> RowSql:
    return row_sql([expect(*c) for c in spec.columns], spec.sources, "syncd_part")


@dataclass(frozen=True, slots=True)
class Digest:
    """What SQLite says about the rows of one key range (:func:`digest`)."""

    rows: int
    decided: int
    """Rows whose every part SQL (or a registered part function) decided; fewer: Python must look."""
    md5: str | None
    """None for an empty range."""
    head: int


def changelog_head(conn: sqlite3.Connection) -> int:
    return schema_changelog_head(conn) or 0  # no changelog: no capture


def digest_sql(table: str, key: str, where: str, row_md5: str) -> str:
    return (f"SELECT count(*), count(h), group_concat(h, '') FROM ("
            f"SELECT {row_md5} AS h FROM {table}{where} ORDER BY {key})")


def digest(conn: sqlite3.Connection, spec: RowSpec, sql: str, params: list[Any],
           registered: set[RowSpec]) -> Digest:
    """Run a :func:`digest_sql` query for *spec* in the open read transaction of *conn*;
    *registered*: the specs whose functions *conn* has already."""
    if spec not in registered:
        spec.row().register(conn)
        registered.add(spec)
    n, decided, hashes = conn.execute(sql, params).fetchone()
    md5 = hashlib.md5(hashes.encode("ascii"), usedforsecurity=False).hexdigest() if hashes else None
    return Digest(int(n), int(decided), md5, changelog_head(conn))


# --- worker processes --------------------------------------------------------------------------

_worker: list[tuple[sqlite3.Connection, set[RowSpec]]] = []
"""In a worker process: its connection and the specs registered on it."""


def _worker_open(path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is verify's to handle; it shuts the pool down
    _worker.append((sqlite3.connect(uri(path, "ro"), uri=True, timeout=30, isolation_level=None), set()))


def _worker_digest(spec: RowSpec, sql: str, params: list[Any]) -> Digest:
    conn, registered = _worker[0]
    conn.execute("BEGIN")
    try:
        return digest(conn, spec, sql, params, registered)
    finally:
        conn.execute("COMMIT")


class DigestPool:
    """*workers* processes, each with a read-only connection to *path*, digesting key ranges."""

    def __init__(self, path: Path, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_open, initargs=(str(path),))
        atexit.register(self.close)

    def submit(self, spec: RowSpec, sql: str, params: list[Any]) -> Future[Digest]:
        return self._pool.submit(_worker_digest, spec, sql, params)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        atexit.unregister(self.close)


__all__ = ["Digest", "DigestPool", "RowSpec", "changelog_head", "digest", "digest_sql"]
