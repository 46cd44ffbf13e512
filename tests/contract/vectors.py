"""Harnesses of the two vector sinks: a Chroma collection into its pgvector table, and the
table's changes back into Chroma (the reverse stream). Both run on one real ``chroma run``
server (:class:`tests.integration.chroma_support.ChromaServer`), a collection per test."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
import numpy as np

from syncd.config import Target
from syncd.errors import FatalError
from syncd.model import Change, Op, Position, SnapshotState
from syncd.pg.connect import close_quietly, connect
from syncd.ports import Chunk, Sink
from syncd.ports.collections import CollectionInfo
from syncd.sql import qi
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.server import ChromaServer as ServerReader
from syncd.stores.chroma.sink import ChromaSink
from syncd.stores.chroma.source import COLUMNS, ChromaCollectionSource
from syncd.stores.chroma.writer import ChromaWriter
from syncd.stores.pgvector.plan import VectorTable
from syncd.stores.pgvector.sink import PgvectorSink
from syncd.stores.pgvector.table import ensure_state, prepare_table, stream_name
from syncd.streams.pgvector_to_chroma import reverse_stream_name
from tests.contract.harness import REFUSED, Harness, PostgresState, StoredReject
from tests.integration.chroma_support import ChromaServer, collection

TENANT, DATABASE = "default_tenant", "default_database"
DIM = 3


def vector(value: int, dim: int = DIM) -> np.ndarray:
    return np.asarray([float(value), 1.0, 0.5, 0.25][:dim], dtype=np.float32)


def image(op: str, value: int, dim: int = DIM) -> dict[str, Any]:
    """A row in the forward image shape (:func:`syncd.stores.chroma.source.decode_row`), which
    the reverse source (:func:`syncd.stores.pgvector.source.decode_row`) produces too."""
    return {"op": op, "embedding": vector(value, dim), "document": f"doc {value}", "has_document": True,
            "metadata": {"n": value}, "error": None}


@dataclass
class SharedChroma:
    """The suite's Chroma: the server, a client for the tests' own reads and writes, and the log
    and server reader the streams' sources share (as :class:`syncd.stores.chroma.topology.Topology`)."""

    server: ChromaServer
    client: Any
    log: ChromaLog
    reader: ServerReader

    @classmethod
    async def open(cls, server: ChromaServer) -> SharedChroma:
        client = await asyncio.to_thread(server.client)
        chroma_log = await ChromaLog.open(server.path)
        try:
            reader = await ServerReader.connect(server.url, TENANT, DATABASE)
        except BaseException:
            await chroma_log.close()
            raise
        return cls(server, client, chroma_log, reader)

    async def close(self) -> None:
        await self.reader.close()
        await self.log.close()


class VectorHarness(Harness):
    """A collection on the Chroma server (given a dimension, then emptied) and its pgvector table."""

    update_op = "upsert"

    def __init__(self, pg_dsn: str, chroma: SharedChroma) -> None:
        self.dsn = pg_dsn
        self.chroma = chroma
        self.state = PostgresState(pg_dsn)
        self.name_in_chroma = f"contract_{uuid.uuid4().hex[:10]}"
        self.info: CollectionInfo | None = None
        self.table: VectorTable | None = None

    async def setup(self) -> None:
        def create() -> None:
            col = collection(self.chroma.client, self.name_in_chroma)
            col.add(ids=["seed"], embeddings=[vector(0).tolist()])  # the collection gets its dimension
            col.delete(ids=["seed"])

        await asyncio.to_thread(create)
        self.info = next(c for c in await self.chroma.log.catalog(TENANT, DATABASE)
                         if c.name == self.name_in_chroma)
        assert self.info.dimension == DIM, self.info

    def source(self) -> ChromaCollectionSource:
        assert self.info is not None
        return ChromaCollectionSource(self.chroma.log, self.chroma.reader, self.info)

    async def _table_connection(self) -> tuple[asyncpg.Connection, VectorTable]:
        """A connection of the sink, and the collection's table (created by the first call)."""
        target = Target(dsn=self.dsn)
        conn = await connect(target, self.dsn)
        try:
            await ensure_state(conn)
            self.table = await prepare_table(conn, self.source(), target)
        except BaseException:
            await close_quietly(conn)
            raise
        return conn, self.table

    def insert(self, key: str, value: int, position: int) -> Change:
        return Change(Op.INSERT, self._object, (key,), image("add", value), Position(position))

    def update(self, key: str, value: int, position: int) -> Change:
        return Change(Op.UPDATE, self._object, (key,), image(self.update_op, value), Position(position))

    def delete(self, key: str, position: int) -> Change:
        return Change(Op.DELETE, self._object, (key,), None, Position(position))

    def refused(self, key: str, position: int) -> Change:
        # an embedding of another dimension than the collection's: the sink's check refuses it
        return Change(Op.INSERT, self._object, (key,), image("add", 7, dim=DIM + 1), Position(position))

    @property
    def _object(self) -> str:
        assert self.info is not None
        return self.info.id

    async def checkpoint(self) -> int | None:
        return await self.state.checkpoint(self.stream)

    async def rejects(self) -> list[StoredReject]:
        return await self.state.rejects(self.stream)

    async def take_over(self) -> None:
        await self.state.take_over(self.stream)

    @asynccontextmanager
    async def broken(self, sink: Sink) -> AsyncIterator[None]:
        assert isinstance(sink, PgvectorSink | ChromaSink)
        async with self.state.terminated(sink.conn):
            yield


