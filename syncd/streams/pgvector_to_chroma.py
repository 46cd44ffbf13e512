"""The pgvector → Chroma streams (after `syncd cutover`): one per collection.

Each collection's table (recorded in ``syncd.chroma_collections`` by the forward
stream) is read through the PostgreSQL changelog (:mod:`syncd.pg.capture`,
:class:`~syncd.stores.pgvector.source.PgvectorSource`) and written into Chroma
(:class:`~syncd.stores.chroma.sink.ChromaSink`). Stream names are
``pgvector→chroma:<collection id>``, the mirror of the forward ``chroma:<collection id>``
(and of ``postgres→sqlite``).

Chroma is reached as the forward streams reach it (:mod:`syncd.stores.chroma.topology`): the
configured server, or for a persist directory alone the private ``chroma run`` syncd
starts. That server is shared by the streams' sinks and runs while at least one sink is
open, so it is gone when the streams end (a rollback can then start the forward
streams, which need the directory to themselves).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from syncd.config import Config
from syncd.errors import ConfigError, SchemaError
from syncd.model import Batch
from syncd.pg import capture as pg_capture
from syncd.pg import changelog
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, transaction
from syncd.ports import Sink
from syncd.ports.collections import CollectionInfo
from syncd.service.health import Liveness
from syncd.sql import STATE_SCHEMA
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.sink import ChromaSink
from syncd.stores.chroma.topology import Topology, wanted
from syncd.stores.chroma.writer import ChromaWriter
from syncd.stores.pgvector.plan import VectorTable, plan
from syncd.stores.pgvector.source import PgvectorSource
from syncd.stores.pgvector.table import columns_of
from syncd.stream import Stream

log = structlog.get_logger("syncd.streams.pgvector_to_chroma")
PREFIX = "pgvector→chroma:"


def reverse_stream_name(collection_id: str) -> str:
    return f"{PREFIX}{collection_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """A collection the forward stream copied, and where."""

    collection_id: str
    name: str
    schema: str
    table: str
    created: bool

    @property
    def stream(self) -> str:
        return reverse_stream_name(self.collection_id)


async def recorded_collections(config: Config, conn: asyncpg.Connection) -> list[Recorded]:
    """The live collections syncd copied that the config selects (by name)."""
    assert config.chroma is not None
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_collections"):
        return []
    names = config.chroma.collections
    rows = await conn.fetch(
        f"""SELECT collection_id, name, schema_name, table_name, created
            FROM {STATE_SCHEMA}.chroma_collections WHERE deleted_at IS NULL ORDER BY name""")
    return [Recorded(r["collection_id"], r["name"], r["schema_name"], r["table_name"], bool(r["created"]))
            for r in rows if names is None or r["name"] in names]


async def _each_schema(config: Config, dsn: str,
                       do: Callable[[asyncpg.Connection, str, list[str]], Awaitable[Any]]) -> list[str]:
    """Run *do* on the collections' tables, one call per schema; return them (schema.table)."""
    conn = await connect(config.target, dsn)
    try:
        by_schema: dict[str, list[str]] = defaultdict(list)
        for r in await recorded_collections(config, conn):
            by_schema[r.schema].append(r.table)
        for schema, tables in by_schema.items():
            await do(conn, schema, tables)
    finally:
        await close_quietly(conn)
    return [f"{s}.{t}" for s, tables in by_schema.items() for t in tables]


async def install_reverse_capture(config: Config, dsn: str) -> list[str]:
    """Install change capture on every collection's table; return the tables (schema.table)."""
    return await _each_schema(config, dsn, pg_capture.install)


async def uninstall_reverse(config: Config, dsn: str) -> list[str]:
    """Drop reverse capture, the Chroma fence and PostgreSQL fences of the collections' tables."""
    from syncd.cutover import fence
    from syncd.stores.chroma import fence as chroma_fence

    async def drop(conn: asyncpg.Connection, schema: str, tables: list[str]) -> None:
        await pg_capture.uninstall(conn, schema, tables)
        await fence.remove_pg(conn, schema, tables)

    dropped = await _each_schema(config, dsn, drop)
    if config.chroma is not None and config.chroma.path is not None:
        await asyncio.to_thread(chroma_fence.remove_fence, config.chroma.path)
    return dropped


async def reverse_stream_names(config: Config, conn: asyncpg.Connection) -> list[str]:
    return [r.stream for r in await recorded_collections(config, conn)]


async def reverse_pending(config: Config, conn: asyncpg.Connection) -> list[str]:
    """One line per reverse stream with changes not yet in Chroma (empty when drained)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", pg_capture.CHANGELOG):
        return []
    out = []
    for r in await recorded_collections(config, conn):
        done = await conn.fetchval(f"SELECT position FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1",
                                   r.stream) if await pgstate.has_state(conn) else None
        n = await conn.fetchval(
            f"SELECT count(*) FROM {pg_capture.CHANGELOG} WHERE id > $1 AND nsp = $2 AND tbl = $3",
            int(done or 0), r.schema, r.table)
        if n:
            out.append(f"{r.stream} ({r.name}) {n} pending")
    return out


async def vector_table(conn: asyncpg.Connection, config: Config, info: CollectionInfo,
                       recorded: Recorded) -> VectorTable:
    """The mapping of *recorded*'s table, as the forward stream planned it."""
    existing, pair = await columns_of(conn, recorded.schema, recorded.table)
    if existing is None:
        raise SchemaError(f"collection {recorded.name!r}: its table {recorded.schema}.{recorded.table} "
                          "is gone; the reverse stream cannot read it")
    target = dataclasses.replace(config.target, schema=recorded.schema)
    table = plan(info, target, existing, {}, lambda w: log.warning("mapping", warning=w),
                 table=recorded.table, split=pair)
    table.created = recorded.created
    return table


