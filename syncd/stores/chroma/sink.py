"""Chroma sink for one collection (reverse direction: pgvector → Chroma).

Changes come from :mod:`syncd.stores.pgvector.source` in the forward stream's image shape
(``op``, ``embedding``, ``document``, ``has_document``, ``metadata``, ``error``), each
the full row as PostgreSQL holds it. A batch is applied as the final state of each
id it touches:

1. the ids' current images are read from Chroma's metadata segment and log
   (``chroma.sqlite3``, read-only: vectors are the bits written), and ids Chroma
   already holds exactly as wanted are left alone — so replaying a batch after a
   crash writes nothing twice;
2. an *echo record* per write (collection, id, digest of what is sent, or
   ``delete``, and the changelog position it comes from, so that a replayed batch
   records nothing twice) is committed in ``syncd.chroma_echo``; the forward sink
   skips the Chroma log row of that write and deletes the record
   (:mod:`syncd.pg.echo`);
3. the writes go through the chromadb ``HttpClient`` of the configured server (or
   the private ``chroma run`` syncd starts for a persist directory): deletes, then
   upserts whose metadata sets every key the row holds and removes (``None``) the
   keys it no longer holds; a document removed in PostgreSQL is a delete + upsert.
   While the Chroma fence is up, each write passes it with tickets
   (:mod:`syncd.stores.chroma.fence`);
4. after Chroma acknowledged, the checkpoint (and the rejects) commit in PostgreSQL.

Items Chroma refuses (bad metadata value, dimension, NaN) go to ``syncd.rejects``
with the raw image and the error. Vectors are sent as float32; from a ``halfvec``
table they are the float16 values PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import numpy as np
import structlog

from syncd.errors import (
    FatalError,
    RowError,
    SourceUnavailable,
    SyncdError,
)
from syncd.model import Batch, Change, Checkpoint, Op, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, guarded, transaction
from syncd.pg.echo import (
    DELETED,
    ECHO_DDL,
    Echo,
    echo_digest,
    forget_echoes,
    record_echoes,
)
from syncd.pg.state import Reject
from syncd.ports import ApplyResult, Chunk
from syncd.ports.collections import CollectionInfo, Item, MappedTable, raw_image
from syncd.stores.chroma import fence as chroma_fence
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.records import OP_DELETE, OP_UPSERT
from syncd.stores.chroma.writer import ChromaWriter, Write, is_unavailable

log = structlog.get_logger("syncd.sink.chroma")
T = TypeVar("T")

WRITE_BATCH = 500


async def set_checkpoint(conn: asyncpg.Connection, stream: str, position: Position) -> None:
    """Where a reverse stream starts (the changelog head recorded at the cutover's flip)."""
    await pgstate.ensure(conn)
    await pgstate.save_checkpoint(conn, stream, position, None)


# --- planning a batch ---------------------------------------------------------------------------

@dataclass(slots=True)
class Plan:
    deletes: list[tuple[str, Change]] = field(default_factory=list)
    upserts: list[Write] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    unchanged: int = 0

    def echoes(self) -> list[Echo]:
        return ([(i, DELETED, ch.position.offset) for i, ch in self.deletes]
                + [(w.id, w.digest, w.change.position.offset) for w in self.upserts])


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    for key, value in metadata.items():
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise RowError(f"metadata key {key!r} holds an empty list, which Chroma cannot store")
        for v in values:
            if isinstance(v, dict | list):
                raise RowError(f"metadata key {key!r} holds a nested JSON value; Chroma metadata values "
                               "are strings, numbers, booleans or lists of one of them")
            if isinstance(v, float) and not math.isfinite(v):
                raise RowError(f"metadata key {key!r} = {v!r} is not a finite number")
            if not isinstance(v, str | int | float | bool) and v is not None:
                raise RowError(f"metadata key {key!r} holds {type(v).__name__}, which Chroma cannot store")


def _vector(value: Any, dim: int | None) -> np.ndarray:
    if value is None:
        raise RowError("the row has no embedding")
    vec = np.asarray(value, dtype="<f4")
    if vec.ndim != 1:
        raise RowError(f"the embedding is not a vector (shape {vec.shape})")
    if dim is not None and len(vec) != dim:
        raise RowError(f"embedding has {len(vec)} dimensions, but the Chroma collection holds {dim}")
    if not np.isfinite(vec).all():
        raise RowError("embedding has NaN or infinite values")
    return vec


def _same_metadata(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    def norm(m: Mapping[str, Any]) -> str:
        return json.dumps(dict(m), sort_keys=True)

    return norm(current) == norm(wanted)


class ChromaSink:
    """Writes one collection's changes from its pgvector table into Chroma; the checkpoint lives
    in PostgreSQL and commits after Chroma acknowledged the batch."""

    def __init__(self, conn: asyncpg.Connection, writer: ChromaWriter, chroma_log: ChromaLog,
                 info: CollectionInfo, table: MappedTable, persist_dir: Path | None, *, strict: bool,
                 on_reject: Callable[[int], None] | None = None,
                 after_write: Callable[[Batch], Awaitable[None]] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.conn = conn
        self.on_close = on_close
        self.writer = writer
        self.log = chroma_log
        self.info = info
        self.table = table
        self.persist_dir = persist_dir
        self.strict = strict
        self.on_reject = on_reject
        self.after_write = after_write
        """Test hook: runs after Chroma acknowledged a batch, before its checkpoint commits."""
        self._topic: str | None = None

    async def ensure_schema(self) -> None:
        async with guarded("creating syncd's state tables"), transaction(self.conn):
            # the reverse streams of several collections start together: one DDL run at a time
            # (two CREATE TABLE IF NOT EXISTS of one name race on PostgreSQL's catalog)
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", pgstate.DDL_LOCK)
            await pgstate.ensure(self.conn)
            await self.conn.execute(ECHO_DDL)

    async def ping(self) -> None:
        async with guarded("checking the target"):
            await self.conn.fetchval("SELECT 1")
        try:
            await self.writer.call(self.writer.heartbeat)
        except Exception as exc:
            raise SourceUnavailable(f"Chroma server {self.writer.address}: {exc}") from exc

    async def close(self) -> None:
        await close_quietly(self.conn)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            await on_close()

    # --- checkpoint ---------------------------------------------------------------------------

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        async with guarded("reading the checkpoint"):
            checkpoint = await pgstate.load_checkpoint(self.conn, stream)
        if checkpoint is None:
            raise FatalError(f"stream {stream}: no start position; a reverse stream starts at the position "
                             "`syncd cutover` records when it flips the app (run the cutover, or set it with "
                             "syncd.stores.chroma.sink.set_checkpoint)")
        return checkpoint

    async def set_checkpoint(self, stream: str, position: Position) -> None:
        async with guarded("setting the checkpoint"), transaction(self.conn):
            await set_checkpoint(self.conn, stream, position)

    # --- no snapshot in this direction --------------------------------------------------------

    def _no_snapshot(self) -> FatalError:
        return FatalError(f"collection {self.info.name!r}: the reverse stream has no snapshot; it streams "
                          "from the position recorded at the cutover")

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        raise self._no_snapshot()

    def prepare_chunk(self, chunk: Chunk) -> Any:
        raise self._no_snapshot()

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        raise self._no_snapshot()

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        raise self._no_snapshot()

    async def after_catch_up(self, stream: str) -> None:
        return None

    # --- applying -------------------------------------------------------------------------------

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        """Bring each id of *batch* to its last image; checkpoint once Chroma has it."""
        plan = await self._plan(stream, batch)
        self._check_strict(plan.rejects)
        echoes = plan.echoes()
        if echoes:
            async with guarded("recording echo records"), transaction(self.conn):
                await record_echoes(self.conn, self.info.id, echoes)
        failed = await self._write(plan) if echoes else []
        if self.after_write is not None:
            await self.after_write(batch)
        rejects = plan.rejects + [self._reject(stream, ch, err) for ch, err in failed]
        self._check_strict(rejects)
        async with guarded("committing the checkpoint"), transaction(self.conn):
            unwritten = self._failed_echoes(plan, failed)
            await forget_echoes(self.conn, self.info.id,
                                [(str(ch.key[0]), d, ch.position.offset) for ch, d in unwritten])
            await pgstate.resolve_rejects(self.conn, stream, self.info.name,
                                          [[i] for i in self._written_ids(plan, failed)])
            await pgstate.insert_rejects(self.conn, stream, rejects)
            await pgstate.save_checkpoint(self.conn, stream, batch.position, None)
        pgstate.report_rejects(rejects, self.on_reject, items=True)
        written = len(echoes) - len(failed)
        return ApplyResult(applied=written + plan.unchanged, rejected=len(rejects))

    @staticmethod
    def _failed_echoes(plan: Plan, failed: list[tuple[Change, str]]) -> list[tuple[Change, str]]:
        bad = {str(ch.key[0]) for ch, _ in failed}
        out = [(ch, DELETED) for i, ch in plan.deletes if i in bad]
        return out + [(w.change, w.digest) for w in plan.upserts if w.id in bad]

    @staticmethod
    def _written_ids(plan: Plan, failed: list[tuple[Change, str]]) -> list[str]:
        bad = {str(ch.key[0]) for ch, _ in failed}
        ids = {i for i, _ in plan.deletes} | {w.id for w in plan.upserts}
        return sorted(ids - bad)

    async def _plan(self, stream: str, batch: Batch) -> Plan:
        last: dict[str, Change] = {}
        for ch in batch.changes:  # full images: only each id's last change matters
            last.pop(str(ch.key[0]), None)
            last[str(ch.key[0])] = ch
        plan = Plan()
        if not last:
            return plan
        current = {i.id: i for i in await self.log.items_by_ids(self.info, list(last))}
        for item_id, ch in last.items():
            try:
                self._plan_one(plan, item_id, ch, current.get(item_id))
            except RowError as exc:
                plan.rejects.append(self._reject(stream, ch, exc.message))
        return plan

    def _plan_one(self, plan: Plan, item_id: str, ch: Change, item: Item | None) -> None:
        row = ch.row
        if ch.op is Op.DELETE or row is None:
            if item is None:
                plan.unchanged += 1
            else:
                plan.deletes.append((item_id, ch))
            return
        if row.get("error"):
            raise RowError(str(row["error"]))
        vector = _vector(row.get("embedding"), self.info.dimension)
        has_document = bool(row.get("has_document"))
        document = row.get("document") if has_document else None
        wanted = {k: v for k, v in (row.get("metadata") or {}).items() if v is not None}
        _check_metadata(wanted)
        # keys the table knows about: all of them with a metadata column, else the lifted ones
        known = None if self.table.metadata_col else self.table.mapped_keys
        if item is not None:
            held = item.metadata if known is None else {k: v for k, v in item.metadata.items() if k in known}
            same_vector = item.vector is not None and item.vector.tobytes() == vector.tobytes()
            same_document = not has_document or item.document == document
            if same_vector and same_document and _same_metadata(held, wanted):
                plan.unchanged += 1
                return
            if has_document and document is None and item.document is not None:
                plan.deletes.append((item_id, ch))  # Chroma cannot remove a document: write the item anew
                item = None
        metadata: dict[str, Any] = dict(wanted)
        if item is not None:
            for k in item.metadata:
                if k not in wanted and (known is None or k in known):
                    metadata[k] = None
        write = Write(item_id, vector, document, metadata or None, ch)
        write.digest = echo_digest(vector.tobytes(), document, metadata)
        plan.upserts.append(write)

    async def _write(self, plan: Plan) -> list[tuple[Change, str]]:
        """Send *plan* to Chroma; return the changes Chroma refused, with its error."""
        if self._topic is None:
            self._topic = await self.log.call(self.log.topic, self.info.id)
        tickets = [chroma_fence.Ticket(self._topic, i, OP_DELETE, None) for i, _ in plan.deletes]
        tickets += [chroma_fence.Ticket(self._topic, w.id, OP_UPSERT, w.vector.tobytes())
                    for w in plan.upserts]
        token = await self._gate(chroma_fence.open_gate, tickets)
        failed: list[tuple[Change, str]] = []
        try:
            if plan.deletes:
                ids = [i for i, _ in plan.deletes]
                for start in range(0, len(ids), WRITE_BATCH):
                    await self._send(self.writer.delete, [ids[start:start + WRITE_BATCH]],
                                     [c for _, c in plan.deletes[start:start + WRITE_BATCH]], failed)
            groups: dict[tuple[bool, bool], list[Write]] = {}
            for w in plan.upserts:
                groups.setdefault((w.document is not None, w.metadata is not None), []).append(w)
            for writes in groups.values():
                for start in range(0, len(writes), WRITE_BATCH):
                    part = writes[start:start + WRITE_BATCH]
                    await self._send(self.writer.upsert, [part], [w.change for w in part], failed,
                                     split=lambda p: [[[w]] for w in p[0]])
        finally:
            await self._gate(chroma_fence.close_gate, token)
        return failed

    async def _gate(self, fn: Callable[..., T], arg: Any) -> T | None:
        if self.persist_dir is None:
            return None
        return await asyncio.to_thread(fn, self.persist_dir, arg)

    async def _send(self, fn: Callable[..., None], args: list[Any], changes: list[Change],
                    failed: list[tuple[Change, str]],
                    split: Callable[[list[Any]], list[list[Any]]] | None = None) -> None:
        """One Chroma call; if Chroma refuses it, the items one by one (the refused ones fail)."""
        try:
            await self.writer.call(fn, self.info.id, *args)
            return
        except SyncdError:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise SourceUnavailable(f"writing to Chroma at {self.writer.address}: {exc}") from exc
            if len(changes) == 1:
                failed.append((changes[0], f"Chroma refused the item: {type(exc).__name__}: {exc}"))
                return
        parts = split(args) if split else [[[i]] for i in args[0]]
        for part, ch in zip(parts, changes, strict=True):
            await self._send(fn, part, [ch], failed)

    # --- rejects --------------------------------------------------------------------------------

    def _reject(self, stream: str, ch: Change, error: str) -> Reject:
        row = ch.row or {}
        image = raw_image(str(ch.key[0]), row.get("embedding"), row.get("document"), row.get("metadata"),
                          row.get("op", "delete"))
        return Reject(self.info.name, [str(ch.key[0])], image, error, ch.position)

    def _check_strict(self, rejects: list[Reject]) -> None:
        pgstate.stop_if_strict(self.strict, rejects, items=True, what="Chroma cannot take the row: ",
                               fix="fix the row in PostgreSQL, or set target.strict = false to "
                                   "quarantine such rows")
