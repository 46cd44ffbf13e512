"""The pgvector sink of a Chroma collection read over HTTP only (:mod:`syncd.stores.chroma.remote`):
the pgvector sink for the snapshot and the index, then each scan page applied by digest — items
whose content digest changed are fetched and written whole, ids the scan no longer saw are
deleted — with the checkpoint, in one transaction. Digests are kept in ``syncd.chroma_digest``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np
import structlog

from syncd.config import Config
from syncd.errors import FatalError, RowError
from syncd.model import Batch, Checkpoint, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, guarded, transaction, translate
from syncd.pg.state import Reject
from syncd.ports import ApplyResult, Chunk
from syncd.ports.collections import ScannedCollection, ScanPage, Vector, raw_image
from syncd.sql import STATE_SCHEMA
from syncd.stores.pgvector.changes import convertible
from syncd.stores.pgvector.plan import VectorTable
from syncd.stores.pgvector.sink import PgvectorSink
from syncd.stores.pgvector.table import ensure_state, prepare_table

log = structlog.get_logger("syncd.source.chroma")

FETCH_IDS = 1000
_DDL_LOCK = 0x73796E6364 + 1  # pg_advisory_xact_lock key of the digest table's DDL

DDL = f"""
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.chroma_digest (
    stream text NOT NULL,
    id     text COLLATE "C" NOT NULL,
    digest bytea NOT NULL,
    scan   bigint NOT NULL,
    PRIMARY KEY (stream, id)
);
"""


def digest(vector: Vector | None, document: str | None, metadata: Mapping[str, Any] | None) -> bytes:
    """What identifies an item's content: float32 bits, document, metadata (keys sorted)."""
    h = hashlib.blake2b(digest_size=16)
    bits = b"" if vector is None else np.asarray(vector, dtype="<f4").tobytes()
    doc = None if document is None else document.encode("utf-8", "surrogatepass")
    meta = json.dumps(dict(metadata or {}), sort_keys=True, ensure_ascii=False, default=str).encode()
    for part in (bits, doc, meta):
        h.update(struct.pack("<q", -1 if part is None else len(part)))
        h.update(part or b"")
    return h.digest()


async def open_remote_sink(config: Config, dsn: str, source: ScannedCollection, *,
                           on_reject: Callable[[int], None] | None = None,
                           busy: Callable[[str, str], contextlib.AbstractContextManager[None]] | None = None,
                           ) -> RemoteSink:
    conn = await connect(config.target, dsn)
    try:
        await ensure_state(conn)
        async with guarded("creating syncd.chroma_digest"), transaction(conn):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)  # streams start together
            await conn.execute(DDL)
        # the pgvector sink asks its source for ``info``, ``gap`` and ``log.key_types`` only
        shim: Any = source
        table = await prepare_table(conn, shim, config.target, reverse_capture=True)
    except BaseException:
        await close_quietly(conn)
        raise
    inner = PgvectorSink(conn, table, shim, strict=config.target.strict, chunk_rows=config.stream.chunk_rows,
                         on_reject=on_reject, busy=busy)
    return RemoteSink(inner, source, strict=config.target.strict, on_reject=on_reject)


