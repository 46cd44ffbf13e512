"""verify's own doubt rule (syncd.verify.doubt) against a model of Chroma 1.5.9's HNSW writer.

For every short sequence of operations on one id, and every replay of a suffix of the log over
the state already reached (what the bug does; tests/unit/stores/test_chroma_doubt.py), the vector the
index ends with is the log's last image or the candidate verify derives from the log — and
verify derives a candidate only where a replay can change the vector.
"""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np

from syncd.stores.chroma.records import OP_ADD, OP_DELETE, OP_UPDATE, OP_UPSERT
from syncd.verify.doubt import _from_log

OPS = {"add": OP_ADD, "update": OP_UPDATE, "upsert": OP_UPSERT, "delete": OP_DELETE}
Row = tuple[int, str, bytes | None]


def apply(state: tuple[bool, bytes | None], rows: list[Row]) -> tuple[bool, bytes | None]:
    exists, vector = state
    for _, op, vec in rows:
        if op == "add" and not exists:
            exists, vector = True, vec
        elif op == "update" and exists and vec is not None:
            vector = vec
        elif op == "upsert":
            exists, vector = True, vec
        elif op == "delete" and exists:
            exists, vector = False, None
    return exists, vector


def candidate(rows: list[Row]) -> bytes | None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE embeddings_queue (topic TEXT, id TEXT, seq_id INTEGER, operation INTEGER, "
               "vector BLOB, encoding TEXT)")
    db.executemany("INSERT INTO embeddings_queue VALUES ('t', 'x', ?, ?, ?, 'FLOAT32')",
                   [(seq, OPS[op], vec) for seq, op, vec in rows])
    return _from_log(db, "t", ["x"], saved=10 ** 6).get("x")


def test_every_replayed_vector_is_the_logs_or_verifys_candidate() -> None:
    steps = [("add", True), ("update", True), ("update", False), ("upsert", True), ("delete", False)]
    checked = 0
    for n in range(1, 5):
        for seq in itertools.product(steps, repeat=n):
            rows: list[Row] = [(i + 1, op, np.float32([i + 1]).tobytes() if has else None)
                               for i, (op, has) in enumerate(seq)]
            logged = apply((False, None), rows)
            other = candidate(rows)
            if other is not None:
                assert logged[0] and other != logged[1], rows
            for cut in range(len(rows)):
                for times in (1, 2):
                    state = logged
                    for _ in range(times):
                        state = apply(state, rows[cut:])
                    assert state[0] == logged[0], rows
                    assert state[1] in (logged[1], other), (rows, cut, state, logged, other)
            checked += 1
    assert checked > 700
