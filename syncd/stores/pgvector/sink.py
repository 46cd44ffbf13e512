"""PostgreSQL + pgvector sink for one Chroma collection.

Snapshot chunks go in with binary COPY through pgvector's binary codec, so the
float32 bits are written as read; changes are applied with Chroma's semantics
(see :mod:`syncd.stores.pgvector.plan`). Rows, rejects and the checkpoint of a
chunk or batch commit in one transaction. A row PostgreSQL refuses is isolated
by bisection (COPY) or by replaying the batch change by change under savepoints.

Catch-up after a snapshot skips, per item, log rows the snapshot image already
holds (``syncd.chroma_seen``). When the source reports purged log rows, the
stream's position is re-read from here and the collection is reconciled first:
items changed since the checkpoint are copied again, items gone are deleted.
The HNSW index is built once catch-up is done.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import structlog

from syncd.config import Target
from syncd.errors import RowError, SchemaError, StrictModeStop, SyncdError
from syncd.model import Batch, Change, Checkpoint, Op, Position, SnapshotState
from syncd.ports import ApplyResult, Chunk
from syncd.stores.chroma.echo import forget_echoes, take_echoes
from syncd.stores.chroma.log import CollectionInfo, Item
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.pgvector import doubt as pgvector_doubt
from syncd.stores.pgvector.plan import (
    Existing,
    VectorTable,
    create_table_sql,
    parse_columns,
    plan,
    raw_image,
    target_entry,
)
from syncd.stores.postgres import state as pgstate
from syncd.stores.postgres.connect import close_quietly, transaction, translate
from syncd.stores.postgres.sink import guarded
from syncd.stores.postgres.state import STATE_SCHEMA, Reject
from syncd.stores.postgres.types import base_type
from syncd.stores.sqlite.schema import qi

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

Record = tuple[Any, ...]
Prepared = tuple[str, Record, Change]


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


async def prepare_table(conn: asyncpg.Connection, source: ChromaCollectionSource,
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


class PgvectorSink:
    """Writes one collection into its table; owns that stream's checkpoint."""

    def __init__(self, conn: asyncpg.Connection, table: VectorTable, source: ChromaCollectionSource, *,
                 strict: bool, chunk_rows: int, on_reject: Callable[[int], None] | None = None,
                 busy: Callable[[str, str], contextlib.AbstractContextManager[None]] | None = None) -> None:
        self.conn = conn
        self.busy = busy or (lambda _name, _doing: contextlib.nullcontext())
        self.table = table
        self.source = source
        self.strict = strict
        self.chunk_rows = chunk_rows
        self.on_reject = on_reject
        self._max_seen: int | None = None
        self._doubts: bool | None = None
        """Whether the stream has records in syncd.chroma_vector_doubt (None: not known yet)."""
        self._sql = {"add": table.add_sql, "update": table.update_sql, "upsert": table.upsert_sql,
                     "delete": table.delete_sql, "replace": table.replace_sql}

    async def ping(self) -> None:
        async with guarded("checking the target"):
            await self.conn.fetchval("SELECT 1")
        await self.settle_vectors(stream_name(self.table.collection_id))

    async def close(self) -> None:
        await close_quietly(self.conn)

    # --- checkpoint ---------------------------------------------------------------------

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        async with guarded("reading the checkpoint"):
            checkpoint = await pgstate.load_checkpoint(self.conn, stream)
        self._max_seen = None
        if checkpoint is not None and (checkpoint.snapshot is None or checkpoint.snapshot.complete) \
                and self.source.gap is not None:
            with self.busy(stream, "reconciling after Chroma purged its log"):
                checkpoint = await self.reconcile(stream, checkpoint.position)
        return checkpoint

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        t = self.table
        async with guarded("starting the snapshot"), transaction(self.conn):
            if await self.conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t.qualified})"):
                raise SchemaError(
                    f"target table {t.schema}.{t.name} already has rows, and syncd copies collection "
                    f"{t.collection!r} into an empty table; empty it (TRUNCATE {t.qualified}) and run again")
            await self.conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream)
            await pgvector_doubt.clear(self.conn, stream)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state)

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        state.complete = True
        doubts = await self.source.vector_doubts()  # read after every chunk: covers what they hold
        async with guarded("finishing the snapshot"), transaction(self.conn):
            await pgvector_doubt.replace_all(self.conn, stream, doubts)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state)
        self._doubts = bool(doubts)

    # --- snapshot -----------------------------------------------------------------------

    def _records(self, rows: Sequence[tuple[Any, ...]], start: int | None,
                 ) -> tuple[list[Record], list[Record], list[tuple[str, int]], list[Reject]]:
        """Full images of snapshot rows, the rows they came from, the ids to skip in catch-up
        (changed after *start*), and the rows that cannot be written."""
        t = self.table
        records: list[tuple[Any, ...]] = []
        raws: list[tuple[Any, ...]] = []
        seen: list[tuple[str, int]] = []
        rejects: list[Reject] = []
        if start is not None:
            seen = [(row[0], row[4]) for row in rows if row[4] > start]
        fits = vectors_fit(t, [row[1] for row in rows])
        # ids and documents that the text converters would return unchanged are taken as they are
        plain_ids = t.id_type == "text" and plain_texts([row[0] for row in rows])
        plain_docs = plain_texts([row[2] for row in rows])
        if plain_ids and plain_docs and fits.all() and not any(row[5] for row in rows):
            whole = self._plain_records(rows)
            if whole is not None:
                return whole, [row[:4] for row in rows], seen, rejects
        for k, (item_id, vector, document, metadata, _seq, error) in enumerate(rows):
            try:
                if error:
                    raise RowError(error)
                if not fits[k]:
                    t.check_vector(vector)  # raises, naming what is wrong
                records.append(full_image(t, item_id, vector, document, metadata, plain_ids, plain_docs))
                raws.append((item_id, vector, document, metadata))
            except RowError as exc:
                rejects.append(Reject(t.collection, [item_id], raw_image(item_id, vector, document, metadata),
                                      exc.message))
        return records, raws, seen, rejects

    def _plain_records(self, rows: Sequence[tuple[Any, ...]]) -> list[Record] | None:
        """Full images of rows whose ids, documents and vectors need no conversion, column by
        column, for a table of the default layout; None when a row needs more (a metadata
        value that does not fit): the caller then converts row by row."""
        t = self.table
        if t.columns != [t.id_col, t.embedding_col, "document", "metadata"] or t.document_not_null:
            return None
        try:
            metadata = [rest_json(t, row[3]) for row in rows]
        except RowError:
            return None
        return [(row[0], row[1], row[2], m) for row, m in zip(rows, metadata, strict=True)]

    def prepare_chunk(self, chunk: Chunk) -> PreparedChunk:
        """Convert a chunk's rows and encode them for binary COPY (pure: safe on another thread
        while the previous chunk is written)."""
        records, raws, _, rejects = self._records(chunk.rows, None)
        return PreparedChunk(records, raws, rejects, copy_payload(self.table, records))

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        prepared = chunk.prepared if isinstance(chunk.prepared, PreparedChunk) else self.prepare_chunk(chunk)
        rejects = prepared.rejects
        seen = [(row[0], row[4]) for row in chunk.rows if row[4] > state.start.offset]
        self._check_strict(rejects)
        async with guarded(f"copying into {self.table.qualified}"), transaction(self.conn):
            if not await self._copy_payload(prepared.payload):
                await self._copy_isolating(prepared.records, prepared.raws, rejects)
            self._check_strict(rejects)
            await self._save_seen(stream, seen)
            await pgstate.insert_rejects(self.conn, stream, rejects)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state)
        self._count(rejects)
        return ApplyResult(applied=len(chunk.rows) - len(rejects), rejected=len(rejects))

    async def _copy_payload(self, payload: list[bytes] | None) -> bool:
        """COPY a prepared binary payload under a savepoint; False if there is none or PostgreSQL
        refused a row of it (the caller then copies record by record, isolating the bad ones)."""
        if payload is None:
            return False
        t = self.table
        try:
            async with transaction(self.conn):
                await self.conn.copy_to_table(t.name, source=copy_messages(payload), columns=t.columns,
                                              schema_name=t.schema, format="binary")
        except Exception as exc:
            err = translate(exc, f"copying into {t.qualified}")
            if not isinstance(err, RowError):
                raise err from exc
            return False
        return True

    async def _copy_isolating(self, records: list[tuple[Any, ...]], raws: list[tuple[Any, ...]],
                              rejects: list[Reject]) -> None:
        if not records:
            return
        t = self.table
        try:
            async with transaction(self.conn):
                await self.conn.copy_records_to_table(t.name, records=records, columns=t.columns,
                                                      schema_name=t.schema)
        except Exception as exc:
            err = translate(exc, f"copying into {t.qualified}")
            if not isinstance(err, RowError):
                raise err from exc
            if len(records) == 1:
                rejects.append(Reject(t.collection, [raws[0][0]], raw_image(*raws[0]), err.message))
                return
            mid = len(records) // 2
            await self._copy_isolating(records[:mid], raws[:mid], rejects)
            await self._copy_isolating(records[mid:], raws[mid:], rejects)

    async def _save_seen(self, stream: str, seen: list[tuple[str, int]]) -> None:
        if seen:
            await self.conn.executemany(
                f"""INSERT INTO {STATE_SCHEMA}.chroma_seen (stream, id, seq) VALUES ($1, $2, $3)
                    ON CONFLICT (stream, id) DO UPDATE SET seq = EXCLUDED.seq""",
                [(stream, item_id, seq) for item_id, seq in seen])

    # --- streaming ----------------------------------------------------------------------

    async def _skipped(self, stream: str, batch: Batch) -> set[int]:
        """Indexes of changes the snapshot (or reconciliation) image already holds."""
        if self._max_seen is None:
            self._max_seen = int(await self.conn.fetchval(
                f"SELECT coalesce(max(seq), 0) FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream))
        if not batch.changes or batch.changes[0].position.offset > self._max_seen:
            return set()
        ids = list({str(ch.key[0]) for ch in batch.changes})
        seen = {r["id"]: int(r["seq"]) for r in await self.conn.fetch(
            f"SELECT id, seq FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1 AND id = ANY($2::text[])",
            stream, ids)}
        return {i for i, ch in enumerate(batch.changes) if ch.position.offset <= seen.get(str(ch.key[0]), -1)}

    def _prepare(self, ch: Change) -> Prepared:
        t = self.table
        item_id = str(ch.key[0])
        if ch.op is Op.DELETE or ch.row is None:
            return "delete", (t.convert_id(item_id),), ch
        row = ch.row
        if row.get("error"):
            raise RowError(str(row["error"]))
        op = row["op"]
        meta = row.get("metadata") or {}
        if op == "add":
            return "add", t.record(item_id, row["embedding"], row["document"], meta), ch
        if op == "replace":  # a whole image (coalesced changes that follow a DELETE)
            return "replace", t.record(item_id, row["embedding"], row["document"], meta), ch
        if op == "upsert" and row["embedding"] is None:
            raise RowError("an upsert without an embedding")
        if op in ("update", "upsert"):
            args = t.patch(item_id, row["embedding"], bool(row["has_document"]), row["document"], meta)
            return op, args, ch
        raise RowError(f"unknown operation {op!r}")

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        """Apply *batch* with Chroma's semantics; checkpoint it in the same transaction.

        An id with an open reject is not patched (the table does not hold what Chroma
        holds for it): its current image is read from the source and written whole, and
        its old rejects resolved — or, if it still cannot be written, replaced by one.
        """
        async with guarded("reading skipped changes"):
            skipped = await self._skipped(stream, batch)
            # the reverse stream's own writes coming back from Chroma's log (syncd.chroma_echo)
            echoed, echoes = await take_echoes(self.conn, self.table.collection_id,
                                               [ch for i, ch in enumerate(batch.changes) if i not in skipped])
            if echoed:
                kept = [i for i in range(len(batch.changes)) if i not in skipped]
                skipped |= {kept[j] for j in echoed}
            suspect = await self._rejected_ids(stream, batch)
        current = await self.source.current_items(sorted(suspect)) if suspect else {}
        todo = [ch for i, ch in enumerate(batch.changes) if i not in skipped]
        async with guarded("reading vector doubts"):
            if self._doubts is None:
                self._doubts = await pgvector_doubt.has_records(self.conn, stream)
            doubts = await pgvector_doubt.changed_records(
                self.conn, stream, self.table, [ch for ch in todo if str(ch.key[0]) not in suspect],
                self._doubts)
        prepared, rejects, seen, represented = self._prepare_batch(batch, todo, suspect, current,
                                                                   coalesce=True)
        self._check_strict(rejects)
        try:
            async with transaction(self.conn):
                await self._apply_runs(prepared)
                await forget_echoes(self.conn, self.table.collection_id, echoes)
                await pgvector_doubt.save(self.conn, stream, doubts)
                await self._finish_batch(stream, batch, suspect, seen, rejects)
        except Exception as exc:
            err = translate(exc, f"applying changes to {self.table.qualified}")
            if not isinstance(err, RowError):
                raise err from exc
            # change by change, as logged (not coalesced), so that a refused row names its change
            prepared, rejects, seen, _ = self._prepare_batch(batch, todo, suspect, current, coalesce=False)
            async with guarded("applying changes one by one"), transaction(self.conn):
                prepared = await self._apply_one_by_one(prepared, rejects)
                represented = len(prepared)
                self._check_strict(rejects)
                await forget_echoes(self.conn, self.table.collection_id, echoes)
                await pgvector_doubt.save(self.conn, stream, doubts)
                await self._finish_batch(stream, batch, suspect, seen, rejects)
        if seen:
            self._max_seen = max([self._max_seen or 0, *(seq for _, seq in seen)])
        elif self._max_seen and batch.position.offset >= self._max_seen:
            self._max_seen = 0
        self._count(rejects)
        if any(d is not None for d in doubts.values()):
            self._doubts = True
        await self.settle_vectors(stream)
        return ApplyResult(applied=represented, rejected=len(rejects))

    async def settle_vectors(self, stream: str) -> None:
        """Copy, for ids Chroma's saved index has reached, the vector it returns where it holds
        an UPDATE's its log says had no effect (:mod:`syncd.stores.pgvector.doubt`)."""
        if self._doubts is False:
            return
        async with guarded(f"settling vectors of {self.table.qualified}"):
            result = await pgvector_doubt.settle(self.conn, stream, self.table, self.source)
        self._doubts = result is not None
        if result and result[0]:
            log.info("vectors settled", stream=stream, collection=self.table.collection, settled=result[0],
                     rewritten=result[1])

    def _prepare_batch(self, batch: Batch, kept: list[Change], suspect: set[str], current: dict[str, Item], *,
                       coalesce: bool) -> tuple[list[Prepared], list[Reject], list[tuple[str, int]], int]:
        """The writes for *kept* (the batch's changes not skipped), the changes that cannot be
        written, the ids to skip later (refreshed images newer than the batch), and how many
        changes the writes stand for.

        With *coalesce*, the changes of one id that together have the effect of a single
        write become that write (:func:`coalesce`); the writes are then ordered by kind, so
        that each kind is one ``executemany``, keeping the order of each id's writes.
        """
        last = {str(ch.key[0]): i for i, ch in enumerate(kept)}
        rejects: list[Reject] = []
        seen: list[tuple[str, int]] = []
        groups: list[tuple[int, Change, list[Change]]] = []  # (stage of its id, change, what it stands for)
        stages: dict[str, int] = {}
        plain = [ch for ch in kept if str(ch.key[0]) not in suspect]
        for merged, parts in (coalesce_changes(plain) if coalesce else [(ch, [ch]) for ch in plain]):
            item_id = str(merged.key[0])
            stage = stages[item_id] = stages.get(item_id, -1) + 1
            groups.append((stage, merged, parts))
        prepared: list[tuple[int, Prepared]] = []
        represented = 0
        for stage, merged, parts in groups:
            try:
                prepared.append((stage, self._prepare(merged)))
                represented += len(parts)
                continue
            except RowError as exc:
                if len(parts) == 1:
                    rejects.append(self._reject(merged, exc.message))
                    continue
            for ch in parts:  # a coalesced write that cannot be made: change by change
                try:
                    prepared.append((stage, self._prepare(ch)))
                    represented += 1
                except RowError as exc:
                    rejects.append(self._reject(ch, exc.message))
        for i, ch in enumerate(kept):
            item_id = str(ch.key[0])
            if item_id not in suspect or last[item_id] != i:
                continue
            item = current.get(item_id)
            try:
                prepared.append((stages.get(item_id, 0), self._refresh(ch, item)))
                represented += 1
                if item is not None and item.seq > batch.position.offset:
                    seen.append((item_id, item.seq))
            except RowError as exc:
                rejects.append(self._reject(ch, exc.message) if item is None else Reject(
                    self.table.collection, [item_id],
                    raw_image(item.id, item.vector, item.document, item.metadata), exc.message, ch.position))
        if coalesce:
            prepared.sort(key=lambda p: (p[0], KIND_ORDER[p[1][0]]))
        return [p for _, p in prepared], rejects, seen, represented

    def _refresh(self, ch: Change, item: Item | None) -> Prepared:
        """The current image of an id with an open reject, as a full write (or a delete)."""
        t = self.table
        if item is None:
            return "delete", (t.convert_id(str(ch.key[0])),), ch
        if item.error:
            raise RowError(item.error)
        return "replace", t.record(item.id, item.vector, item.document, item.metadata), ch

    async def _rejected_ids(self, stream: str, batch: Batch) -> set[str]:
        if not batch.changes or not await self._has_open_rejects(stream):
            return set()
        ids = list({str(ch.key[0]) for ch in batch.changes})
        rows = await self.conn.fetch(
            f"""SELECT DISTINCT key->>0 AS id FROM {STATE_SCHEMA}.rejects WHERE stream = $1
                AND resolved_at IS NULL AND key->>0 = ANY($2::text[])""", stream, ids)
        return {r["id"] for r in rows}

    def _reject(self, ch: Change, error: str) -> Reject:
        row = ch.row or {}
        image = raw_image(str(ch.key[0]), row.get("embedding"), row.get("document"), row.get("metadata"),
                          row.get("op", "delete"))
        return Reject(self.table.collection, [str(ch.key[0])], image, error, ch.position)

    async def _apply_runs(self, prepared: list[Prepared]) -> None:
        """Consecutive changes of one kind go in one executemany (which keeps their order)."""
        i = 0
        while i < len(prepared):
            kind = prepared[i][0]
            j = i
            while j < len(prepared) and prepared[j][0] == kind:
                j += 1
            await self.conn.executemany(self._sql[kind], [p[1] for p in prepared[i:j]])
            i = j

    async def _apply_one_by_one(self, prepared: list[Prepared], rejects: list[Reject]) -> list[Prepared]:
        applied = []
        for kind, args, ch in prepared:
            try:
                async with transaction(self.conn):
                    await self.conn.execute(self._sql[kind], *args)
                applied.append((kind, args, ch))
            except Exception as exc:
                err = translate(exc, f"applying a change to {self.table.qualified}")
                if not isinstance(err, RowError):
                    raise err from exc
                rejects.append(self._reject(ch, err.message))
        return applied

    async def _finish_batch(self, stream: str, batch: Batch, refreshed: set[str], seen: list[tuple[str, int]],
                            rejects: list[Reject]) -> None:
        if refreshed:
            await pgstate.resolve_rejects(self.conn, stream, self.table.collection, [[k] for k in refreshed])
        await pgstate.insert_rejects(self.conn, stream, rejects)
        if self._max_seen and batch.position.offset >= self._max_seen and not seen:
            await self.conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream)
        await self._save_seen(stream, seen)
        await pgstate.save_checkpoint(self.conn, stream, batch.position, None)

    async def _has_open_rejects(self, stream: str) -> bool:
        return bool(await self.conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.rejects WHERE stream = $1 AND resolved_at IS NULL)",
            stream))

    # --- reconciliation -----------------------------------------------------------------

    async def reconcile(self, stream: str, checkpoint: Position) -> Checkpoint:
        """Bring the table to the collection's current contents after the log lost rows.

        Items whose last effective operation is after the checkpoint are copied again;
        ids the collection no longer has are deleted, one id range per page. The new
        checkpoint is a position every page is consistent with; log rows after it that a
        copied image already holds are skipped, as after a snapshot.
        """
        t = self.table
        start = await self.source.reconcile_start(checkpoint)
        log.warning("reconciling", stream=stream, collection=t.collection, checkpoint=checkpoint.offset,
                    position=start.offset, gap=str(self.source.gap))
        began = time.monotonic()
        copied = deleted = 0
        rejects_total = 0
        text_id = "::text" if t.id_type != "text" else ""
        key = f"{qi(t.id_col)}{text_id} COLLATE \"C\""
        delete_sql = (f"DELETE FROM {t.qualified} WHERE ($1::text IS NULL OR {key} > $1::text) "
                      f"AND ($2::text IS NULL OR {key} <= $2::text) "
                      f"AND NOT ({qi(t.id_col)}{text_id} = ANY($3::text[]))")
        async with guarded(f"reconciling {t.qualified}"):
            async with transaction(self.conn):
                await self.conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream)
            after: str | None = None
            async for page in self.source.pages(None, self.chunk_rows, changed_after=checkpoint.offset):
                last_page = len(page.keys) < self.chunk_rows
                rows = [(i.id, i.vector, i.document, i.metadata, i.seq, i.error) for i in page.items]
                records, _, seen, rejects = self._records(rows, start.offset)
                self._check_strict(rejects)
                keys = [str(t.convert_id(k)) for k, _ in page.keys if _convertible(t, k)]
                async with transaction(self.conn):
                    upto = None if last_page else page.last_key
                    status = await self.conn.execute(delete_sql, after, upto, keys)
                    deleted += int(status.split()[-1])
                    if records:
                        await self.conn.executemany(self._sql["replace"], records)
                    await self._save_seen(stream, seen)
                    await pgstate.insert_rejects(self.conn, stream, rejects)
                copied += len(records)
                rejects_total += len(rejects)
                self._count(rejects)
                after = page.last_key or after
            doubts = await self.source.vector_doubts()
            async with transaction(self.conn):
                await pgvector_doubt.replace_all(self.conn, stream, doubts)
                await pgstate.save_checkpoint(self.conn, stream, start, None)
            self._doubts = bool(doubts)
        self.source.gap_resolved()
        self._max_seen = None
        log.warning("reconciled", stream=stream, collection=t.collection, copied=copied, deleted=deleted,
                    rejected=rejects_total, position=start.offset, seconds=round(time.monotonic() - began, 3))
        return Checkpoint(position=start, snapshot=None)

    # --- index --------------------------------------------------------------------------

    async def after_catch_up(self, stream: str) -> None:
        """Build the HNSW index once, after the bulk load, with room to build it in memory."""
        await self.settle_vectors(stream)
        t = self.table
        async with guarded(f"indexing {t.qualified}"):
            existing = await self.conn.fetchval(
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
            rows = int(await self.conn.fetchval(f"SELECT count(*) FROM {t.qualified}"))
            mem_mb = min(4096, max(64, int(rows * (t.dim * 4 + 256) * 1.3 / 2**20)))
            began = time.monotonic()
            async with transaction(self.conn):
                await self.conn.execute(f"SET LOCAL maintenance_work_mem = '{mem_mb}MB'")
                await self.conn.execute(sql, timeout=INDEX_TIMEOUT)
            await self.conn.execute(f"ANALYZE {t.qualified}", timeout=INDEX_TIMEOUT)
            log.info("index built", table=t.qualified, rows=rows, space=t.space,
                     maintenance_work_mem_mb=mem_mb, seconds=round(time.monotonic() - began, 2))

    # --- rejects ------------------------------------------------------------------------

    def _check_strict(self, rejects: list[Reject]) -> None:
        if self.strict and rejects:
            r = rejects[0]
            raise StrictModeStop(f"strict mode: collection {r.object!r}, id {r.key[0]!r}: {r.error}; fix the "
                                 "item or the mapping ([[target.collections]], target.column_types), or set "
                                 "target.strict = false to quarantine such items")

    def _count(self, rejects: list[Reject]) -> None:
        if rejects:
            for r in rejects:
                log.warning("item rejected", collection=r.object, id=r.key[0], error=r.error)
            if self.on_reject:
                self.on_reject(len(rejects))


def _convertible(t: VectorTable, item_id: str) -> bool:
    try:
        t.convert_id(item_id)
    except RowError:
        return False
    return True




# --- coalescing the changes of one id in a batch ----------------------------------------------

KIND_ORDER = {"delete": 0, "replace": 1, "add": 2, "update": 3, "upsert": 4}


def _kind(ch: Change) -> str | None:
    """The Chroma operation of a change; None for one that is not merged (it carries an error)."""
    if ch.op is Op.DELETE or ch.row is None:
        return "delete"
    if ch.row.get("error") or ch.row.get("op") not in ("add", "update", "upsert", "replace"):
        return None
    return str(ch.row["op"])


def _image(op: str, embedding: Any, document: Any, has_document: bool,
           metadata: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, "embedding": embedding, "document": document, "has_document": has_document,
            "metadata": metadata, "error": None}


def _patched(base: Mapping[str, Any], patch: Mapping[str, Any], op: str) -> dict[str, Any]:
    """*base* followed by the UPDATE / UPSERT *patch*: vector and document if given, metadata keys
    set (a null removes the key). A whole image (``replace``) drops removed keys; a patch keeps
    the nulls, which remove the keys from the row it is applied to."""
    metadata = dict(base.get("metadata") or {})
    for key, value in (patch.get("metadata") or {}).items():
        if value is None and op == "replace":
            metadata.pop(key, None)
        else:
            metadata[key] = value
    has_document = bool(patch["has_document"])
    return _image(op, patch["embedding"] if patch["embedding"] is not None else base["embedding"],
                  patch["document"] if has_document else base["document"],
                  has_document or bool(base["has_document"]), metadata)


def _whole(row: Mapping[str, Any]) -> dict[str, Any]:
    """The item an ADD / UPSERT creates where the id is missing."""
    metadata = {k: v for k, v in (row.get("metadata") or {}).items() if v is not None}
    document = row["document"] if row["has_document"] else None
    return _image("replace", row["embedding"], document, True, metadata)


def merge(first: Change, then: Change) -> Change | None:
    """One change with the effect of *first* followed by *then* (same id), whether or not the
    id exists before them; None when there is none. Chroma's rules: ADD of an existing id and
    UPDATE of a missing id do nothing; UPSERT patches an existing id or creates it."""
    a, b = _kind(first), _kind(then)
    if a is None or b is None:
        return None
    if b in ("delete", "replace"):
        return then
    row_a, row_b = first.row or {}, then.row or {}
    image: Mapping[str, Any] | None = None
    if a == "delete":  # the id is missing now
        if b == "update":
            return first
        image = _whole(row_b)
    elif a == "replace":  # the id exists with a known image
        image = row_a if b == "add" else _patched(row_a, row_b, "replace")
    elif a in ("add", "upsert") and b == "add":
        return first  # the id exists after either: the ADD does nothing
    elif (a, b) in (("update", "update"), ("upsert", "update"), ("upsert", "upsert")):
        image = _patched(row_a, row_b, a)
    if image is None:
        return None  # ADD then UPDATE / UPSERT, UPDATE then ADD / UPSERT: the result depends on the row
    return Change(Op.UPDATE, then.object, then.key, dict(image), then.position, then.committed_at)


def coalesce_changes(changes: Sequence[Change]) -> list[tuple[Change, list[Change]]]:
    """Per id, runs of consecutive changes replaced by one change with the same effect
    (:func:`merge`); each with the changes it stands for. The result keeps the order of
    each id's changes (not the order across ids)."""
    by_id: dict[str, list[tuple[Change, list[Change]]]] = {}
    for ch in changes:
        runs = by_id.setdefault(str(ch.key[0]), [])
        if runs:
            merged = merge(runs[-1][0], ch)
            if merged is not None:
                runs[-1] = (merged, [*runs[-1][1], ch])
                continue
        runs.append((ch, [ch]))
    return [run for runs in by_id.values() for run in runs]


# --- binary COPY of snapshot chunks -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A snapshot chunk converted off the event loop: full images, the rows they came from,
    the rows that cannot be written, and the images encoded for binary COPY (None when a
    column type has no encoder here: the images then go through asyncpg's codecs)."""

    records: list[Record]
    raws: list[Record]
    rejects: list[Reject]
    payload: list[bytes] | None


def vectors_fit(t: VectorTable, vectors: Sequence[Any]) -> npt.NDArray[np.bool_]:
    """Per vector: of the table's dimension and finite (checked for the whole chunk at once)."""
    fits = np.zeros(len(vectors), dtype=bool)
    index = [k for k, v in enumerate(vectors) if v is not None and len(v) == t.dim]
    if index:
        block = np.stack([vectors[k] for k in index])
        fits[index] = np.isfinite(block).all(axis=1)
    return fits


def plain_texts(values: Sequence[Any]) -> bool:
    """Whether *values* are all str (or None) without NUL: what a text converter returns unchanged."""
    try:
        return "\x00" not in "".join([v for v in values if v is not None])
    except TypeError:
        return False


def full_image(t: VectorTable, item_id: str, vector: Any, document: str | None,
               metadata: Mapping[str, Any], plain_id: bool = False, plain_doc: bool = False) -> Record:
    """:meth:`VectorTable.record` for a vector already checked (:func:`vectors_fit`); *plain_id* /
    *plain_doc*: the id / document is known to need no conversion (:func:`plain_texts`)."""
    out: list[Any] = [item_id if plain_id else t.convert_id(item_id), vector]
    if t.document_col:
        out.append(document if plain_doc and (document is not None or not t.document_not_null)
                   else t.convert_document(document))
    if t.metadata_col:
        out.append(rest_json(t, metadata))
    if t.mapped:
        out.extend(t.convert_mapped(m, metadata.get(m.key)) for m in t.mapped)
    return tuple(out)


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False)


def rest_json(t: VectorTable, metadata: Mapping[str, Any]) -> str | None:
    """:meth:`VectorTable.rest_json` (same result, same errors) with one shared encoder."""
    if t.metadata_col is None:
        return None
    if t.mapped:
        keys = t.mapped_keys
        rest = {k: v for k, v in metadata.items() if k not in keys and v is not None}
    elif any(v is None for v in metadata.values()):
        rest = {k: v for k, v in metadata.items() if v is not None}
    else:
        rest = dict(metadata)
    if not rest:
        return None
    try:
        text = _JSON.encode(rest)
    except ValueError:
        raise RowError(f"column {t.metadata_col!r}: metadata holds a non-finite number",
                       column=t.metadata_col) from None
    if "\\u0000" in text:
        raise RowError(f"column {t.metadata_col!r}: jsonb cannot hold \\u0000", column=t.metadata_col)
    return text


_I32 = struct.Struct(">i").pack
_NULL = _I32(-1)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
FieldEncoder = Callable[[Any], bytes]


def _text_field(value: Any) -> bytes:
    data = str(value).encode()
    return _I32(len(data)) + data


def _jsonb_field(value: Any) -> bytes:
    data = str(value).encode()
    return _I32(len(data) + 1) + b"\x01" + data


def _packed(fmt: str) -> FieldEncoder:
    pack = struct.Struct(">i" + fmt).pack
    size = struct.calcsize(">" + fmt)
    return lambda value: pack(size, value)


def _bool_field(value: Any) -> bytes:
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


_FIELD_ENCODERS: dict[str, FieldEncoder] = {
    "text": _text_field, "character varying": _text_field, "varchar": _text_field,
    "jsonb": _jsonb_field, "json": _text_field,
    "bigint": _packed("q"), "integer": _packed("i"), "smallint": _packed("h"),
    "double precision": _packed("d"), "real": _packed("f"), "boolean": _bool_field,
}


def field_encoders(t: VectorTable) -> list[FieldEncoder] | None:
    """Binary COPY encoders of the non-vector columns, in :attr:`VectorTable.columns` order, or
    None when the column types are not all known here (a table syncd did not create, or a
    lifted column of another type)."""
    if not t.created or t.id_type != "text" or not t.vector_type.startswith("vector("):
        return None
    types = ["text"] + (["text"] if t.document_col else []) + (["jsonb"] if t.metadata_col else [])
    types += [m.pg_type for m in t.mapped]
    encoders = [_FIELD_ENCODERS.get(base_type(pg_type)) for pg_type in types]
    return None if any(e is None for e in encoders) else [e for e in encoders if e is not None]


COPY_MESSAGE = 1 << 19
"""Bytes per CopyData message: PostgreSQL reads a message whole before it parses it, so
messages of this size let it insert while the rest of a chunk is still on the way."""


async def copy_messages(messages: Sequence[bytes]) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


def copy_payload(t: VectorTable, records: Sequence[Record]) -> list[bytes] | None:
    """*records* (full images in :attr:`VectorTable.columns` order, vectors checked) as a
    binary COPY stream, in messages of about :data:`COPY_MESSAGE` bytes. The vectors are
    written as pgvector's binary form — dimensions, a zero, then the float32 values
    big-endian — byte-swapped as one block, so the bits are the ones read."""
    encoders = field_encoders(t)
    if encoders is None or not records:
        return None
    id_field, *rest = encoders
    width = 4 * t.dim
    vector_head = _I32(4 + width) + struct.pack(">hh", t.dim, 0)
    block = np.stack([r[1] for r in records]).astype(np.float32, copy=False)
    block.byteswap(inplace=True)  # np.stack made a copy of its own: big-endian in place
    vectors = block.data.cast("B")
    # column by column, then interleaved row by row, a message's worth of rows at a time
    columns: list[Sequence[bytes] | Sequence[memoryview]] = [
        [id_field(r[0]) for r in records],
        [vectors[at:at + width] for at in range(0, width * len(records), width)]]
    for i, encode in enumerate(rest, start=2):
        columns.append([_NULL if r[i] is None else encode(r[i]) for r in records])
    head = struct.pack(">h", len(t.columns))
    step = max(1, COPY_MESSAGE // (width + 64))
    messages = []
    for at in range(0, len(records), step):
        ids, vecs, *others = (c[at:at + step] for c in columns)
        rows = zip(itertools.repeat(head), ids, itertools.repeat(vector_head), vecs, *others)
        messages.append(b"".join(itertools.chain.from_iterable(rows)))
    messages[0] = COPY_HEADER + messages[0]
    messages.append(COPY_TRAILER)
    return messages
