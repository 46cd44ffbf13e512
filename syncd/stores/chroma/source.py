"""Chroma source: one collection, its log rows as changes, its items as snapshot chunks.

Position = ``embeddings_queue.seq_id`` of the collection. The log is per
collection (seq_ids are one global counter, reused after ``delete_collection``,
but only ever increasing within one live collection), so every collection is a
stream of its own, keyed by the collection's id.

Changes carry Chroma's operation in their image (``row["op"]``: add / update /
upsert) because Chroma's semantics are not a plain upsert: ADD of an existing id
and UPDATE of a missing id do nothing, UPDATE and UPSERT patch metadata (a null
value removes the key), an UPDATE without a vector keeps the vector. The sink
applies them as Chroma does.

Snapshot chunks are read from the metadata segment in one short read transaction
per chunk, with the seq_id of the last operation that took effect per item; the
vector comes from the log row of that operation (the bits the app wrote) while
the log holds it, else from the server. The sink records, for items changed
after the snapshot started, that seq_id, and skips older log rows for them
during catch-up: replaying Chroma operations over an image that already holds
them is not idempotent. See docs/chroma.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from syncd.errors import LogGap, SourceBusy, SourceError
from syncd.model import Batch, Change, Key, Op, Position
from syncd.ports import Chunk, Pending
from syncd.ports.collections import CollectionInfo, Doubt, Item, ItemPage, Vector, settle_vector
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.records import (
    DOCUMENT_KEY,
    OP_ADD,
    OP_DELETE,
    OP_NAMES,
    URI_KEY,
    Gap,
    LogRow,
    decode_vector,
)
from syncd.stores.chroma.server import ChromaServer

log = structlog.get_logger("syncd.source.chroma")
T = TypeVar("T")

COLUMNS = ("id", "embedding", "document", "metadata", "seq", "error")
"""Snapshot chunk rows: item id, float32 vector, document, metadata, seq_id of its last
effective operation, and why the item cannot be copied (None when it can)."""

PAGE_ATTEMPTS = 5


def decode_row(row: LogRow, obj: str) -> Change:
    """One log row as a Change; the image says which Chroma operation it is."""
    key = (row.id,)
    position = Position(row.seq)
    if row.op == OP_DELETE:
        return Change(Op.DELETE, obj, key, None, position, row.created_at)
    error: str | None = None
    metadata: dict[str, Any] = {}
    if row.op not in OP_NAMES:
        error = f"unknown Chroma operation code {row.op} (syncd reads the log of Chroma 1.5)"
    try:
        parsed = json.loads(row.metadata) if row.metadata else {}
        if isinstance(parsed, dict):
            metadata = parsed
        else:
            error = error or f"metadata is not a JSON object: {row.metadata[:60] if row.metadata else ''!r}"
    except ValueError as exc:
        error = error or f"metadata is not valid JSON: {exc}"
    has_document = DOCUMENT_KEY in metadata
    document = metadata.pop(DOCUMENT_KEY, None)
    metadata.pop(URI_KEY, None)
    vector, vector_error = decode_vector(row.vector, row.encoding)
    image = {"op": OP_NAMES.get(row.op, "invalid"), "embedding": vector, "document": document,
             "has_document": has_document, "metadata": metadata, "error": error or vector_error}
    return Change(Op.INSERT if row.op == OP_ADD else Op.UPDATE, obj, key, image, position, row.created_at)


class ChromaCollectionSource:
    """One collection of a Chroma persist directory, read through its log (and its server)."""

    def __init__(self, chroma_log: ChromaLog, server: ChromaServer | None, info: CollectionInfo) -> None:
        self.log = chroma_log
        self.server = server
        self.info = info
        self.gap: Gap | None = None
        """Set when changes() found log rows missing; the sink reconciles, then clears it."""
        self._check_gap = True
        self._event: asyncio.Event | None = None

    @property
    def object(self) -> str:
        return self.info.id

    def suspect_gap(self) -> None:
        """Check for purged rows on the next read (at start, and when Chroma may have purged)."""
        self._check_gap = True

    async def close(self) -> None:
        if self._event is not None:
            self.log.unsubscribe(self._event)
            self._event = None

    # --- positions -----------------------------------------------------------------------

    async def head(self) -> Position:
        return Position(await self.log.consistent_head(self.info))

    async def pending(self, after: Position) -> Pending:
        count, oldest, newest = await self.log.pending(self.info, after.offset)
        return Pending(count=count, oldest_committed_at=oldest, head=Position(max(newest, after.offset)))

    # --- snapshot ------------------------------------------------------------------------

    def snapshot_objects(self) -> Sequence[str]:
        return [self.info.id]

    async def count(self, obj: str) -> int:
        return await self.log.count(self.info)

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        """Chunks in id order; the next one is read (and prepared) while the caller writes this one."""
        start = str(after[0]) if after else None

        async def finish(page: ItemPage) -> Chunk | None:
            if not page.keys:
                return None
            last = page.last_key
            assert last is not None
            chunk = Chunk(obj, COLUMNS, [(i.id, i.vector, i.document, i.metadata, i.seq, i.error)
                                         for i in page.items], (last,))
            if prepare is not None:
                prepared = await asyncio.to_thread(prepare, chunk)
                chunk = Chunk(obj, COLUMNS, chunk.rows, chunk.last_key, prepared=prepared)
            return chunk

        async for chunk in self.read_ahead(start, rows, None, finish):
            if chunk is None:
                return
            yield chunk

    def pages(self, after: str | None, rows: int, *, changed_after: int | None) -> AsyncIterator[ItemPage]:
        """Item pages in id order with their vectors; the last page has fewer than *rows* keys."""
        async def identity(page: ItemPage) -> ItemPage:
            return page

        return self.read_ahead(after, rows, changed_after, identity)

    async def read_ahead(self, after: str | None, rows: int, changed_after: int | None,
                         then: Callable[[ItemPage], Awaitable[T]]) -> AsyncIterator[T]:
        """Pages passed through *then*; the next page is read (and passed) while the caller
        works on this one."""
        async def read(start: str | None) -> tuple[ItemPage, T]:
            page = await self._page(start, rows, changed_after)
            return page, await then(page)

        next_page = asyncio.ensure_future(read(after))
        try:
            while True:
                page, result = await next_page
                if len(page.keys) == rows:
                    next_page = asyncio.ensure_future(read(page.last_key))
                yield result
                if len(page.keys) < rows:
                    return
        finally:
            if not next_page.done():
                next_page.cancel()
                with contextlib.suppress(BaseException):
                    await next_page

    async def _page(self, after: str | None, rows: int, changed_after: int | None) -> ItemPage:
        keys: list[tuple[str, int]] = []

        async def read() -> list[Item]:
            nonlocal keys
            page = await self.log.items(self.info, after, rows, changed_after)
            keys = page.keys
            return page.items

        items = await self._with_vectors(read)
        return ItemPage(keys=keys, items=items)

    async def current_items(self, ids: Sequence[str]) -> dict[str, Item]:
        """The current images of *ids* (absent: the collection does not hold the id)."""
        async def read() -> list[Item]:
            return await self.log.items_by_ids(self.info, ids)

        return {i.id: i for i in await self._with_vectors(read)}

    async def _with_vectors(self, read: Callable[[], Awaitable[list[Item]]]) -> list[Item]:
        """Items from *read* (one read transaction) with their vectors filled in.

        The server may not return ids the metadata segment held when they were read.
        Those deleted since are left out: their deletion is a later log row. If any
        other is missing, everything is read again.
        """
        missing: list[Item] = []
        now: dict[str, int] = {}
        items: list[Item] = []
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            items = await read()
            missing = await self._fill_vectors(items)
            if not missing:
                return items
            now = await self.log.current_seqs(self.info, [i.id for i in missing])
            if all(i.id not in now for i in missing):
                break
            if attempt < PAGE_ATTEMPTS:
                await asyncio.sleep(0.1 * attempt)
        gone = {i.id for i in missing if i.id not in now}
        for item in missing:
            item.error = ("Chroma's metadata segment holds this id but its server returns no embedding "
                          "for it (its vector index lost it)")
        return [i for i in items if i.id not in gone]

    async def _fill_vectors(self, items: list[Item]) -> list[Item]:
        """Fetch from the server the vectors the log no longer holds; return the items it lacks."""
        need = [i for i in items if i.vector is None and i.error is None]
        if not need:
            return []
        if self.server is None:
            raise SourceError(
                f"collection {self.info.name!r}: Chroma purged the log rows of {len(need)} items, so their "
                "vectors must be read from a Chroma server: set source.chroma.url")
        got = await self.server.get_vectors(self.info.id, [i.id for i in need])
        missing: list[Item] = []
        for item in need:
            if item.id not in got:
                missing.append(item)
                continue
            vector = got[item.id]
            if vector is None:
                item.error = "Chroma's server returned no embedding for this id"
            else:
                item.vector = settle_vector(vector, item.logged)
        return missing

    # --- what Chroma's vector index holds (docs/chroma.md, "A live Chroma can disagree") --

    async def hnsw_saved(self) -> int:
        """The last operation in the HNSW index Chroma saved: a restart returns, for an item
        whose last change is at or below it, what the server returns now."""
        return await self.log.hnsw_saved(self.info)

    async def vector_doubts(self) -> dict[str, Doubt]:
        return await self.log.vector_doubts(self.info)

    async def server_vectors(self, ids: Sequence[str]) -> dict[str, Vector | None] | None:
        """The vectors the server returns for *ids* (absent: it does not hold the id); None
        without a server."""
        if self.server is None:
            return None
        return await self.server.get_vectors(self.info.id, ids)

    # --- changes -------------------------------------------------------------------------

    async def changes(self, after: Position, limit: int) -> Batch:
        check = self._check_gap
        rows, gap = await self.log.changes(self.info, after.offset, limit, check)
        if gap is not None:
            self.gap = gap
            raise LogGap(
                f"collection {self.info.name!r}: Chroma purged {gap.missing} log rows between seq_id "
                f"{gap.after} and {gap.before} before syncd read them; reconciling the collection from its "
                "current contents")
        if check:
            self._check_gap = False
        changes = [decode_row(r, self.info.id) for r in rows]
        return Batch(changes=changes, position=Position(rows[-1].seq) if rows else after)

    async def reconcile_start(self, checkpoint: Position, timeout: float = 10.0) -> Position:
        """The position a reconciliation from *checkpoint* is consistent at.

        Waits until Chroma has applied everything up to the checkpoint: before that, an
        item the sink holds may not be in the metadata segment yet, and would be deleted.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            applied = await self.log.applied(self.info)
            if applied is not None and applied >= checkpoint.offset:
                break
            if loop.time() >= deadline:
                raise SourceBusy(f"collection {self.info.name!r}: Chroma has not applied its log up to "
                                 f"seq_id {checkpoint.offset} yet (applied: {applied})")
            await asyncio.sleep(0.1)
        head = await self.log.consistent_head(self.info)
        return Position(max(head, checkpoint.offset))

    def gap_resolved(self) -> None:
        self.gap = None
        self._check_gap = False

    async def prune(self, upto: Position) -> int:
        return await self.log.prune(self.info, upto.offset)

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self._event = self.log.subscribe()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
