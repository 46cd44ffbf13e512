"""Chroma reached only over HTTP (``source.chroma.url`` without ``path``): changes found by re-scans.

The HTTP API has no change feed, so each collection is read whole, page by page
(``collection.get(limit, offset)``, in Chroma's insertion order), again and again:

- **Snapshot** (scan 0): pages copied with binary COPY, as for the other topologies.
- **Scan** *n*: every page is compared, in PostgreSQL, with ``syncd.chroma_digest``
  (stream, id → 16-byte BLAKE2b of the float32 vector bits, document and metadata, and
  the last scan that saw the id); items whose digest differs are written whole, and the
  page's digests, the rows and the checkpoint commit in one transaction.
- **End of a scan**: ids the scan did not see are read by id (a delete moves the items
  behind it one offset back, so a page can miss one); those Chroma still holds are
  compared like a page, the others deleted.

Position = ``scan × 10⁹ + items read in that scan`` (``… 999 999 999`` = scan done), so
a killed scan resumes at its last committed page. A new scan starts once the previous
one is older than ``max(stream.poll_interval, 2 × its duration)`` — at most half the time
goes to scanning — or at once when ``collection.count()`` changes. Chroma 1.5.9 has no
cheaper fingerprint: a collection's ``version`` and ``log_position`` stay 0 on a local
server. See docs/chroma.md, "Server only".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import structlog

from syncd.config import Config
from syncd.errors import FatalError, RowError, SourceError, SourceUnavailable, StrictModeStop
from syncd.model import Batch, Change, Checkpoint, Key, Op, Position, SnapshotState
from syncd.ports import ApplyResult, Chunk, Pending
from syncd.stores.chroma.log import SPACES, CollectionInfo, Hnsw, Vector
from syncd.stores.chroma.server import GET_BATCH, ChromaServer, _as_float32
from syncd.stores.chroma.source import COLUMNS
from syncd.stores.pgvector.plan import VectorTable, raw_image
from syncd.stores.pgvector.sink import PgvectorSink, ensure_state, prepare_table
from syncd.stores.postgres import state as pgstate
from syncd.stores.postgres.connect import close_quietly, connect, transaction, translate
from syncd.stores.postgres.sink import guarded
from syncd.stores.postgres.state import STATE_SCHEMA, Reject

log = structlog.get_logger("syncd.source.chroma")

SCAN = 10**9
"""Positions per scan: ``scan * SCAN + items read``."""
DONE = SCAN - 1
"""Offset part of a position whose scan is complete."""
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


@dataclass(frozen=True, slots=True)
class RemoteItem:
    id: str
    vector: Vector | None
    document: str | None
    metadata: dict[str, Any]


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


def _space(model: Any) -> str:
    config = getattr(model, "configuration_json", None) or {}
    for kind in ("hnsw", "spann"):
        space = (config.get(kind) or {}).get("space") if isinstance(config, dict) else None
        if space in SPACES:
            return str(space)
    space = (getattr(model, "metadata", None) or {}).get("hnsw:space")
    return str(space) if space in SPACES else "l2"


def _hnsw(model: Any) -> Hnsw | None:
    config = getattr(model, "configuration_json", None)
    return Hnsw.parse(config.get("hnsw")) if isinstance(config, dict) else None


class RemoteServer(ChromaServer):
    """A Chroma server read through ``HttpClient`` only: catalog, counts, pages, items by id."""

    def _catalog(self) -> list[CollectionInfo]:
        self._list()
        out = []
        for cid, col in sorted(self._collections.items(), key=lambda c: c[1].name):
            model = col.get_model()
            out.append(CollectionInfo(
                id=cid, name=col.name, dimension=int(model.dimension) if model.dimension else None,
                space=_space(model), tenant=self.tenant, database=self.database, metadata_segment="",
                vector_segment=None, hnsw=_hnsw(model)))
        return out

    async def catalog(self) -> list[CollectionInfo]:
        return await self.call(self._catalog)

    def _col(self, cid: str) -> Any:
        col = self._collections.get(cid)
        if col is None:
            self._list()
            col = self._collections.get(cid)
            if col is None:
                raise SourceUnavailable(f"Chroma server {self.address}: collection {cid} is gone (deleted; "
                                        "its stream stops when the catalog is read again)")
        return col

    def _items(self, got: Mapping[str, Any]) -> list[RemoteItem]:
        embeddings = got["embeddings"] if got["embeddings"] is not None else [None] * len(got["ids"])
        rows = zip(got["ids"], embeddings, got["documents"], got["metadatas"], strict=True)
        return [RemoteItem(str(i), None if e is None else _as_float32(e), d, dict(m or {}))
                for i, e, d, m in rows]

    def _page(self, cid: str, offset: int, limit: int) -> list[RemoteItem]:
        got = self._col(cid).get(limit=limit, offset=offset, include=["embeddings", "documents", "metadatas"])
        return self._items(got)

    async def page(self, cid: str, offset: int, limit: int) -> list[RemoteItem]:
        """*limit* items from *offset*, in Chroma's order (insertion order on a local server)."""
        return await self.call(self._page, cid, offset, limit)

    def _fetch(self, cid: str, ids: Sequence[str]) -> list[RemoteItem]:
        col = self._col(cid)
        out: list[RemoteItem] = []
        for i in range(0, len(ids), GET_BATCH):
            out += self._items(col.get(ids=list(ids[i:i + GET_BATCH]),
                                       include=["embeddings", "documents", "metadatas"]))
        return out

    async def fetch(self, cid: str, ids: Sequence[str]) -> dict[str, RemoteItem]:
        """The items Chroma holds among *ids*."""
        return {i.id: i for i in await self.call(self._fetch, cid, list(ids))}

    def _count(self, cid: str) -> int:
        return int(self._col(cid).count())

    async def count(self, cid: str) -> int:
        return await self.call(self._count, cid)

    def _key_types(self, cid: str, keys: Sequence[str]) -> dict[str, set[str]]:
        col, out, offset = self._col(cid), {k: set[str]() for k in keys}, 0
        names = {bool: "bool", int: "int", float: "float", str: "str", list: "array"}
        while True:
            metas = col.get(limit=5000, offset=offset, include=["metadatas"])["metadatas"]
            for meta in metas:
                for k in keys:
                    value = (meta or {}).get(k)
                    if value is not None and type(value) in names:
                        out[k].add(names[type(value)])
            if len(metas) < 5000:
                return out
            offset += len(metas)