class PgvectorHarness(VectorHarness):
    """PgvectorSink: the forward stream of a Chroma collection into PostgreSQL + pgvector."""

    name = "pgvector"
    update_op = "update"
    update_of_missing_creates = False  # Chroma's UPDATE of a missing id does nothing
    refreshes_rejected = True  # an id with an open reject is written as Chroma holds it now

    async def setup(self) -> None:
        await super().setup()
        assert self.info is not None
        self.stream = stream_name(self.info.id)

    async def open(self, *, strict: bool = False) -> Sink:
        conn, table = await self._table_connection()
        try:
            metadata = qi(table.metadata_col or "")
            await self.state.constrain(table.qualified, f"({metadata} ->> 'n')::int < {REFUSED}")
        except BaseException:
            await close_quietly(conn)
            raise
        return PgvectorSink(conn, table, self.source(), strict=strict, chunk_rows=100)

    def refused(self, key: str, position: int) -> Change:
        # converted fine, refused by PostgreSQL itself (the table's CHECK constraint)
        return Change(Op.INSERT, self._object, (key,), image("add", REFUSED), Position(position))

    async def start(self, sink: Sink, position: Position) -> None:
        state = SnapshotState(start=position)
        await sink.begin_snapshot(self.stream, state)
        await sink.finish_snapshot(self.stream, state)

    def chunk(self, rows: Mapping[str, int | None]) -> Chunk:
        # an embedding of another dimension than the collection's: the sink's check refuses it
        items = [(k, vector(v) if v is not None else vector(7, DIM + 1), f"doc {v}", {"n": v}, 0, None)
                 for k, v in sorted(rows.items())]
        return Chunk(self._object, COLUMNS, items, (items[-1][0],))

    async def rows(self) -> dict[str, int]:
        if self.table is None:
            return {}
        t = self.table
        assert t.metadata_col is not None and t.document_col is not None
        conn = await asyncpg.connect(self.dsn)
        try:
            got = await conn.fetch(
                f'SELECT "{t.id_col}"::text AS id, "{t.document_col}" AS document, '
                f'"{t.embedding_col}"::text AS embedding, "{t.metadata_col}"::text AS meta '
                f"FROM {t.qualified}")
        finally:
            await conn.close()
        out = {}
        for r in got:
            n = json.loads(r["meta"])["n"]
            # the three columns agree: the vector's first value and the document hold n too
            assert r["document"] == f"doc {n}" and json.loads(r["embedding"])[0] == n, dict(r)
            out[r["id"]] = n
        return out


class ChromaHarness(VectorHarness):
    """ChromaSink: the reverse stream of a pgvector table's changes into the Chroma collection."""

    name = "chroma"
    not_applicable: ClassVar[Mapping[str, str]] = {
        "snapshot": "the reverse stream copies no snapshot: it starts at the position the cutover "
                    "records at the flip (syncd.stores.chroma.sink.set_checkpoint)",
    }
    fresh_checkpoint_error = FatalError  # naming the cutover, which records the start
    rows_commit_with_checkpoint = False  # Chroma acknowledges the items before the checkpoint commits

    async def setup(self) -> None:
        await super().setup()
        assert self.info is not None
        self.stream = reverse_stream_name(self.info.id)

    async def open(self, *, strict: bool = False) -> Sink:
        assert self.info is not None
        conn, table = await self._table_connection()
        writer = ChromaWriter(self.chroma.server.url, TENANT, DATABASE)
        try:
            await writer.connect()
        except BaseException:
            await close_quietly(conn)
            await writer.close()
            raise
        sink = ChromaSink(conn, writer, self.chroma.log, self.info, table, self.chroma.server.path,
                          strict=strict, on_close=writer.close)
        await sink.ensure_schema()
        return sink

    async def start(self, sink: Sink, position: Position) -> None:
        assert isinstance(sink, ChromaSink)
        await sink.set_checkpoint(self.stream, position)

    async def rows(self) -> dict[str, int]:
        def read() -> dict[str, Any]:
            col = self.chroma.client.get_collection(self.name_in_chroma)
            got: dict[str, Any] = col.get(include=["embeddings", "documents", "metadatas"])
            return got

        got = await asyncio.to_thread(read)
        out = {}
        for item_id, emb, doc, meta in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"],
                                           strict=True):
            n = meta["n"]
            assert doc == f"doc {n}" and float(emb[0]) == n, (item_id, emb, doc, meta)
            out[item_id] = n
        return out