class RemoteSink:
    """The pgvector sink for snapshot and index; scan pages applied by digest, with the checkpoint."""

    def __init__(self, inner: PgvectorSink, source: ScannedCollection, *, strict: bool,
                 on_reject: Callable[[int], None] | None) -> None:
        self.inner = inner
        self.conn: asyncpg.Connection = inner.conn
        self.table: VectorTable = inner.table
        self.source = source
        self.strict = strict
        self.on_reject = on_reject

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        return await self.inner.load_checkpoint(stream)

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        async with guarded("starting the snapshot"), transaction(self.conn):
            await self.inner.begin_snapshot(stream, state)
            await self.conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_digest WHERE stream = $1", stream)

    def prepare_chunk(self, chunk: Chunk) -> Any:
        return self.inner.prepare_chunk(chunk), [(r[0], digest(r[1], r[2], r[3])) for r in chunk.rows]

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        inner, digests = chunk.prepared if chunk.prepared is not None else self.prepare_chunk(chunk)
        async with guarded(f"copying into {self.table.qualified}"), transaction(self.conn):
            result = await self.inner.copy_chunk(
                stream, Chunk(chunk.object, chunk.columns, chunk.rows, chunk.last_key, inner), state)
            await self._save_digests(stream, digests, 0)
        return result

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        await self.inner.finish_snapshot(stream, state)

    async def after_catch_up(self, stream: str) -> None:
        await self.inner.after_catch_up(stream)

    # --- scans ---------------------------------------------------------------------------

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        """Write the page's items whose digest changed; at the end of a scan, settle unseen ids."""
        if not isinstance(batch, ScanPage):
            raise FatalError(f"stream {stream}: a server-only Chroma stream applies scan pages only")
        items = {str(ch.key[0]): ch.row for ch in batch.changes if ch.row is not None}
        written, rejected = await self._settle(stream, items, batch.scan, batch.position,
                                               checkpoint=not batch.final)
        deleted = 0
        if batch.final:
            after = ""
            while True:
                async with guarded("reading digests"):
                    ids = [r["id"] for r in await self.conn.fetch(
                        f"""SELECT id FROM {STATE_SCHEMA}.chroma_digest WHERE stream = $1 AND scan < $2
                            AND id > $3 ORDER BY id LIMIT {FETCH_IDS}""", stream, batch.scan, after)]
                if not ids:
                    break
                found = await self.source.fetch(ids)
                images = {i: {"embedding": it.vector, "document": it.document, "metadata": it.metadata}
                          for i, it in found.items()}
                gone = [i for i in ids if i not in found]
                w, r = await self._settle(stream, images, batch.scan, batch.position, checkpoint=False,
                                          gone=gone)
                written, rejected, deleted = written + w, rejected + r, deleted + len(gone)
                after = ids[-1]
            async with guarded("saving the checkpoint"), transaction(self.conn):
                await pgstate.save_checkpoint(self.conn, stream, batch.position, None)
            if deleted:
                log.info("scan end: ids gone from Chroma deleted", stream=stream, scan=batch.scan,
                         deleted=deleted)
        return ApplyResult(applied=written + deleted, rejected=rejected)

    async def _settle(self, stream: str, items: Mapping[str, Mapping[str, Any]], scan: int,
                      position: Position, *, checkpoint: bool, gone: Sequence[str] = ()) -> tuple[int, int]:
        """In one transaction: write *items* whose digest changed, delete *gone*, mark digests seen."""
        t = self.table
        digests = {i: digest(r["embedding"], r["document"], r["metadata"]) for i, r in items.items()}
        async with guarded("reading digests"):
            stored = {r["id"]: bytes(r["digest"]) for r in await self.conn.fetch(
                f"SELECT id, digest FROM {STATE_SCHEMA}.chroma_digest WHERE stream = $1 "
                "AND id = ANY($2::text[])", stream, list(items))}
        changed = [i for i in items if stored.get(i) != digests[i]]
        records: list[tuple[str, tuple[Any, ...]]] = []
        rejects: list[Reject] = []
        for i in changed:
            r = items[i]
            try:
                records.append((i, t.record(i, r["embedding"], r["document"], r["metadata"])))
            except RowError as exc:
                rejects.append(self._reject(i, r, exc.message, position))
        self._check_strict(rejects)
        refused = len(rejects)
        async with guarded(f"applying a scan page to {t.qualified}"), transaction(self.conn):
            await self._write(records, items, position, rejects)
            self._check_strict(rejects)
            if gone:
                ids = [(t.convert_id(i),) for i in gone if convertible(t, i)]
                await self.conn.executemany(t.delete_sql, ids)
                await self.conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_digest WHERE stream = $1 "
                                        "AND id = ANY($2::text[])", stream, list(gone))
            await self._save_digests(stream, list(digests.items()), scan)
            touched = [*changed, *gone]
            if touched and await self.conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.rejects WHERE stream = $1 "
                    "AND resolved_at IS NULL)", stream):
                await pgstate.resolve_rejects(self.conn, stream, t.collection, [[k] for k in touched])
            await pgstate.insert_rejects(self.conn, stream, rejects)
            if checkpoint:
                await pgstate.save_checkpoint(self.conn, stream, position, None)
        pgstate.report_rejects(rejects, self.on_reject, items=True)
        return len(records) - (len(rejects) - refused), len(rejects)

    async def _write(self, records: list[tuple[str, tuple[Any, ...]]], items: Mapping[str, Mapping[str, Any]],
                     position: Position, rejects: list[Reject]) -> None:
        """Full images, replacing rows; if PostgreSQL refuses one, one by one under savepoints."""
        sql = self.table.replace_sql
        try:
            async with transaction(self.conn):
                await self.conn.executemany(sql, [r for _, r in records])
            return
        except Exception as exc:
            err = translate(exc, f"writing into {self.table.qualified}")
            if not isinstance(err, RowError):
                raise err from exc
        for item_id, record in records:
            try:
                async with transaction(self.conn):
                    await self.conn.execute(sql, *record)
            except Exception as exc:
                err = translate(exc, f"writing into {self.table.qualified}")
                if not isinstance(err, RowError):
                    raise err from exc
                rejects.append(self._reject(item_id, items[item_id], err.message, position))

    async def _save_digests(self, stream: str, digests: Sequence[tuple[str, bytes]], scan: int) -> None:
        if digests:
            await self.conn.execute(
                f"""INSERT INTO {STATE_SCHEMA}.chroma_digest (stream, id, digest, scan)
                    SELECT $1, d.id, d.digest, $4 FROM unnest($2::text[], $3::bytea[]) AS d(id, digest)
                    ON CONFLICT (stream, id) DO UPDATE SET digest = EXCLUDED.digest, scan = EXCLUDED.scan""",
                stream, [i for i, _ in digests], [d for _, d in digests], scan)

    def _reject(self, item_id: str, row: Mapping[str, Any], error: str, position: Position) -> Reject:
        image = raw_image(item_id, row["embedding"], row["document"], row["metadata"])
        return Reject(self.table.collection, [item_id], image, error, position)

    def _check_strict(self, rejects: list[Reject]) -> None:
        pgstate.stop_if_strict(self.strict, rejects, items=True, fix=pgstate.ITEM_FIX)
