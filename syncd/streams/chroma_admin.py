"""The Chroma part of ``syncd init`` / ``uninstall`` / ``status``, and what happens to a
collection's table when the collection is deleted or renamed in Chroma."""

from __future__ import annotations

import json
import time

import asyncpg

from syncd.config import Config
from syncd.model import START, Phase
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect
from syncd.ports.collections import CollectionInfo
from syncd.sql import STATE_SCHEMA, qi
from syncd.status import NOT_STARTED, StreamReport
from syncd.stores.chroma import retention as chroma_retention
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.chroma.topology import Topology, server_only, wanted
from syncd.stores.pgvector.index import adopted_rows
from syncd.stores.pgvector.table import ensure_state, follow_name, prepare_table, stream_name

# --- collections deleted or renamed --------------------------------------------------------

async def retire(conn: asyncpg.Connection, collection_id: str, policy: str) -> str:
    """A collection was deleted: drop its table, or keep it renamed and marked. Returns the table."""
    async with conn.transaction():
        record = await conn.fetchrow(
            f"SELECT name, schema_name, table_name, created, deleted_at "
            f"FROM {STATE_SCHEMA}.chroma_collections WHERE collection_id = $1", collection_id)
        if record is None:
            return ""
        if record["deleted_at"] is not None:  # retired already (a retry after an unacknowledged commit)
            return str(record["table_name"])
        qualified = f"{qi(record['schema_name'])}.{qi(record['table_name'])}"
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified)
        table = record["table_name"]
        if exists and policy == "drop":
            await conn.execute(f"DROP TABLE {qualified}" if record["created"] else f"DELETE FROM {qualified}")
            table = f"{table} ({'dropped' if record['created'] else 'emptied'})"
        elif exists:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            note = f"syncd: Chroma collection {record['name']} ({collection_id}) was deleted at {stamp} UTC"
            if record["created"]:
                table = _deleted_name(record["table_name"], collection_id)
                await conn.execute(f"ALTER TABLE {qualified} RENAME TO {qi(table)}")
                qualified = f"{qi(record['schema_name'])}.{qi(table)}"
            await conn.execute(f"COMMENT ON TABLE {qualified} IS {_literal(note)}")
        stream = stream_name(collection_id)
        await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET deleted_at = now(), "
                           "table_name = $2, updated_at = now() WHERE collection_id = $1", collection_id,
                           table if policy != "drop" else record["table_name"])
        await conn.execute(f"DELETE FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", stream)
        await conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream)
    return str(table)


def _deleted_name(table: str, collection_id: str) -> str:
    suffix = f"__deleted_{collection_id[:8]}"
    return table.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def rename_table(conn: asyncpg.Connection, config: Config, info: CollectionInfo, old: str) -> str:
    """Rename a table syncd created and named after the collection; others stay where they are."""
    async with conn.transaction():
        record = await conn.fetchrow(
            f"SELECT schema_name, table_name, created FROM {STATE_SCHEMA}.chroma_collections "
            "WHERE collection_id = $1", info.id)
        if record is None:
            return ""
        table = await follow_name(conn, config.target, record, old, info.name)
        await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET name = $2, table_name = $3, "
                           "updated_at = now() WHERE collection_id = $1", info.id, info.name, table)
    return table


# --- init / uninstall / status ---------------------------------------------------------------

