"""Harnesses of the two table sinks: SQLite tables into PostgreSQL, and PostgreSQL changes
back into the SQLite file (the reverse stream)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from syncd.config import SqliteConfig, Target
from syncd.model import Change, Op, Position, SnapshotState
from syncd.pg.connect import connect
from syncd.ports import Chunk, Sink
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.sqlite.schema import discover
from syncd.stores.sqlite.sink import SqliteSink
from tests.contract.harness import REFUSED, Harness, PostgresState, StoredReject

CHECKPOINTS = "_syncd_checkpoints"  # the reverse sink's bookkeeping, as the operator reads it
REJECTS = "_syncd_rejects"
TABLE = "items"
DDL = f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
SOURCE_ID = "contract-source"


def _row(key: str, value: object) -> dict[str, object]:
    return {"id": key, "n": value}


class PostgresHarness(Harness):
    """PostgresSink: the forward stream of a SQLite table into PostgreSQL."""

    name = "postgres"

    def __init__(self, pg_dsn: str, tmp_path: Path, tag: str) -> None:
        self.dsn = pg_dsn
        self.path = tmp_path / "app.sqlite"
        self.state = PostgresState(pg_dsn)
        # the suite's tests share one database: a table and a stream of their own
        self.table = f"{TABLE}_{tag}"
        self.stream = f"sqlite_{tag}"

    async def setup(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            conn.execute(DDL.replace(TABLE, self.table, 1))
            conn.commit()

    async def open(self, *, strict: bool = False) -> Sink:
        with contextlib.closing(sqlite3.connect(self.path)) as lite:
            tables = discover(lite, tables=None, exclude=(), no_primary_key="rowid")
        target = Target(dsn=self.dsn, strict=strict)
        conn = await connect(target, self.dsn)
        try:
            planned = await PostgresSink.prepare(conn, self.stream, tables, target)
            await self.state.constrain(f"public.{self.table}", f"n < {REFUSED}")
        except BaseException:
            await conn.close()
            raise
        return PostgresSink(conn, planned, strict=strict, source_id=SOURCE_ID)

    async def start(self, sink: Sink, position: Position) -> None:
        state = SnapshotState(start=position)
        await sink.begin_snapshot(self.stream, state)
        await sink.finish_snapshot(self.stream, state)

    def insert(self, key: str, value: int, position: int) -> Change:
        return Change(Op.INSERT, self.table, (key,), _row(key, value), Position(position))

    def update(self, key: str, value: int, position: int) -> Change:
        return Change(Op.UPDATE, self.table, (key,), _row(key, value), Position(position))

    def delete(self, key: str, position: int) -> Change:
        return Change(Op.DELETE, self.table, (key,), None, Position(position))

    def refused(self, key: str, position: int) -> Change:
        # converted fine, refused by PostgreSQL itself (the table's CHECK constraint)
        return Change(Op.INSERT, self.table, (key,), _row(key, REFUSED), Position(position))

    def chunk(self, rows: Mapping[str, int | None]) -> Chunk:
        # SQLite keeps text in an INTEGER column; the converter for the target's bigint refuses it
        values = [(k, "not a number" if v is None else v) for k, v in sorted(rows.items())]
        return Chunk(self.table, ("id", "n"), values, (values[-1][0],))

    async def rows(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{self.table}"):
                return {}
            return {r["id"]: r["n"] for r in await conn.fetch(f"SELECT id, n FROM public.{self.table}")}
        finally:
            await conn.close()

    async def checkpoint(self) -> int | None:
        return await self.state.checkpoint(self.stream)

    async def rejects(self) -> list[StoredReject]:
        return await self.state.rejects(self.stream)

    async def take_over(self) -> None:
        await self.state.take_over(self.stream)

    @asynccontextmanager
    async def broken(self, sink: Sink) -> AsyncIterator[None]:
        assert isinstance(sink, PostgresSink)
        async with self.state.terminated(sink.conn):
            yield


class SqliteHarness(Harness):
    """SqliteSink: the reverse stream of PostgreSQL changes into the app's SQLite file."""

    name = "sqlite"
    stream = "postgres→sqlite"
    not_applicable: ClassVar[Mapping[str, str]] = {
        "snapshot": "the reverse stream copies no snapshot: it starts at the position the cutover "
                    "records at the flip (SqliteSink.set_checkpoint)",
    }

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "app.sqlite"
        self._lock: sqlite3.Connection | None = None

    async def setup(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            conn.execute(DDL)
            conn.commit()

    async def open(self, *, strict: bool = False) -> Sink:
        return await SqliteSink.open(SqliteConfig(path=self.path), strict=strict, source_id=SOURCE_ID)

    async def start(self, sink: Sink, position: Position) -> None:
        assert isinstance(sink, SqliteSink)
        await sink.set_checkpoint(self.stream, position)

    def insert(self, key: str, value: int, position: int) -> Change:
        return Change(Op.INSERT, TABLE, (key,), _row(key, value), Position(position))

    def update(self, key: str, value: int, position: int) -> Change:
        return Change(Op.UPDATE, TABLE, (key,), _row(key, value), Position(position))

    def delete(self, key: str, position: int) -> Change:
        return Change(Op.DELETE, TABLE, (key,), None, Position(position))

    def refused(self, key: str, position: int) -> Change:
        # n is NOT NULL in the SQLite table (PostgreSQL's column may allow NULL)
        return Change(Op.INSERT, TABLE, (key,), _row(key, None), Position(position))

    def _read(self, table: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Rows of *sql* over *table*; none while *table* does not exist yet."""
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (table,)).fetchone():
                return []
            return conn.execute(sql, args).fetchall()

    async def rows(self) -> dict[str, int]:
        return {k: v for k, v in self._read(TABLE, f"SELECT id, n FROM {TABLE}")}

    async def checkpoint(self) -> int | None:
        got = self._read(CHECKPOINTS, f"SELECT position FROM {CHECKPOINTS} WHERE stream = ?", self.stream)
        return int(got[0][0]) if got else None

    async def rejects(self) -> list[StoredReject]:
        got = self._read(REJECTS, f"SELECT key, error, position FROM {REJECTS} WHERE stream = ? "
                         "AND resolved_at IS NULL ORDER BY id", self.stream)
        return [StoredReject(json.loads(k), e, p) for k, e, p in got]

    async def take_over(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            conn.execute(f"""UPDATE {CHECKPOINTS} SET generation = 2, owner = '{{"pid": 2}}'
                             WHERE stream = ?""", (self.stream,))
            conn.commit()

    @asynccontextmanager
    async def broken(self, sink: Sink) -> AsyncIterator[None]:
        # another writer holds the file (readers still read): the sink's write waits out its
        # busy timeout, then fails
        lock = sqlite3.connect(self.path, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