class RemoteTopology:
    """``url`` only: the server, and nothing on disk."""

    private = None

    def __init__(self, server: RemoteServer, config: Config) -> None:
        self.server = server
        self.config = config

    @classmethod
    async def open(cls, config: Config) -> RemoteTopology:
        c = config.chroma
        assert c is not None and c.url is not None
        server = await RemoteServer.connect(c.url, c.tenant, c.database)
        assert isinstance(server, RemoteServer)
        log.info("Chroma server only: changes are found by re-scanning each collection",
                 url=str(server.address))
        return cls(server, config)

    async def catalog(self) -> list[CollectionInfo]:
        return await self.server.catalog()

    def source(self, info: CollectionInfo) -> RemoteCollectionSource:
        return RemoteCollectionSource(self.server, info, self.config.stream.poll_interval)

    async def close(self) -> None:
        await self.server.close()


class _KeyTypes:
    """What :func:`prepare_table` asks of a source's log, answered from the server."""

    def __init__(self, server: RemoteServer) -> None:
        self.server = server

    async def key_types(self, info: CollectionInfo, keys: Sequence[str]) -> dict[str, set[str]]:
        return await self.server.call(self.server._key_types, info.id, list(keys))


@dataclass(frozen=True, slots=True)
class ScanPage(Batch):
    """One page of a scan: the items read (full images), and whether it ends the scan."""

    scan: int = 0
    final: bool = False


