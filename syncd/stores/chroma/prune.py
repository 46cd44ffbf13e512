"""Pruning Chroma's log: the rows of a collection syncd has checkpointed past, in short batches
that give way to Chroma's writer (:meth:`syncd.stores.chroma.log.ChromaLog.prune`)."""

from __future__ import annotations

import sqlite3

from syncd.ports.collections import CollectionInfo
from syncd.stores.chroma.records import seq_value

PRUNE_BATCH = 2000


def prune_rows(conn: sqlite3.Connection, info: CollectionInfo, topic: str, upto: int) -> int:
    """Delete the collection's rows at or below *upto* that Chroma itself no longer needs:
    below the ``max_seq_id`` of both its segments (what Chroma's own purge deletes), so a
    restarting Chroma can still replay what its HNSW index has not saved."""
    if info.vector_segment is None:
        return 0
    floors = dict(conn.execute(
        "SELECT segment_id, seq_id FROM max_seq_id WHERE segment_id IN (?, ?)",
        (info.metadata_segment, info.vector_segment)).fetchall())
    if len(floors) < 2 or any(v is None for v in floors.values()):
        return 0
    below = min(upto + 1, *(seq_value(v) for v in floors.values()))
    total = 0
    # give way at once when Chroma is writing: this thread also serves every stream's reads
    conn.execute("PRAGMA busy_timeout = 50")
    try:
        while True:
            try:
                cur = conn.execute(
                    "DELETE FROM embeddings_queue WHERE seq_id IN (SELECT seq_id FROM embeddings_queue "
                    "WHERE topic = ? AND seq_id < ? ORDER BY seq_id LIMIT ?)",
                    (topic, below, PRUNE_BATCH))
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return total  # prune next time
                raise
            total += cur.rowcount
            if cur.rowcount < PRUNE_BATCH:
                return total
    finally:
        conn.execute("PRAGMA busy_timeout = 5000")
