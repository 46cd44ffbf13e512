"""The pgvector table of a Chroma collection: syncd's state tables for collections, creating or
adopting a collection's table (recorded in ``syncd.chroma_collections``), and its HNSW index."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
import structlog

from syncd.config import Target
from syncd.errors import SchemaError, SyncdError
from syncd.pg import capture as pg_capture
from syncd.pg import split
from syncd.pg import state as pgstate
from syncd.pg.connect import transaction, translate
from syncd.ports.collections import ChromaCollection, CollectionInfo
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.pgvector import doubt as pgvector_doubt
from syncd.stores.pgvector.ddl import create_table_sql, hnsw_index_sql
from syncd.stores.pgvector.index import mismatch, rebuild_outgrown, record_adopted_ivfflat, vector_indexes
from syncd.stores.pgvector.mapping import Existing, parse_columns, target_entry
from syncd.stores.pgvector.plan import VectorTable, plan

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
ALTER TABLE {STATE_SCHEMA}.chroma_collections ADD COLUMN IF NOT EXISTS deferred_indexes text[];
ALTER TABLE {STATE_SCHEMA}.chroma_collections ADD COLUMN IF NOT EXISTS ivfflat_rows bigint;
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
    async with transaction(conn):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await pgstate.ensure(conn)
        await conn.execute(DDL)
        await conn.execute(pgvector_doubt.DDL)
    await register_codec(conn)


async def register_codec(conn: asyncpg.Connection) -> None:
    """pgvector's binary codec on *conn*, when the extension is installed (nothing is created)."""
    from pgvector.asyncpg import register_vector

    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'")
    if schema is not None:
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


async def view_columns(conn: asyncpg.Connection, s: split.Split) -> dict[str, Existing]:
    """The view's columns as a table's (:func:`~syncd.stores.pgvector.table.existing_columns`), each
    NOT NULL as in the table it comes from; without :data:`split.ITEM_COL`, which is syncd's."""
    rows = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                  coalesce((SELECT b.attnotnull FROM pg_attribute b WHERE b.attrelid = $2::regclass
                            AND b.attname = a.attname AND NOT b.attisdropped),
                           (SELECT b.attnotnull FROM pg_attribute b WHERE b.attrelid = $3::regclass
                            AND b.attname = a.attname AND NOT b.attisdropped), false) AS notnull
           FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""", s.view_qualified, s.docs_qualified, s.emb_qualified)
    return {r["attname"]: Existing(r["type"], bool(r["notnull"]))
            for r in rows if r["attname"] != split.ITEM_COL}


async def columns_of(conn: asyncpg.Connection, schema: str, table: str
                     ) -> tuple[dict[str, Existing] | None, split.Split | None]:
    """The columns a collection recorded with *table* is planned over: the table's, or for a
    collection split over two tables the columns of syncd's view of them (and the split)."""
    s = await split.lookup(conn, schema, table)
    if s is not None and await existing_columns(conn, schema, table) is not None:
        if await conn.fetchval("SELECT to_regclass($1)", s.view_qualified) is None:
            s = await split.restore(conn, s)  # dropped for a migration of the app's tables
        return await view_columns(conn, s), s
    return await existing_columns(conn, schema, table), None


