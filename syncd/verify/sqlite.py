"""SQLite reads for ``syncd verify``: pages in key order, key ranges, the changelog tail.

One read-only connection on one worker thread. Every call is one short read
transaction (the app's writers are never held behind verify), and returns the
changelog head it saw, so that a comparison knows which source position its
rows belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from syncd.errors import SourceBusy, SourceError
from syncd.model import Key
from syncd.ports.tables import Table
from syncd.sql import qi
from syncd.stores.sqlite.capture import CHANGELOG, META
from syncd.stores.sqlite.schema import uri
from syncd.stores.sqlite.values import decode_key, fetch_all, param
from syncd.verify.sqlite_digest import Digest, DigestPool, RowSpec, changelog_head, digest, digest_sql

T = TypeVar("T")
Raw = tuple[Any, ...]

TAIL_LIMIT = 200_000
"""At most this many changelog entries are read to find keys in flight; more: all in flight."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """A key range ``(lo, hi]`` in SQLite's own key values; None is unbounded."""

    lo: Key | None
    hi: Key | None


@dataclass(frozen=True, slots=True)
class Tail:
    """Changes logged after a position, for one table, as a source read saw them."""

    head: int
    complete: bool
    """Every change after the position was still in the log (none pruned)."""
    keys: frozenset[Key]
    """Raw keys of the table changed after the position."""


