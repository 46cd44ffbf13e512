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
server. See docs/chroma.md, "Server only". This module reads; the writing side (digests,
scan pages applied) is :mod:`syncd.stores.pgvector.remote_sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import structlog

from syncd.config import Config
from syncd.errors import SourceError, SourceUnavailable
from syncd.model import Batch, Change, Key, Op, Position
from syncd.ports import Chunk, Pending
from syncd.ports.collections import CollectionInfo, Hnsw, RemoteItem, ScanPage
from syncd.stores.chroma.records import SPACES
from syncd.stores.chroma.server import GET_BATCH, ChromaServer, as_float32
from syncd.stores.chroma.source import COLUMNS

log = structlog.get_logger("syncd.source.chroma")

SCAN = 10**9
"""Positions per scan: ``scan * SCAN + items read``."""
DONE = SCAN - 1
"""Offset part of a position whose scan is complete."""

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
        return [RemoteItem(str(i), None if e is None else as_float32(e), d, dict(m or {}))
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