async def prepare_table(conn: asyncpg.Connection, source: ChromaCollection,
                        target: Target, *, reverse_capture: bool = False) -> VectorTable:
    """Create or adopt the collection's table (idempotent) and record it; return the mapping.
    *reverse_capture*: install the reverse stream's capture on it too (`syncd init` does for the
    collections that have items; one whose first item comes later gets it from its stream, so that
    a cutover does not need `init` again)."""
    info = source.info
    warnings: list[str] = []
    try:
        async with transaction(conn):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qi(target.schema)}")
            record = await conn.fetchrow(
                f"SELECT name, schema_name, table_name, created FROM {STATE_SCHEMA}.chroma_collections "
                "WHERE collection_id = $1", info.id)
            # a renamed collection keeps writing to the table it was recorded with, which follows
            # its name if syncd created it under the collection's name (renamed while no daemon ran)
            probe = (await follow_name(conn, target, record, str(record["name"]), info.name, warnings.append)
                     if record is not None else plan_name(info, target))
            if record is not None and probe != record["table_name"]:
                log.info("collection renamed in Chroma while syncd was stopped", collection=info.name,
                         previous=record["name"], table=probe)
            existing = await existing_columns(conn, target.schema, probe)
            entry, index = target_entry(target, info.name)
            deferred: list[str] | None = None
            if existing is None and record is None and entry is not None and entry.create:
                deferred = await _create_from_ddl(conn, target, index, probe)
                existing = await existing_columns(conn, target.schema, probe)
            pair: split.Split | None = None
            if entry is not None and entry.documents is not None and existing is not None:
                pair = await split.ensure(conn, target.schema, probe, entry.documents,
                                          f"target.collections[{index}]")
                existing = await view_columns(conn, pair)
            key_types: dict[str, set[str]] = {}
            if existing is None:
                keys = [k for _, k in parse_columns(entry, index).keys]
                key_types = await source.log.key_types(info, keys) if keys else {}
            if existing is None and entry is not None and entry.documents is not None:
                raise SchemaError(f"target.collections[{index}]: there is no table {target.schema}.{probe}; "
                                  "a collection split over two tables needs both to exist (the app's "
                                  "migration, or the entry's create)")
            table = plan(info, target, existing, key_types, warnings.append, table=probe, split=pair)
            if existing is None:
                await conn.execute(create_table_sql(table))
            elif record is not None:
                table.created = bool(record["created"])
            else:
                table.created = deferred is not None
                if pair is None:
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
            if deferred:
                await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET deferred_indexes = $2 "
                                   "WHERE collection_id = $1", info.id, deferred)
            found = await vector_indexes(conn, table.indexed, table.embedding_col)
            table.index = found[0] if found else None
            if (record is None and not table.created and table.index is not None
                    and table.index.method == "ivfflat" and target.reindex_ivfflat):
                await record_adopted_ivfflat(conn, info.id, table.indexed)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, f"creating the table of collection {info.name!r}") from exc
    if table.index is not None and not table.created:
        log.info("vector index adopted", table=table.qualified, index=table.index.describe())
        warn = mismatch(table.index, info.name, info.space, table.qualified)
        if warn:
            warnings.append(warn)
    for w in warnings:
        log.warning("mapping", collection=info.name, warning=w)
    if reverse_capture:
        await pg_capture.install(conn, table.schema, [table.name])
    return table


async def planned_table(conn: asyncpg.Connection, source: ChromaCollection,
                        target: Target) -> VectorTable | None:
    """The collection's table as it is in the target, planned over its columns: nothing created or
    recorded (a check of a target loaded elsewhere). None when the table does not exist."""
    info = source.info
    record = None
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_collections"):
        record = await conn.fetchrow(f"SELECT table_name, created FROM {STATE_SCHEMA}.chroma_collections "
                                     "WHERE collection_id = $1", info.id)
    probe = record["table_name"] if record is not None else plan_name(info, target)
    existing, pair = await columns_of(conn, target.schema, probe)
    if existing is None:
        return None
    table = plan(info, target, existing, {}, lambda _w: None, table=probe, split=pair)
    table.created = bool(record["created"]) if record is not None else False
    found = await vector_indexes(conn, table.indexed, table.embedding_col)
    table.index = found[0] if found else None
    return table


