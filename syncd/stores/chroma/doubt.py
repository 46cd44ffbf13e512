"""Items whose vector Chroma's HNSW index may hold against its own log (chromadb 1.5.9).

Chroma applies each write's log rows to its HNSW index in memory, and saves the index (and
its ``max_seq_id``) every ``sync_threshold`` rows. The writer,
``LocalHnswSegmentWriter::apply_log_chunk`` (rust/segment/src/local_hnsw.rs, tag 1.5.9),
skips rows at or below its in-memory ``last_seen_seq_id`` and then sets that to the largest
seq_id it applied — ``u64::MIN``, 0, when every row it was given was already applied.
That happens when a backfill finds nothing new: the first read of a collection in a Chroma
process after writes (``LocalExecutor::try_backfill_collection``), or two writes committed
before either's backfill ran. The next write then applies again every row above the saved
position. Re-applied, an UPDATE that found its id missing the first time finds it — created
since by an ADD — and sets its vector; the ADD, re-applied, does nothing. The index then
holds the UPDATE's vector while the log and the metadata segment say the ADD's; once the
index is saved past the ADD, a restarted Chroma returns the UPDATE's vector too.

Only that pattern diverges: per id, an UPDATE carrying a vector while the id is missing,
then the ADD that creates it, with no DELETE, UPSERT or effective vector UPDATE after the
ADD. :func:`syncd.ports.collections.step` follows it, from the log (:func:`scan`, here)
or from a stream's changes (the pgvector sink). Which vector Chroma ends up with depends on its
timing; it is fixed on disk once the HNSW segment's ``max_seq_id`` reaches the ADD (see
docs/chroma.md).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from syncd.ports.collections import Doubt, State, step

OPS = {0: "add", 1: "update", 2: "upsert", 3: "delete"}


SCAN_STEP = 20_000
"""Log rows (seq_ids) per read transaction of :func:`scan`: Chroma's writer waits for each."""


def scan(read: Callable[[Callable[[sqlite3.Connection], Any]], Any], topic: str) -> dict[str, Doubt]:
    """The doubts the log of one collection holds; *read* runs a function in one short read
    transaction.

    Only ids with an UPDATE carrying a vector can have one. Two passes over the log in seq_id
    ranges of :data:`SCAN_STEP` (in SQLite: Python sees only those ids' rows), then the
    vectors of the doubtful UPDATEs by seq_id. Rows purged meanwhile only make an id's
    existence unknown (taken as missing); rows written meanwhile are streamed later.
    """
    head = int(read(lambda c: c.execute("SELECT coalesce(max(seq_id), 0) FROM embeddings_queue "
                                        "WHERE topic = ?", (topic,)).fetchone()[0]))
    ranges = [(lo, min(lo + SCAN_STEP, head)) for lo in range(0, head, SCAN_STEP)]
    def rows(sql: str, *args: Any) -> Callable[[sqlite3.Connection], list[Any]]:
        return lambda conn: conn.execute(sql, args).fetchall()

    ids: set[str] = set()
    for lo, hi in ranges:
        ids.update(r[0] for r in read(rows(
            "SELECT DISTINCT id FROM embeddings_queue WHERE seq_id > ? AND seq_id <= ? AND topic = ? "
            "AND operation = 1 AND vector IS NOT NULL", lo, hi, topic)))
    if not ids:
        return {}
    wanted = json.dumps(sorted(ids))
    states: dict[str, State] = {}
    for lo, hi in ranges:
        for item_id, seq, op, has_vector in read(rows(
                """SELECT id, seq_id, operation, vector IS NOT NULL FROM embeddings_queue
                   WHERE seq_id > ? AND seq_id <= ? AND topic = ?
                   AND id IN (SELECT value FROM json_each(?)) ORDER BY seq_id""", lo, hi, topic, wanted)):
            name = OPS.get(int(op))
            if name is not None:
                states[item_id] = step(states.get(item_id, (None, None)), int(seq), name, bool(has_vector))
    doubts = {k: d for k, (_, d) in states.items() if d is not None}
    if not doubts:
        return {}
    blobs = dict(read(rows(
        "SELECT seq_id, vector FROM embeddings_queue WHERE seq_id IN (SELECT value FROM json_each(?))",
        json.dumps([d.update_seq for d in doubts.values()]))))
    return {k: replace(d, vector=bytes(blobs[d.update_seq])) for k, d in doubts.items()
            if blobs.get(d.update_seq) is not None}