class RemoteCollectionSource:
    """One collection of a Chroma server: a snapshot, then scans (module docstring)."""

    gap = None  # no log, so nothing can be purged from it

    def __init__(self, server: RemoteServer, info: CollectionInfo, min_interval: float) -> None:
        self.server = server
        self.info = info
        self.log = _KeyTypes(server)
        self.min_interval = max(0.1, min_interval)
        self._started: float | None = None  # monotonic start of the scan in progress
        self._last_start: float | None = None  # ... and of the last complete one
        self._last_wall: float | None = None
        self._duration = 0.0
        self._count: int | None = None
        self._count_changed = False

    @property
    def object(self) -> str:
        return self.info.id

    async def close(self) -> None:
        return None

    async def head(self) -> Position:
        return Position(DONE)  # the snapshot is scan 0; scan 1 starts after it

    def snapshot_objects(self) -> Sequence[str]:
        return [self.info.id]

    async def count(self, obj: str) -> int:
        return await self.server.count(self.info.id)

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        """Pages from offset ``after[0]``; the next one is read while the caller writes this one."""
        async def read(offset: int) -> Chunk:
            items = await self.server.page(self.info.id, offset, rows)
            chunk = Chunk(obj, COLUMNS, [(i.id, i.vector, i.document, i.metadata, 0, None) for i in items],
                          (offset + len(items),))
            if prepare is not None and items:
                chunk = Chunk(obj, COLUMNS, chunk.rows, chunk.last_key,
                              prepared=await asyncio.to_thread(prepare, chunk))
            return chunk

        pending = asyncio.ensure_future(read(int(after[0]) if after else 0))
        try:
            while True:
                chunk = await pending
                if len(chunk.rows) == rows:
                    pending = asyncio.ensure_future(read(int(chunk.last_key[0])))
                if chunk.rows:
                    yield chunk
                if len(chunk.rows) < rows:
                    return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    # --- scans ---------------------------------------------------------------------------

    def _due(self) -> bool:
        if self._last_start is None or self._count_changed:
            return True
        return time.monotonic() - self._last_start >= max(self.min_interval, 2 * self._duration)

    async def changes(self, after: Position, limit: int) -> Batch:
        scan, offset = divmod(after.offset, SCAN)
        if offset == DONE:
            if not self._due():
                return Batch(changes=[], position=after)
            scan, offset = scan + 1, 0
            self._started, self._count_changed = time.monotonic(), False
            self._count = await self.server.count(self.info.id)
        elif self._started is None:  # resuming a scan a previous run began
            self._started = time.monotonic()
        items = await self.server.page(self.info.id, offset, limit)
        final = len(items) < limit
        if offset + len(items) >= DONE:
            raise SourceError(f"collection {self.info.name!r} holds more than {DONE} items: syncd's "
                              "server-only scans count positions up to that")
        position = Position(scan * SCAN + (DONE if final else offset + len(items)))
        changes = [Change(Op.UPDATE, self.info.id, (i.id,), {"op": "scan", "embedding": i.vector,
                                                             "document": i.document, "metadata": i.metadata,
                                                             "error": None}, position) for i in items]
        if final and self._started is not None:
            self._duration = time.monotonic() - self._started
            self._last_start, self._started = self._started, None
            self._last_wall = time.time() - self._duration
            log.debug("scan read", collection=self.info.name, scan=scan, seconds=round(self._duration, 3))
        return ScanPage(changes=changes, position=position, scan=scan, final=final)

    async def fetch(self, ids: Sequence[str]) -> dict[str, RemoteItem]:
        return await self.server.fetch(self.info.id, ids)

    async def pending(self, after: Position) -> Pending:
        """Between scans nothing is known to be pending; during one, what it has not read yet."""
        offset = after.offset % SCAN
        if offset == DONE and not self._count_changed:
            return Pending(count=0, oldest_committed_at=None, head=after)
        left = max(1, (self._count or 0) - (0 if offset == DONE else offset))
        return Pending(count=left, oldest_committed_at=self._last_wall, head=after)

    async def wait(self, timeout: float) -> None:
        """Until the next scan is due (or *timeout*); a changed item count makes it due at once."""
        deadline = time.monotonic() + timeout
        while not self._due():
            assert self._last_start is not None
            due_at = self._last_start + max(self.min_interval, 2 * self._duration)
            await asyncio.sleep(max(0.0, min(deadline, due_at) - time.monotonic()))
            if self._due() or time.monotonic() >= deadline:
                break
        if not self._due():
            with contextlib.suppress(SourceUnavailable):
                self._count_changed = await self.server.count(self.info.id) != self._count

    async def prune(self, upto: Position) -> int:
        return 0

    async def vector_doubts(self) -> dict[str, Any]:
        """None: with no log to read, no UPDATE of a missing id can be seen (the scans copy what
        the server returns, which is already the truth a restarted Chroma serves)."""
        return {}


# --- the sink side --------------------------------------------------------------------------

async def open_remote_sink(config: Config, dsn: str, source: RemoteCollectionSource, *,
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
        table = await prepare_table(conn, shim, config.target)
    except BaseException:
        await close_quietly(conn)
        raise
    inner = PgvectorSink(conn, table, shim, strict=config.target.strict, chunk_rows=config.stream.chunk_rows,
                         on_reject=on_reject, busy=busy)
    return RemoteSink(inner, source, strict=config.target.strict, on_reject=on_reject)


class RemoteSink:
    """The pgvector sink for snapshot and index; scan pages applied by digest, with the checkpoint."""

    def __init__(self, inner: PgvectorSink, source: RemoteCollectionSource, *, strict: bool,
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
                ids = [(t.convert_id(i),) for i in gone if _convertible(t, i)]
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
        if rejects:
            for rj in rejects:
                log.warning("item rejected", collection=rj.object, id=rj.key[0], error=rj.error)
            if self.on_reject:
                self.on_reject(len(rejects))
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
        if self.strict and rejects:
            r = rejects[0]
            raise StrictModeStop(f"strict mode: collection {r.object!r}, id {r.key[0]!r}: {r.error}; fix the "
                                 "item or the mapping ([[target.collections]], target.column_types), or set "
                                 "target.strict = false to quarantine such items")


def _convertible(t: VectorTable, item_id: str) -> bool:
    try:
        t.convert_id(item_id)
    except RowError:
        return False
    return True
