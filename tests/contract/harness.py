"""What the contract suite needs to know about one Sink adapter.

A :class:`Harness` builds its sink on real stores, makes changes of the shape that sink's
stream hands it (one value per key: an item ``key`` holding the integer ``value``), and reads
the store back with the store's own client (plain SQL, ``sqlite3``, ``chromadb``), never with
the sink's code. A case an adapter legitimately does not support is named in
:attr:`Harness.not_applicable`, with the reason; the suite skips it there (a skip, not a pass).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg

from syncd.model import Change, Position
from syncd.ports import Chunk, Sink


@dataclass(frozen=True, slots=True)
class StoredReject:
    """An open reject as the store holds it."""

    key: list[Any]
    error: str
    position: int | None


class Harness:
    """One adapter under the contract. Subclasses fill in the store-specific parts."""

    name: str = ""
    stream: str = ""
    not_applicable: ClassVar[Mapping[str, str]] = {}
    """Case name -> why the case does not apply to this adapter."""
    update_of_missing_creates: bool = True
    """Whether an UPDATE of a key the store lacks creates it (full row images) or does
    nothing (Chroma's UPDATE of a missing id)."""
    refreshes_rejected: bool = False
    """Whether a later change of a key with an open reject writes the source's current image of
    the key instead of the change (and so resolves the reject when the source no longer holds a
    row the store refuses)."""
    rows_commit_with_checkpoint: bool = True
    """Whether a batch's rows commit in the checkpoint's transaction (Chroma has none: items are
    written before the checkpoint commits in PostgreSQL, and a replay writes nothing twice)."""
    fresh_checkpoint_error: type[Exception] | None = None
    """What ``load_checkpoint`` raises on a fresh stream, for a sink that cannot start without
    a recorded start position (None: it returns None)."""

    async def setup(self) -> None:
        """Create the stores' objects the sink writes into (tables, collections)."""

    async def teardown(self) -> None:
        """Close what :meth:`setup` opened."""

    async def open(self, *, strict: bool = False) -> Sink:
        raise NotImplementedError

    async def start(self, sink: Sink, position: Position) -> None:
        """Record where the stream starts, as its stream would (an empty snapshot, or the start
        position the cutover records)."""
        raise NotImplementedError

    # --- changes ---------------------------------------------------------------------------

    def insert(self, key: str, value: int, position: int) -> Change:
        raise NotImplementedError

    def update(self, key: str, value: int, position: int) -> Change:
        raise NotImplementedError

    def delete(self, key: str, position: int) -> Change:
        raise NotImplementedError

    def refused(self, key: str, position: int) -> Change:
        """A change whose row the store (or its mapping) cannot take."""
        raise NotImplementedError

    def chunk(self, rows: Mapping[str, int | None]) -> Chunk:
        """A snapshot chunk; a value of None stands for a row that cannot be copied."""
        raise NotImplementedError

    # --- reading back ----------------------------------------------------------------------

    async def rows(self) -> dict[str, int]:
        """key -> value, as the store holds it."""
        raise NotImplementedError

    async def checkpoint(self) -> int | None:
        """The stream's checkpoint position, as the store holds it."""
        raise NotImplementedError

    async def rejects(self) -> list[StoredReject]:
        """The stream's open rejects, as the store holds them."""
        raise NotImplementedError

    @asynccontextmanager
    async def broken(self, sink: Sink) -> AsyncIterator[None]:
        """Inside: the store fails the sink's next write (connection lost, database locked)."""
        raise NotImplementedError
        yield

    async def take_over(self) -> None:
        """Another process claims the stream (generation 2) where the checkpoint is kept."""
        raise NotImplementedError


REFUSED = 1000
"""A value the PostgreSQL targets' CHECK constraint refuses (see :meth:`PostgresState.constrain`)."""


class PostgresState:
    """syncd's state tables in PostgreSQL (``syncd.checkpoints``, ``syncd.rejects``), read with plain SQL."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def checkpoint(self, stream: str) -> int | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('syncd.checkpoints') IS NOT NULL"):
                return None
            value = await conn.fetchval("SELECT position FROM syncd.checkpoints WHERE stream = $1", stream)
        finally:
            await conn.close()
        return None if value is None else int(value)

    async def rejects(self, stream: str) -> list[StoredReject]:
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('syncd.rejects') IS NOT NULL"):
                return []
            rows = await conn.fetch(
                "SELECT key::text AS key, error, position FROM syncd.rejects "
                "WHERE stream = $1 AND resolved_at IS NULL ORDER BY id", stream)
        finally:
            await conn.close()
        return [StoredReject(json.loads(r["key"]), r["error"], r["position"]) for r in rows]

    async def take_over(self, stream: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                """INSERT INTO syncd.owners (stream, generation, owner) VALUES ($1, 2, '{"pid": 2}')
                   ON CONFLICT (stream) DO UPDATE SET generation = 2, owner = EXCLUDED.owner""", stream)
        finally:
            await conn.close()

    async def constrain(self, table: str, check: str) -> None:
        """The operator's own CHECK constraint on a target table (once): rows that pass syncd's
        converters and that PostgreSQL itself refuses."""
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_constraint WHERE conname = 'contract_check' "
                                       "AND conrelid = $1::regclass", table):
                await conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT contract_check CHECK ({check})")
        finally:
            await conn.close()

    @asynccontextmanager
    async def terminated(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """The sink's connection *conn* is terminated by the server."""
        pid = conn.get_server_pid()
        admin = await asyncpg.connect(self.dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        yield
