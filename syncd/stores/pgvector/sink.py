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
import time
from collections.abc import Callable

import asyncpg
import structlog

from syncd.errors import RowError, SchemaError
from syncd.model import Batch, Change, Checkpoint, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, guarded, transaction, translate
from syncd.pg.echo import forget_echoes, take_echoes
from syncd.pg.state import Reject
from syncd.ports import ApplyResult, Chunk
from syncd.ports.collections import ChromaCollection, Item, raw_image
from syncd.sql import STATE_SCHEMA
from syncd.stores.pgvector import doubt as pgvector_doubt
from syncd.stores.pgvector import seen as seen_rows
from syncd.stores.pgvector.changes import (
    KIND_ORDER,
    Prepared,
    change_reject,
    coalesce_changes,
    convertible,
    prepare_change,
    refresh_image,
)
from syncd.stores.pgvector.copy import (
    PreparedChunk,
    copy_binary,
    copy_isolating,
    copy_payload,
    snapshot_records,
)
from syncd.stores.pgvector.plan import VectorTable
from syncd.stores.pgvector.table import build_index, stream_name

log = structlog.get_logger("syncd.sink.pgvector")


class PgvectorSink:
    """Writes one collection into its table; owns that stream's checkpoint."""

    def __init__(self, conn: asyncpg.Connection, table: VectorTable, source: ChromaCollection, *,
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

    def idle_work_done(self) -> bool:
        """Nothing left for idle pings to do (no open vector doubt to settle): the stream may
        close this sink while its collection is idle (``stream.release_idle_seconds``)."""
        return self._doubts is False

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
            await seen_rows.clear(self.conn, stream)
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

    def prepare_chunk(self, chunk: Chunk) -> PreparedChunk:
        """Convert a chunk's rows and encode them for binary COPY (pure: safe on another thread
        while the previous chunk is written)."""
        records, raws, _, rejects = snapshot_records(self.table, chunk.rows, None)
        return PreparedChunk(records, raws, rejects, copy_payload(self.table, records))

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        prepared = chunk.prepared if isinstance(chunk.prepared, PreparedChunk) else self.prepare_chunk(chunk)
        rejects = prepared.rejects
        seen = [(row[0], row[4]) for row in chunk.rows if row[4] > state.start.offset]
        self._check_strict(rejects)
        async with guarded(f"copying into {self.table.qualified}"), transaction(self.conn):
            if not await copy_binary(self.conn, self.table, prepared.payload):
                await copy_isolating(self.conn, self.table, prepared.records, prepared.raws, rejects)
            self._check_strict(rejects)
            await seen_rows.save(self.conn, stream, seen)
            await pgstate.insert_rejects(self.conn, stream, rejects)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state)
        self._count(rejects)
        return ApplyResult(applied=len(chunk.rows) - len(rejects), rejected=len(rejects))

    # --- streaming ----------------------------------------------------------------------

    async def _skipped(self, stream: str, batch: Batch) -> set[int]:
        """Indexes of changes the snapshot (or reconciliation) image already holds."""
        if self._max_seen is None:
            self._max_seen = await seen_rows.max_seq(self.conn, stream)
        return await seen_rows.held(self.conn, stream, batch, self._max_seen)

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
                prepared.append((stage, prepare_change(self.table, merged)))
                represented += len(parts)
                continue
            except RowError as exc:
                if len(parts) == 1:
                    rejects.append(change_reject(self.table, merged, exc.message))
                    continue
            for ch in parts:  # a coalesced write that cannot be made: change by change
                try:
                    prepared.append((stage, prepare_change(self.table, ch)))
                    represented += 1
                except RowError as exc:
                    rejects.append(change_reject(self.table, ch, exc.message))
        for i, ch in enumerate(kept):
            item_id = str(ch.key[0])
            if item_id not in suspect or last[item_id] != i:
                continue
            item = current.get(item_id)
            try:
                prepared.append((stages.get(item_id, 0), refresh_image(self.table, ch, item)))
                represented += 1
                if item is not None and item.seq > batch.position.offset:
                    seen.append((item_id, item.seq))
            except RowError as exc:
                rejects.append(change_reject(self.table, ch, exc.message) if item is None else Reject(
                    self.table.collection, [item_id],
                    raw_image(item.id, item.vector, item.document, item.metadata), exc.message, ch.position))
        if coalesce:
            prepared.sort(key=lambda p: (p[0], KIND_ORDER[p[1][0]]))
        return [p for _, p in prepared], rejects, seen, represented

    async def _rejected_ids(self, stream: str, batch: Batch) -> set[str]:
        if not batch.changes or not await self._has_open_rejects(stream):
            return set()
        ids = list({str(ch.key[0]) for ch in batch.changes})
        rows = await self.conn.fetch(
            f"""SELECT DISTINCT key->>0 AS id FROM {STATE_SCHEMA}.rejects WHERE stream = $1
                AND resolved_at IS NULL AND key->>0 = ANY($2::text[])""", stream, ids)
        return {r["id"] for r in rows}

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
                rejects.append(change_reject(self.table, ch, err.message.partition("\n")[0]))  # no DETAIL
        return applied

    async def _finish_batch(self, stream: str, batch: Batch, refreshed: set[str], seen: list[tuple[str, int]],
                            rejects: list[Reject]) -> None:
        if refreshed:
            await pgstate.resolve_rejects(self.conn, stream, self.table.collection, [[k] for k in refreshed])
        await pgstate.insert_rejects(self.conn, stream, rejects)
        if self._max_seen and batch.position.offset >= self._max_seen and not seen:
            await seen_rows.clear(self.conn, stream)
        await seen_rows.save(self.conn, stream, seen)
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
        key = f"{t.item_text} COLLATE \"C\""
        delete_sql = (f"DELETE FROM {t.qualified} WHERE ($1::text IS NULL OR {key} > $1::text) "
                      f"AND ($2::text IS NULL OR {key} <= $2::text) "
                      f"AND NOT ({t.item_text} = ANY($3::text[]))")
        async with guarded(f"reconciling {t.qualified}"):
            async with transaction(self.conn):
                await seen_rows.clear(self.conn, stream)
            after: str | None = None
            async for page in self.source.pages(None, self.chunk_rows, changed_after=checkpoint.offset):
                last_page = len(page.keys) < self.chunk_rows
                rows = [(i.id, i.vector, i.document, i.metadata, i.seq, i.error) for i in page.items]
                records, _, seen, rejects = snapshot_records(self.table, rows, start.offset)
                self._check_strict(rejects)
                keys = [k if t.split else str(t.convert_id(k)) for k, _ in page.keys if convertible(t, k)]
                async with transaction(self.conn):
                    upto = None if last_page else page.last_key
                    status = await self.conn.execute(delete_sql, after, upto, keys)
                    deleted += int(status.split()[-1])
                    if records:
                        await self.conn.executemany(self._sql["replace"], records)
                    await seen_rows.save(self.conn, stream, seen)
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
        """Build the HNSW index once, after the bulk load."""
        await self.settle_vectors(stream)
        async with guarded(f"indexing {self.table.qualified}"):
            await build_index(self.conn, self.table)

    # --- rejects ------------------------------------------------------------------------

    def _check_strict(self, rejects: list[Reject]) -> None:
        pgstate.stop_if_strict(self.strict, rejects, items=True, fix=pgstate.ITEM_FIX)

    def _count(self, rejects: list[Reject]) -> None:
        pgstate.report_rejects(rejects, self.on_reject, items=True)