async def _create_from_ddl(conn: asyncpg.Connection, target: Target, index: int, table: str) -> list[str]:
    """Run ``[[target.collections]] create`` (the app's own DDL) for a table that does not exist yet;
    its vector indexes are dropped again and built after the snapshot, as written (their
    definitions are returned, to be recorded)."""
    entry = target.collections[index]
    where = f"target.collections[{index}].create"
    assert entry.create is not None
    await conn.execute(f"SET LOCAL search_path = {qi(target.schema)}, public")
    try:
        await conn.execute(entry.create)
    except asyncpg.PostgresError as exc:
        raise SchemaError(f"{where}: PostgreSQL refused the DDL ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}); fix it in the config") from None
    await conn.execute("RESET search_path")
    qualified = f"{qi(target.schema)}.{qi(table)}"
    if await conn.fetchval("SELECT to_regclass($1)", qualified) is None:
        raise SchemaError(f"{where} ran but created no table {target.schema}.{table}; the DDL must "
                          f"create the table named by target.collections[{index}].table")
    definitions = []
    for column in await conn.fetch(
            """SELECT DISTINCT a.attname FROM pg_attribute a WHERE a.attrelid = $1::regclass
               AND format_type(a.atttypid, NULL) IN ('vector', 'halfvec')""", qualified):
        for found in await vector_indexes(conn, qualified, column["attname"]):
            definitions.append(found.definition)
            await conn.execute(f"DROP INDEX {qi(target.schema)}.{qi(found.name)}")
    return definitions


async def follow_name(conn: asyncpg.Connection, target: Target, record: asyncpg.Record, old: str, new: str,
                      warn: Callable[[str], None] | None = None) -> str:
    """The table of a collection renamed from *old* to *new* (*record*: its row of
    ``syncd.chroma_collections``). Renamed to *new* when syncd created it under *old*, neither
    name is mapped in the config, and *new* fits and is free; else the recorded table."""
    table, schema = str(record["table_name"]), str(record["schema_name"])
    if (old == new or not record["created"] or table != old or len(new.encode()) > 63
            or target_entry(target, old)[0] is not None or target_entry(target, new)[0] is not None):
        return table
    if not await conn.fetchval("SELECT to_regclass($1) IS NULL", f"{qi(schema)}.{qi(new)}"):
        if warn is not None:
            warn(f"collection {old!r} was renamed to {new!r}; table {schema}.{new} exists already, "
                 f"so it keeps writing to {schema}.{table}")
        return table
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{qi(schema)}.{qi(table)}"):
        await conn.execute(f"ALTER TABLE {qi(schema)}.{qi(table)} RENAME TO {qi(new)}")
    return new


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
    """Build the table's vector index once, after the bulk load, with room to build it in memory:
    the indexes of its ``create`` DDL as written, else an HNSW index for the collection's space
    (a vector index already there, the app's, is kept and none added)."""
    found = await vector_indexes(conn, t.indexed, t.embedding_col)
    if found:
        t.index = found[0]
        began = time.monotonic()
        grown = await rebuild_outgrown(conn, t.index, t.schema, t.name, t.indexed, INDEX_TIMEOUT)
        if grown is not None:
            log.warning("ivfflat index rebuilt", table=t.qualified, index=t.index.name, rows_adopted=grown[0],
                        rows=grown[1], seconds=round(time.monotonic() - began, 2),
                        why="ivfflat takes its list centres from the rows present when it is built")
        return
    deferred = await conn.fetchval(
        f"SELECT deferred_indexes FROM {STATE_SCHEMA}.chroma_collections WHERE schema_name = $1 "
        "AND table_name = $2 AND deleted_at IS NULL", t.schema, t.name)
    statements = list(deferred or [])
    if not statements:
        sql = hnsw_index_sql(t)
        if sql is None:
            log.warning("no HNSW index: pgvector indexes at most 4,000 dimensions (halfvec)",
                        table=t.qualified, dimensions=t.dim)
            return
        statements = [sql]
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {t.qualified}"))
    mem_mb = min(4096, max(64, int(rows * (t.dim * 4 + 256) * 1.3 / 2**20)))
    began = time.monotonic()
    async with transaction(conn):
        await conn.execute(f"SET LOCAL maintenance_work_mem = '{mem_mb}MB'")
        for sql in statements:
            await conn.execute(sql, timeout=INDEX_TIMEOUT)
        await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET deferred_indexes = NULL "
                           "WHERE schema_name = $1 AND table_name = $2", t.schema, t.name)
    await conn.execute(f"ANALYZE {t.indexed}", timeout=INDEX_TIMEOUT)
    log.info("index built", table=t.qualified, rows=rows, space=t.space,
             maintenance_work_mem_mb=mem_mb, seconds=round(time.monotonic() - began, 2))
