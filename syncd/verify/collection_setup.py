"""The Chroma side of a verify run: which collections, their tables, and their checks.

Chroma is opened the way ``syncd run`` opens it (:class:`~syncd.stores.chroma.topology.Topology`):
its log read-only from ``source.chroma.path``, and a server for the vectors the log
no longer holds and for search queries — ``source.chroma.url``, or, with a path only,
a private ``chroma run`` when no other process uses the directory. A counts-only run
needs no server and starts none. Verify never writes to either store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import asyncpg

from syncd.config import Config
from syncd.errors import ConfigError, SyncdError
from syncd.model import SnapshotState
from syncd.pg import split
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect
from syncd.ports.collections import CollectionInfo
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.chroma.topology import Topology, wanted
from syncd.stores.pgvector.index import vector_indexes
from syncd.stores.pgvector.plan import VectorTable, plan
from syncd.stores.pgvector.table import columns_of, stream_name
from syncd.verify.collections import CollectionCheck, CollectionContext, CollectionOptions
from syncd.verify.report import ERROR, MATCH, CheckResult
from syncd.verify.rows import Stall
from syncd.verify.search import SearchCheck
from syncd.verify.vectors import VectorCanon

Item = CollectionCheck | SearchCheck | CheckResult


class ChromaVerify:
    """Opens Chroma and a PostgreSQL connection for the collection checks; :meth:`close` ends both."""

    def __init__(self, cfg: Config, dsn: str, mode: str, options: CollectionOptions,
                 progress: Callable[[str, int], None]) -> None:
        assert cfg.chroma is not None
        self.cfg, self.dsn, self.mode, self.options = cfg, dsn, mode, options
        self.progress = progress
        self.topology: Topology | None = None
        self.conn: asyncpg.Connection | None = None
        self.stall = Stall(options.stall_seconds)
        self.vector_send = "vector_send"

    async def close(self) -> None:
        await close_quietly(self.conn)
        self.conn = None
        if self.topology is not None:
            await self.topology.close()
            self.topology = None

    async def checks(self, names: Sequence[str] | None) -> list[Item]:
        """One check per collection syncd streams (only *names*, when given), plus search parity."""
        chroma = self.cfg.chroma
        assert chroma is not None
        try:
            self.topology = await Topology.open(self.cfg, start_private=self.mode == "full")
            catalog = await self.topology.log.catalog(chroma.tenant, chroma.database)
        except SyncdError as exc:
            shown = list(names or chroma.collections or [str(chroma.path or chroma.url)])
            return [CheckResult("collection", n, status=ERROR, detail=exc.message) for n in shown]
        chosen = _choose([c for c in catalog if wanted(self.cfg, c)], names)
        self.conn = await connect(self.cfg.target, self.dsn)
        problem = await self._state_problem(self.conn)
        out: list[Item] = []
        for info in chosen:
            if problem:
                out.append(CheckResult("collection", info.name, status=ERROR, detail=problem))
                continue
            try:
                out += await self._checks_for(self.conn, info)
            except SyncdError as exc:
                out.append(CheckResult("collection", info.name, status=ERROR, detail=exc.message))
        return out

    async def _state_problem(self, conn: asyncpg.Connection) -> str | None:
        if not await pgstate.has_state(conn) or not await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_collections"):
            return ("syncd has not run against this database (no syncd.chroma_collections): run `syncd init` "
                    "and `syncd run`")
        schema = await conn.fetchval(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'")
        if schema is None:
            return "the pgvector extension is not installed in the target: run `syncd init` and `syncd run`"
        from pgvector.asyncpg import register_vector

        await register_vector(conn, schema=schema)
        self.vector_send = f"{qi(schema)}.vector_send"
        return None

    async def _checks_for(self, conn: asyncpg.Connection, info: CollectionInfo) -> list[Item]:
        assert self.topology is not None
        if info.dimension is None:
            return [CheckResult("collection", info.name, status=MATCH, source_rows=0,
                                detail="no items yet (syncd creates the table with the first one)")]
        table_name = await self._stream_table(conn, info)
        existing, pair = await columns_of(conn, self.cfg.target.schema, table_name)
        if existing is None:
            raise SyncdError(f"target table {self.cfg.target.schema}.{table_name} of collection "
                             f"{info.name!r} does not exist")
        notes: list[str] = []
        table = plan(info, self.cfg.target, existing, {}, notes.append, table=table_name, split=pair)
        problems = [_dimension(info, table)] if table.dim != info.dimension else []
        if table.split is not None:
            problems += await split.problems(conn, table.split)
        notes = [n for n in notes if "dimensional" not in n]
        source = ChromaCollectionSource(self.topology.log, self.topology.server, info)
        canon = VectorCanon(table, self.vector_send)
        ctx = CollectionContext(conn, source, canon, self.options, self.stall, self.progress)
        out: list[Item] = [CollectionCheck(info.name, ctx, problems, notes)]
        samples = self.options.samples(self.mode)
        if samples > 0:
            found = await vector_indexes(conn, table.indexed, table.embedding_col)
            index = found[0] if found else None
            out.append(SearchCheck(info.name, conn, source, canon, self.options, samples, index))
        return out

    async def _stream_table(self, conn: asyncpg.Connection, info: CollectionInfo) -> str:
        """The table the collection's stream writes (renames keep theirs); why it cannot be compared yet."""
        record = await conn.fetchrow(
            f"SELECT table_name FROM {STATE_SCHEMA}.chroma_collections WHERE collection_id = $1 "
            "AND deleted_at IS NULL", info.id)
        if record is None:
            raise SyncdError(f"collection {info.name!r} has no table yet: run `syncd init` and `syncd run`")
        text = await conn.fetchval(f"SELECT to_jsonb(c)::text FROM {STATE_SCHEMA}.checkpoints c "
                                   "WHERE stream = $1", stream_name(info.id))
        if text is None:
            raise SyncdError(f"the stream of collection {info.name!r} has not started: run `syncd run`")
        row = json.loads(text)
        snap = SnapshotState.from_json(row["snapshot"]) if row.get("snapshot") else None
        if snap is not None and not snap.complete:
            raise SyncdError(f"the stream of collection {info.name!r} is still copying its snapshot: verify "
                             "once it is streaming")
        return str(record["table_name"])


def _dimension(info: CollectionInfo, table: VectorTable) -> str:
    return (f"dimension differs: collection {info.name!r} holds {info.dimension}-dimensional vectors, "
            f"{table.schema}.{table.name}.{table.embedding_col} is {table.vector_type}; "
            "every item is rejected until the table or the collection changes")


def _choose(catalog: Sequence[CollectionInfo], names: Sequence[str] | None) -> list[CollectionInfo]:
    if not names:
        return list(catalog)
    by_name = {c.name: c for c in catalog}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--collection {unknown[0]}: not a collection syncd streams (streamed: "
                          f"{', '.join(sorted(by_name)) or 'none'})")
    return [by_name[n] for n in dict.fromkeys(names)]


__all__ = ["ChromaVerify"]