class SqliteReader:
    """A read-only connection to the source database, used from one thread."""

    def __init__(self, path: Path, workers: int = 0) -> None:
        """*workers*: processes that digest key ranges in parallel (:class:`DigestPool`, started
        at the first parallel digest); 0 digests on the reader's own thread."""
        self.path = path
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-verify")
        self._conn: sqlite3.Connection | None = None
        self._registered: set[RowSpec] = set()
        self._pool: DigestPool | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await self._translated(loop.run_in_executor(self._executor, fn, *args))

    async def _translated(self, future: Awaitable[T]) -> T:
        try:
            return await future
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise SourceBusy(f"SQLite {self.path}: {exc}") from exc
            raise SourceError(f"SQLite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise SourceError(f"SQLite {self.path}: {type(exc).__name__}: {exc}") from exc
        except BrokenProcessPool as exc:
            raise SourceError(f"SQLite {self.path}: a digest worker process ended: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise SourceError(f"SQLite database {self.path} does not exist (source.sqlite.path)")
            self._conn = sqlite3.connect(uri(self.path, "ro"), uri=True, timeout=30,
                                         isolation_level=None, check_same_thread=False)
        return self._conn

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._registered.clear()
        with contextlib.suppress(Exception):
            await self._call(close)
        self._executor.shutdown(wait=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.close)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* inside one read transaction."""
        conn = self._open()
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _head(conn: sqlite3.Connection) -> int:
        return changelog_head(conn)

    # --- SQL -------------------------------------------------------------------------------

    @staticmethod
    def _select(table: Table) -> str:
        cols = ", ".join(qi(c) for c in table.column_names)
        return f"SELECT {'rowid, ' if table.synthetic_key else ''}{cols} FROM {qi(table.name)}"

    @staticmethod
    def _key_sql(table: Table) -> str:
        if table.rowid_key:
            return "rowid"
        return ", ".join(qi(k) for k in table.pk)

    @classmethod
    def _range_sql(cls, table: Table, bounds: Bounds) -> tuple[str, list[Any]]:
        key = cls._key_sql(table)
        cond: list[str] = []
        params: list[Any] = []
        for op, value in ((">", bounds.lo), ("<=", bounds.hi)):
            if value is not None:
                marks = [param(v) for v in value]
                cond.append(f"({key}) {op} ({', '.join(m for m, _ in marks)})")
                params.extend(p for _, p in marks)
        return (" WHERE " + " AND ".join(cond) if cond else ""), params

    # --- reads -----------------------------------------------------------------------------

    async def page(self, table: Table, after: Key | None, rows: int) -> tuple[list[Raw], int]:
        """Up to *rows* rows after key *after*, in key order, and the changelog head."""
        where, params = self._range_sql(table, Bounds(after, None))
        sql = f"{self._select(table)}{where} ORDER BY {self._key_sql(table)} LIMIT ?"

        def run(conn: sqlite3.Connection) -> tuple[list[Raw], int]:
            return fetch_all(conn, sql, (*params, rows)), self._head(conn)
        return await self._call(self._read, run)

    async def cuts(self, table: Table, every: int) -> list[Key]:
        """Every *every*-th key in key order: the bounds of the digest chunks (one read of the key)."""
        key = self._key_sql(table)
        names = ["rowid"] if table.rowid_key else list(table.pk)
        aliased = ", ".join(f"{k if table.rowid_key else qi(k)} AS k{i}" for i, k in enumerate(names))
        outer = ", ".join(f"k{i}" for i in range(len(names)))
        sql = (f"SELECT {outer} FROM (SELECT {aliased}, row_number() OVER (ORDER BY {key}) AS n "
               f"FROM {qi(table.name)}) WHERE n % ? = 0")

        def run(conn: sqlite3.Connection) -> list[Key]:
            return [tuple(r) for r in conn.execute(sql, (every,))]
        return await self._call(self._read, run)

    async def digest(self, table: Table, bounds: Bounds, spec: RowSpec, parallel: bool = False) -> Digest:
        """Digest of the rows in *bounds*: MD5 over the MD5s of their canonical texts, in key order
        (:mod:`syncd.verify.sqlite_digest`); *parallel*: in a worker process, if the reader has any."""
        where, params = self._range_sql(table, bounds)
        sql = digest_sql(qi(table.name), self._key_sql(table), where, spec.row().digest)
        if parallel and self.workers > 0:
            if self._pool is None:
                self._pool = DigestPool(self.path, self.workers)
            return await self._translated(asyncio.wrap_future(self._pool.submit(spec, sql, params)))

        def run(conn: sqlite3.Connection) -> Digest:
            return digest(conn, spec, sql, params, self._registered)
        return await self._call(self._read, run)

    async def encoding(self) -> str:
        def run(conn: sqlite3.Connection) -> str:
            return str(conn.execute("PRAGMA encoding").fetchone()[0])
        return await self._call(self._read, run)

    async def count(self, table: Table, after: int | None) -> tuple[int, Tail, int]:
        """Rows in *table*, the changes to it logged after *after*, and how many of the keys
        those changes touched exist now (all in one read)."""
        key = self._key_sql(table)

        def run(conn: sqlite3.Connection) -> tuple[int, Tail, int]:
            n = int(conn.execute(f"SELECT count(*) FROM {qi(table.name)}").fetchone()[0])
            tail = self._tail(conn, table, after)
            keys = list(tail.keys)
            present = 0
            width = max(1, len(table.pk))
            step = max(1, 900 // width)
            for i in range(0, len(keys), step):
                marks = [[param(v) for v in k] for k in keys[i:i + step]]
                tuples = ", ".join("(" + ", ".join(m for m, _ in k) + ")" for k in marks)
                present += int(conn.execute(
                    f"SELECT count(*) FROM {qi(table.name)} WHERE ({key}) IN (VALUES {tuples})",
                    [p for k in marks for _, p in k]).fetchone()[0])
            return n, tail, present
        return await self._call(self._read, run)

    async def ranges(self, table: Table, ranges: Sequence[Bounds], after: int | None
                     ) -> tuple[list[list[Raw]], Tail]:
        """The rows of each range, and the changes logged after *after*, in one read."""
        sqls = [self._range_sql(table, b) for b in ranges]
        order = self._key_sql(table)

        def run(conn: sqlite3.Connection) -> tuple[list[list[Raw]], Tail]:
            out = [fetch_all(conn, f"{self._select(table)}{where} ORDER BY {order}", params)
                   for where, params in sqls]
            return out, self._tail(conn, table, after)
        return await self._call(self._read, run)

    def _tail(self, conn: sqlite3.Connection, table: Table, after: int | None) -> Tail:
        head = self._head(conn)
        if after is None or head <= after:
            return Tail(head, True, frozenset())
        first = conn.execute(f"SELECT min(id) FROM {CHANGELOG}").fetchone()[0]
        if first is None or first > after + 1:  # changes after `after` were pruned already
            return Tail(head, False, frozenset())
        rows = fetch_all(conn, f"SELECT pk FROM {CHANGELOG} WHERE id > ? AND tbl = ? LIMIT ?",
                         (after, table.name, TAIL_LIMIT + 1))
        if len(rows) > TAIL_LIMIT:
            return Tail(head, False, frozenset())
        return Tail(head, True, frozenset(decode_key(r[0]) for r in rows))

    async def head(self) -> int:
        return await self._call(self._read, self._head)

    async def generation(self) -> str | None:
        """The id capture gave this change log when it was installed, if it records one."""
        def run(conn: sqlite3.Connection) -> str | None:
            try:
                row = conn.execute(f"SELECT signature FROM {META} WHERE tbl = ''").fetchone()
            except sqlite3.OperationalError:  # no capture installed
                return None
            return str(row[0]) if row else None
        return await self._call(self._read, run)


__all__ = ["Bounds", "Digest", "Raw", "SqliteReader", "Tail"]
