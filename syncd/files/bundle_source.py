"""A bundle as a :class:`syncd.ports.Source`: the import runs syncd's own snapshot over it.

The stream (:class:`syncd.stream.Stream`) copies the bundle's chunks into the sink the live
snapshot uses, checkpointing each chunk's last key with it, so a killed import resumes
after the last committed chunk; its snapshot starts at the position the bundle recorded,
so `syncd run` afterwards continues the change log from there. The bundle has no changes
of its own: catch-up finds none, and the stream then builds indexes as it always does.

Every chunk file's sha256 is checked before any row of it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from syncd.files import bundle as bd
from syncd.model import Batch, Key, Position
from syncd.ports import Chunk, Pending
from syncd.ports.collections import CollectionInfo, Doubt, Hnsw, Item, Vector
from syncd.stores.chroma.source import COLUMNS as ITEM_COLUMNS


def chunk_rows(root: Path, entry: bd.ChunkEntry,
               columns: tuple[str, ...] | None) -> Iterator[tuple[Any, ...]]:
    """The decoded rows of one chunk file, JSONL or parquet (by its name, which the manifest's
    ``chunk_format`` fixes), its sha256 checked first: a table's *columns*, or (None) collection items."""
    if entry.file.endswith("." + bd.PARQUET):
        from syncd.files import parquet

        if columns is None:
            return parquet.read_items(root, entry)
        return parquet.read_table_rows(root, entry, columns)
    lines = bd.read_chunk(root, entry)
    if columns is None:
        return (_item(line) for line in lines)
    return (bd.decode_row(columns, line) for line in lines)


class BundleSource:
    """Objects of one kind (tables or collections) of a bundle; no change log."""

    def __init__(self, root: Path, objects: Sequence[dict[str, Any]], position: int,
                 columns: dict[str, tuple[str, ...]], key_index: dict[str, list[int]],
                 items: bool = False, workers: int = 1) -> None:
        self.root = root
        self.objects = {o["key"]: o for o in objects}
        self.position = Position(position)
        self.columns = columns
        self.key_index = key_index
        self.items = items
        """Collection items (else table rows)."""
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="syncd-import")
        self.source_id: str | None = None

    async def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def head(self) -> Position:
        return self.position

    def snapshot_objects(self) -> Sequence[str]:
        return list(self.objects)

    async def count(self, obj: str) -> int:
        return int(self.objects[obj]["rows"])

    def _chunks_from(self, obj: str, after: Key | None) -> tuple[list[bd.ChunkEntry], Key | None]:
        """The chunk entries still to load, and the key to skip up to within the first of them."""
        entries = [bd.ChunkEntry.from_json(c) for c in self.objects[obj]["chunks"]]
        if after is None:
            return entries, None
        for i, e in enumerate(entries):
            if tuple(bd.decode_value(v) for v in e.last_key) == tuple(after):
                return entries[i + 1:], None
        return entries, after

    def _load(self, obj: str, entry: bd.ChunkEntry, skip_to: Key | None, rows: int,
              prepare: Callable[[Chunk], Any] | None) -> list[Chunk] | None:
        """One chunk file, checked, decoded and cut into chunks of *rows* (on a worker thread);
        with *skip_to*, only the rows after that key (None: the file does not hold it)."""
        cols, idx = self.columns[obj], self.key_index[obj]
        decoded = list(chunk_rows(self.root, entry, None if self.items else cols))
        if skip_to is not None:
            at = next((n for n, r in enumerate(decoded) if tuple(r[i] for i in idx) == tuple(skip_to)), None)
            if at is None:
                return None
            decoded = decoded[at + 1:]
        out = []
        for start in range(0, len(decoded), rows):
            part = decoded[start:start + rows]
            chunk = Chunk(obj, cols, part, tuple(part[-1][i] for i in idx))
            if prepare is not None:
                chunk = Chunk(obj, cols, part, chunk.last_key, prepared=prepare(chunk))
            out.append(chunk)
        return out

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        """Chunks in bundle order; up to ``workers`` chunk files are read and prepared ahead."""
        entries, skip = self._chunks_from(obj, after)
        loop = asyncio.get_running_loop()
        while skip is not None and entries:  # resuming inside a chunk file: find it, in order
            entry, entries = entries[0], entries[1:]
            found = await loop.run_in_executor(self._pool, self._load, obj, entry, skip, rows, prepare)
            if found is not None:
                skip = None
                for chunk in found:
                    yield chunk
        ahead: list[asyncio.Future[list[Chunk] | None]] = []
        it = iter(entries)

        def more() -> None:
            while len(ahead) < self.workers:
                entry = next(it, None)
                if entry is None:
                    return
                ahead.append(loop.run_in_executor(self._pool, self._load, obj, entry, None, rows, prepare))

        more()
        try:
            while ahead:
                chunks = await ahead.pop(0)
                more()
                for chunk in chunks or ():
                    yield chunk
        finally:
            for f in ahead:
                f.cancel()
                with contextlib.suppress(BaseException):
                    await f

    async def changes(self, after: Position, limit: int) -> Batch:
        return Batch(changes=[], position=after)

    async def pending(self, after: Position) -> Pending:
        return Pending(count=0, oldest_committed_at=None, head=after)

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(0)

    async def prune(self, upto: Position) -> int:
        return 0


def table_source(root: Path, tables: Sequence[dict[str, Any]], position: int, workers: int) -> BundleSource:
    from syncd.files.bundle import table_from_json

    columns, keys = {}, {}
    objs = []
    for obj in tables:
        t = table_from_json(obj["schema"])
        cols = t.target_columns
        columns[t.name], keys[t.name] = cols, [cols.index(k) for k in t.pk]
        objs.append({**obj, "key": t.name})
    return BundleSource(root, objs, position, columns, keys, workers=workers)


def _item(line: bytes) -> tuple[Any, ...]:
    import json

    item_id, vector, document, metadata, seq = bd.decode_item(line)
    error = json.loads(line).get("error") if b'"error"' in line else None
    return (item_id, vector, document, metadata, seq, error)


def collection_info(obj: dict[str, Any]) -> CollectionInfo:
    h = obj.get("hnsw")
    return CollectionInfo(id=obj["id"], name=obj["name"], dimension=obj["dimension"], space=obj["space"],
                          tenant="", database="", metadata_segment="", vector_segment=None,
                          hnsw=Hnsw(**h) if h else None)


class _NoLog:
    async def key_types(self, info: CollectionInfo, keys: Sequence[str]) -> dict[str, set[str]]:
        return {}


class CollectionBundleSource(BundleSource):
    """One collection of a bundle, with what :class:`PgvectorSink` asks of a Chroma source."""

    def __init__(self, root: Path, obj: dict[str, Any], workers: int) -> None:
        self.info = collection_info(obj)
        super().__init__(root, [{**obj, "key": self.info.id}], int(obj["position"]),
                         {self.info.id: ITEM_COLUMNS}, {self.info.id: [0]}, items=True, workers=workers)
        self.gap = None
        self.log = _NoLog()

    async def vector_doubts(self) -> dict[str, Doubt]:
        return {}

    async def hnsw_saved(self) -> int:
        return self.position.offset

    async def server_vectors(self, ids: Sequence[str]) -> dict[str, Vector | None] | None:
        return None

    async def current_items(self, ids: Sequence[str]) -> dict[str, Item]:
        return {}

    def gap_resolved(self) -> None:
        self.gap = None