async def init_chroma(config: Config, dsn: str) -> list[str]:
    """Check the topology, keep Chroma's log, create or adopt every collection's table."""
    assert config.chroma is not None
    if server_only(config):
        return [f"chroma: server only ({config.chroma.url}): nothing to install; `syncd run` copies "
                "each collection and finds changes by re-scanning it (docs/chroma.md, Server only)"]
    topology = await Topology.open(config, start_private=False)
    lines: list[str] = []
    try:
        what = await chroma_retention.keep_log(config.state_dir, topology.log)
        lines.append(f"chroma: {what} in {topology.log.path}")
        catalog = await topology.log.catalog(config.chroma.tenant, config.chroma.database)
        conn = await connect(config.target, dsn)
        try:
            await ensure_state(conn)
            for info in catalog:
                if not wanted(config, info):
                    continue
                if info.dimension is None:
                    lines.append(f"collection {info.name}: no items yet; its table is created with the "
                                 "first one")
                    continue
                source = ChromaCollectionSource(topology.log, topology.server, info)
                table = await prepare_table(conn, source, config.target)
                how = "created" if table.created else "adopted"
                kept = table.index is not None and not table.created
                found = f"; vector index {table.index.describe()} kept" if table.index and kept else ""
                rows = await adopted_rows(conn, table.schema, table.name) if kept else None
                if rows is not None:
                    found += (f", built on {rows} rows: rebuilt after the snapshot (REINDEX CONCURRENTLY) if "
                              "the load at least doubles them; target.reindex_ivfflat = false keeps it as is")
                pair = ""
                if table.split is not None:
                    s = table.split
                    pair = (f" with {s.schema}.{s.documents} (each item one {s.documents} row and one "
                            f"{table.name} row joined by {s.fk}; written through {s.view_qualified})")
                lines.append(f"collection {info.name}: {how} {table.schema}.{table.name}{pair} "
                             f"({table.vector_type}, {info.space}){found}")
        finally:
            await close_quietly(conn)
    finally:
        await topology.close()
    return lines


async def uninstall_chroma(config: Config) -> list[str]:
    assert config.chroma is not None
    if config.chroma.path is None:
        return ["chroma: server only: nothing was installed in Chroma"]
    chroma_log = await ChromaLog.open(config.chroma.path)
    try:
        what = await chroma_retention.restore(config.state_dir, chroma_log)
    finally:
        await chroma_log.close()
    return [f"chroma: {what} in {chroma_log.path}"]


async def chroma_stored_status(config: Config, dsn: str, conn: asyncpg.Connection | None = None
                               ) -> list[StreamReport]:
    """Per-collection status from the stores (works with the daemon stopped); on *conn* when
    given (a cutover's drain asks on the connection it holds), else on a connection of its own."""
    assert config.chroma is not None
    own = conn is None
    if conn is None:
        conn = await connect(config.target, dsn)
    try:
        if not await pgstate.has_state(conn) or not await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_collections"):
            return []
        records = await conn.fetch(
            f"""SELECT c.collection_id, c.name, c.schema_name, c.table_name, k.position,
                       k.snapshot::text AS snap,
                       (SELECT count(*) FROM {STATE_SCHEMA}.rejects r WHERE r.stream = c.stream
                        AND r.resolved_at IS NULL AND to_jsonb(r) ->> 'accepted_at' IS NULL) AS rejects
                FROM {STATE_SCHEMA}.chroma_collections c
                LEFT JOIN {STATE_SCHEMA}.checkpoints k ON k.stream = c.stream
                WHERE c.deleted_at IS NULL ORDER BY c.name""")
    finally:
        if own:
            await close_quietly(conn)
    out: list[StreamReport] = []
    chroma_log = await ChromaLog.open(config.chroma.path) if config.chroma.path else None
    try:
        catalog = {c.id: c for c in await chroma_log.catalog(config.chroma.tenant, config.chroma.database)} \
            if chroma_log else {}
        for r in records:
            info = catalog.get(r["collection_id"])
            position = int(r["position"]) if r["position"] is not None else None
            count, oldest, head = (await chroma_log.pending(info, position or START.offset)
                                   if chroma_log and info else (0, None, position or 0))
            phase = _phase(position, r["snap"], count)
            lag = 0.0 if not count or oldest is None else max(0.0, time.time() - oldest)
            out.append({
                "name": stream_name(r["collection_id"]), "collection": r["name"],
                "table": f"{r['schema_name']}.{r['table_name']}", "phase": phase, "source_position": head,
                "checkpoint": position, "pending": count, "lag_seconds": round(lag, 3),
                "rejects": int(r["rejects"]), "snapshot_copied": None, "daemon": "not running",
            })
    finally:
        if chroma_log:
            await chroma_log.close()
    return out


def _phase(position: int | None, snapshot: str | None, pending: int) -> str:
    if position is None:
        return NOT_STARTED
    if snapshot and not json.loads(snapshot).get("complete"):
        return Phase.SNAPSHOT.value
    return Phase.CATCH_UP.value if pending else Phase.STREAMING.value
