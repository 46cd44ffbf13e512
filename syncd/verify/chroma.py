"""What verify reads from Chroma's ``chroma.sqlite3`` in one read transaction, beside the items.

A settle round (and a settled count) needs, in one consistent view of Chroma:
the metadata segment's applied position ``a`` (``max_seq_id``), the items, and
the ids with a log row after ``b = min(c, a)`` where ``c`` is the stream's
checkpoint read just before from PostgreSQL. PostgreSQL holds the collection's
state at ``c``; Chroma's metadata segment holds its state at ``a``; an id with no
log row after ``b`` is the same in both. The log after ``b`` is complete when
``c >= a`` (nothing at or above ``a`` is ever pruned), when the checkpoint did not
move meanwhile (syncd prunes only what its checkpoint passed), or when a row at or
below ``c`` is still there (pruning removes a collection's oldest rows first).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from syncd.ports.collections import CollectionInfo, Item
from syncd.stores.chroma.catalog import read_images
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.records import seq_value


@dataclass(slots=True)
class View:
    """One read transaction's view of a collection."""

    applied: int
    """The metadata segment's ``max_seq_id`` (0 before the first operation)."""
    head: int
    """The newest log row of the collection (0 when the log holds none)."""
    lowest: int | None
    """The oldest log row of the collection still present."""
    items: list[Item] = field(default_factory=list)
    count: int = 0
    tail: set[str] = field(default_factory=set)
    """Ids with a log row after ``min(checkpoint, applied)``."""
    held: int = 0
    """How many of the tail ids the metadata segment holds."""

    def complete(self, checkpoint: int, checkpoint_after: int) -> bool:
        """Whether the tail read can be trusted (see the module docstring)."""
        return (checkpoint >= self.applied or checkpoint_after == checkpoint
                or (self.lowest is not None and self.lowest <= checkpoint))


def _view(log: ChromaLog, conn: sqlite3.Connection, info: CollectionInfo, checkpoint: int,
          ids: Sequence[str] | None, counting: bool) -> View:
    topic = log.topic(info.id)
    applied = log._applied(conn, info) or 0
    lo, hi = conn.execute("SELECT min(seq_id), max(seq_id) FROM embeddings_queue WHERE topic = ?",
                          (topic,)).fetchone()
    view = View(applied=applied, head=int(hi or 0), lowest=int(lo) if lo is not None else None)
    after = min(checkpoint, applied)
    if ids is not None:
        wanted = json.dumps(list(ids))
        rows = conn.execute(
            "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
            "AND embedding_id IN (SELECT value FROM json_each(?))",
            (info.metadata_segment, wanted)).fetchall()
        view.items = read_images(conn, topic, [(int(r[0]), r[1], seq_value(r[2])) for r in rows],
                                 log.has_arrays)
        view.tail = {r[0] for r in conn.execute(
            "SELECT DISTINCT id FROM embeddings_queue WHERE topic = ? AND seq_id > ? "
            "AND id IN (SELECT value FROM json_each(?))", (topic, after, wanted))}
    if counting:
        view.count = int(conn.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?",
                                      (info.metadata_segment,)).fetchone()[0])
        view.tail = {r[0] for r in conn.execute(
            "SELECT DISTINCT id FROM embeddings_queue WHERE topic = ? AND seq_id > ?", (topic, after))}
        if view.tail:
            view.held = int(conn.execute(
                "SELECT count(*) FROM embeddings WHERE segment_id = ? "
                "AND embedding_id IN (SELECT value FROM json_each(?))",
                (info.metadata_segment, json.dumps(sorted(view.tail)))).fetchone()[0])
    return view


async def read_view(log: ChromaLog, info: CollectionInfo, checkpoint: int, *,
                    ids: Sequence[str] | None = None, counting: bool = False) -> View:
    """The items *ids* (vectors from the log where it still holds them) and the tail, or the count."""
    return await log.call(lambda: log.read(lambda conn: _view(log, conn, info, checkpoint, ids, counting)))


async def head(log: ChromaLog, info: CollectionInfo) -> int:
    """The newest log row of the collection (0 when there is none)."""
    view = await read_view(log, info, 0)
    return max(view.head, view.applied)


async def sample_ids(log: ChromaLog, info: CollectionInfo, n: int) -> list[str]:
    """*n* ids drawn at random from the collection."""
    def read(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute(
            "SELECT embedding_id FROM embeddings WHERE segment_id = ? ORDER BY random() LIMIT ?",
            (info.metadata_segment, n))]

    return await log.call(lambda: log.read(read))


__all__ = ["View", "head", "read_view", "sample_ids"]
