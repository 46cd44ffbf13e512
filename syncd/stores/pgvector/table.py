"""The pgvector table of a Chroma collection: syncd's state tables for collections, creating or
adopting a collection's table (recorded in ``syncd.chroma_collections``), and its HNSW index."""

from __future__ import annotations

import time

import asyncpg
import structlog

from syncd.config import Target
from syncd.errors import SchemaError, SyncdError
from syncd.pg import state as pgstate
from syncd.pg.connect import transaction, translate
from syncd.ports.collections import ChromaCollection, CollectionInfo
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.pgvector import doubt as pgvector_doubt
from syncd.stores.pgvector.mapping import Existing, parse_columns, target_entry
from syncd.stores.pgvector.plan import VectorTable, create_table_sql, plan

log = structlog.get_logger("syncd.sink.pgvector")

DDL = f"""
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.chroma_collections (
    collection_id text PRIMARY KEY,
    name          text NOT NULL,
    stream        text NOT NULL,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    created       boolean NOT NULL,
    space         text NOT NULL,
    dimension     integer,
    deleted_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.chroma_seen (
    stream text NOT NULL,
    id     text NOT NULL,
    seq    bigint NOT NULL,
    PRIMARY KEY (stream, id)
);
"""
_DDL_LOCK = pgstate.DDL_LOCK  # one DDL run at a time
INDEX_TIMEOUT = 24 * 3600.0

def stream_name(collection_id: str) -> str:
    """Checkpoints are keyed by collection id: a re-created collection is a new stream."""
    return f"chroma:{collection_id}"


async def ensure_state(conn: asyncpg.Connection) -> None:
    """The vector extension, syncd's schema and tables, and pgvector's binary codec on *conn*."""
    from pgvector.asyncpg import register_vector

    async with transaction(conn):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await pgstate.ensure(conn)
        await conn.execute(DDL)
        await conn.execute(pgvector_doubt.DDL)
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'")
    await register_vector(conn, schema=schema)


async def existing_columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, Existing] | None:
    rows = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""", schema, table)
    if not rows:
        return None
    return {r["attname"]: Existing(r["type"], bool(r["attnotnull"])) for r in rows}


async def prepare_table(conn: asyncpg.Connection, source: ChromaCollection,
                        target: Target) -> VectorTable:
    """Create or adopt the collection's table (idempotent) and record it; return the mapping."""
    info = source.info
    warnings: list[str] = []
    try:
        async with transaction(conn):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qi(target.schema)}")
            record = await conn.fetchrow(
                f"SELECT schema_name, table_name, created FROM {STATE_SCHEMA}.chroma_collections "
                "WHERE collection_id = $1", info.id)
            # a renamed collection keeps writing to the table it was recorded with
            probe = record["table_name"] if record is not None else plan_name(info, target)
            existing = await existing_columns(conn, target.schema, probe)
            key_types: dict[str, set[str]] = {}
            if existing is None:
                entry, index = target_entry(target, info.name)
                keys = [k for _, k in parse_columns(entry, index).keys]
                key_types = await source.log.key_types(info, keys) if keys else {}
            table = plan(info, target, existing, key_types, warnings.append, table=probe)
            if existing is None:
                await conn.execute(create_table_sql(table))
            elif record is not None:
                table.created = bool(record["created"])
            else:
                await _check_unique_id(conn, table)
            owner = await conn.fetchval(
                f"SELECT name FROM {STATE_SCHEMA}.chroma_collections WHERE schema_name = $1 "
                "AND table_name = $2 AND collection_id <> $3 AND deleted_at IS NULL",
                table.schema, table.name, info.id)
            if owner is not None:
                raise SchemaError(f"collections {owner!r} and {info.name!r} both map to table "
                                  f"{table.schema}.{table.name}; give one of them its own "
                                  "[[target.collections]] table")
            await conn.execute(
                f"""INSERT INTO {STATE_SCHEMA}.chroma_collections
                    (collection_id, name, stream, schema_name, table_name, created, space, dimension)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (collection_id) DO UPDATE SET name = EXCLUDED.name,
                        schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
                        space = EXCLUDED.space, dimension = EXCLUDED.dimension, deleted_at = NULL,
                        updated_at = now()""",
                info.id, info.name, stream_name(info.id), table.schema, table.name, table.created, info.space,
                table.dim)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, f"creating the table of collection {info.name!r}") from exc
    for w in warnings:
        log.warning("mapping", collection=info.name, warning=w)
    return table


def plan_name(info: CollectionInfo, target: Target) -> str:
    for entry in target.collections:
        if entry.name == info.name:
            return entry.table
    return info.name


async def _check_unique_id(conn: asyncpg.Connection, table: VectorTable) -> None:
    unique = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a
                          ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                          WHERE x.indrelid = $1::regclass AND x.indisunique AND x.indnkeyatts = 1
                          AND a.attname = $2)""", table.qualified, table.id_col)
    if not unique:
        raise SchemaError(f"existing table {table.schema}.{table.name}: column {table.id_col!r} holds "
                          "Chroma ids and must be its primary key (or unique)")


async def build_index(conn: asyncpg.Connection, t: VectorTable) -> None:
    """Build the table's HNSW index once, after the bulk load, with room to build it in memory
    (an index already there is kept)."""
    existing = await conn.fetchval(
        """SELECT pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_am a ON a.oid = i.relam WHERE x.indrelid = $1::regclass AND a.amname = 'hnsw'
           LIMIT 1""", t.qualified)
    if existing:
        if f"_{t.space}_ops" not in existing and t.space in ("cosine", "l2", "ip"):
            log.warning("existing HNSW index does not match the collection's space",
                        table=t.qualified, space=t.space, index=existing)
        return
    sql = t.index_sql()
    if sql is None:
        log.warning("no HNSW index: pgvector indexes at most 4,000 dimensions (halfvec)",
                    table=t.qualified, dimensions=t.dim)
        return
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {t.qualified}"))
    mem_mb = min(4096, max(64, int(rows * (t.dim * 4 + 256) * 1.3 / 2**20)))
    began = time.monotonic()
    async with transaction(conn):
        await conn.execute(f"SET LOCAL maintenance_work_mem = '{mem_mb}MB'")
        await conn.execute(sql, timeout=INDEX_TIMEOUT)
    await conn.execute(f"ANALYZE {t.qualified}", timeout=INDEX_TIMEOUT)
    log.info("index built", table=t.qualified, rows=rows, space=t.space,
             maintenance_work_mem_mb=mem_mb, seconds=round(time.monotonic() - began, 2))