class ChromaAccess:
    """One Topology shared by the sinks: opened by the first, closed with the last."""

    def __init__(self, config: Config, topology: Topology | None = None) -> None:
        self.config = config
        self._given = topology
        self._topology = topology
        self._users = 0
        self._lock = asyncio.Lock()  # streams open their sinks concurrently: one server, not several

    async def acquire(self) -> Topology:
        async with self._lock:
            if self._topology is None:
                self._topology = await Topology.open(self.config)
            self._users += 1
            return self._topology

    async def release(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users <= 0 and self._given is None and self._topology is not None:
                topology, self._topology = self._topology, None
                await topology.close()


class ReverseChromaStreams(list[Stream]):
    """The streams, and the Chroma access they share."""

    def __init__(self, access: ChromaAccess) -> None:
        super().__init__()
        self.access = access
        self.sources: list[PgvectorSource] = []

    async def close(self) -> None:
        for source in self.sources:
            await source.close()


async def _reader_connection(config: Config, dsn: str) -> asyncpg.Connection:
    from pgvector.asyncpg import register_vector

    conn = await connect(config.target, dsn)
    try:
        schema = await conn.fetchval(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'")
        if schema is not None:
            await register_vector(conn, schema=schema)
    except BaseException:
        await close_quietly(conn)
        raise
    return conn


async def open_reverse_chroma_streams(
        config: Config, dsn: str, liveness: Liveness | None = None, *, topology: Topology | None = None,
        after_write: Callable[[Batch], Awaitable[None]] | None = None) -> ReverseChromaStreams:
    """The reverse streams of ``config`` (not started). *topology* shares the forward streams'
    Chroma access; *after_write* is a test hook (after Chroma acknowledged, before the checkpoint)."""
    c = config.chroma
    if c is None or c.path is None:
        raise ConfigError("source.chroma.path: the pgvector → Chroma stream reads Chroma's catalog and "
                          "current items from its persist directory; set path (docs/chroma.md)")
    access = ChromaAccess(config, topology)
    streams = ReverseChromaStreams(access)
    chroma_log = topology.log if topology is not None else await ChromaLog.open(c.path)
    conn = await connect(config.target, dsn)
    try:
        catalog = {i.id: i for i in await chroma_log.catalog(c.tenant, c.database)}
        for rec in await recorded_collections(config, conn):
            info = catalog.get(rec.collection_id)
            if info is None or not wanted(config, info):
                log.warning("collection copied to PostgreSQL is gone from Chroma: no reverse stream",
                            collection=rec.name, id=rec.collection_id)
                continue
            table = await vector_table(conn, config, info, rec)
            rejects = await pgstate.count_rejects(conn, rec.stream) if await pgstate.has_state(conn) else 0
            streams.append(_stream(config, dsn, liveness, access, info, table, rec, rejects, after_write,
                                   streams))
    finally:
        await close_quietly(conn)
        if topology is None:
            await chroma_log.close()
    return streams


def _stream(config: Config, dsn: str, liveness: Liveness | None, access: ChromaAccess, info: CollectionInfo,
            table: VectorTable, rec: Recorded, rejects: int,
            after_write: Callable[[Batch], Awaitable[None]] | None, group: ReverseChromaStreams) -> Stream:
    assert config.chroma is not None
    chroma = config.chroma

    async def reader_connection() -> asyncpg.Connection:
        return await _reader_connection(config, dsn)

    source = PgvectorSource(changelog.ChangeReader(reader_connection, rec.schema), table)
    group.sources.append(source)
    stream: Stream

    async def open_sink() -> Sink:
        topology = await access.acquire()
        conn: Any = None
        writer: ChromaWriter | None = None
        try:
            assert topology.server is not None, "the Chroma topology has a server"
            writer = ChromaWriter(str(topology.server.address), chroma.tenant, chroma.database)
            await writer.connect()
            conn = await connect(config.target, dsn)

            async def released() -> None:
                assert writer is not None
                await writer.close()
                await access.release()

            sink = ChromaSink(conn, writer, topology.log, info, table, chroma.path,
                              strict=config.target.strict, on_reject=stream.count_rejects,
                              after_write=after_write, on_close=released)
            await sink.ensure_schema()
        except BaseException:
            await close_quietly(conn)
            if writer is not None:
                await writer.close()
            await access.release()
            raise
        return sink

    stream = Stream(rec.stream, source, open_sink, config.stream, rejects=rejects,
                    on_progress=liveness.observe if liveness else None,
                    busy=liveness.busy if liveness else None)
    log.info("reverse collection stream", collection=info.name, id=info.id, stream=rec.stream,
             table=f"{table.schema}.{table.name}")
    return stream


async def set_reverse_checkpoints(config: Config, dsn: str, position: int) -> dict[str, int]:
    """Record *position* as every reverse stream's start; return what was recorded."""
    from syncd.model import Position
    from syncd.stores.chroma.sink import set_checkpoint

    conn = await connect(config.target, dsn)
    try:
        names = await reverse_stream_names(config, conn)
        async with transaction(conn):
            for name in names:
                await set_checkpoint(conn, name, Position(position))
    finally:
        await close_quietly(conn)
    return dict.fromkeys(names, position)
