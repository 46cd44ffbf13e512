"""The doubt rule (syncd.ports.collections.step, syncd.stores.chroma.doubt.scan) against a model
of Chroma 1.5.9's HNSW writer.

The model follows ``LocalHnswSegmentWriter::apply_log_chunk`` (rust/segment/src/local_hnsw.rs,
tag 1.5.9) for one id: ADD only if the id is missing, UPDATE only if it exists (and carries a
vector), UPSERT always, DELETE if it exists. Chroma's bug replays the rows above its saved
index over the state it already reached, any number of times; every suffix of the rows is a
possible replay, at any point. Checked: existence never changes; with no doubt, the vector never changes;
with a doubt, it is the ADD's (what the log says) or the doubtful UPDATE's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from syncd.model import Change, Op, Position
from syncd.ports.collections import Doubt, State, step
from syncd.stores.chroma import doubt as chroma_doubt
from syncd.stores.pgvector.doubt import track

Row = tuple[int, str, bytes | None]  # seq, operation, vector


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


def random_rows(rng: np.random.Generator, n: int) -> list[Row]:
    rows: list[Row] = []
    for seq in range(1, n + 1):
        op = str(rng.choice(["add", "update", "update", "upsert", "delete"]))
        has_vector = op in ("add", "upsert") or (op == "update" and rng.random() < 0.7)
        rows.append((seq, op, bytes([seq % 256]) * 4 if has_vector else None))
    return rows


@pytest.mark.parametrize("known", [True, False], ids=["existence-known", "existence-unknown"])
def test_a_replay_changes_a_vector_only_where_there_is_a_doubt(known: bool) -> None:
    rng = np.random.default_rng(11)
    cases = doubts = diverged = 0
    for _ in range(4000):
        rows = random_rows(rng, int(rng.integers(1, 9)))
        start = bool(rng.random() < 0.5)
        first = apply((start, b"\x00" * 4 if start else None), rows)
        state: State = (start if known else None, None)
        for seq, op, vec in rows:
            state = step(state, seq, op, vec is not None, vec)
        doubt = state[1]
        if doubt is not None and doubt.add_seq is not None:
            doubts += 1
            assert first[0]  # an ADD created the id and nothing removed it
        for _ in range(3):
            current = (start, b"\x00" * 4 if start else None)
            replays = []
            for k in range(len(rows)):  # row by row, replaying a suffix of the rows so far now and then
                current = apply(current, rows[k:k + 1])
                if rng.random() < 0.4:
                    w = int(rng.integers(0, k + 1))
                    replays.append((w, k))
                    current = apply(current, rows[w:k + 1])
            cases += 1
            assert current[0] == first[0], (rows, replays)
            if doubt is None or doubt.add_seq is None:
                assert current[1] == first[1], (rows, replays)
            else:
                assert current[1] in (first[1], doubt.vector), (rows, replays, doubt)
                diverged += current[1] != first[1]
    assert doubts > 50 and diverged > 20 and cases == 12000  # the model does reproduce the anomaly


def test_the_sequence_seen_in_chroma() -> None:
    """UPDATE of a missing id, ADD, a metadata-only UPDATE: the UPDATE's vector is possible."""
    state: State = (False, None)
    for row in [(5, "update", True, b"u"), (6, "add", True, b"a"), (7, "update", False, None)]:
        state = step(state, *row)
    assert state == (True, Doubt(5, 6, b"u"))
    assert step(state, 8, "update", True, b"v") == (True, None)  # a vector set on the id: settled
    assert step(state, 8, "add", True, b"b") == state  # an ADD of an existing id does nothing


def change(seq: int, item_id: str, op: str, vector: list[float] | None) -> Change:
    if op == "delete":
        return Change(Op.DELETE, "c", (item_id,), None, Position(seq))
    row = {"op": op, "embedding": None if vector is None else np.asarray(vector, dtype=np.float32),
           "document": None, "has_document": False, "metadata": {}, "error": None}
    return Change(Op.INSERT if op == "add" else Op.UPDATE, "c", (item_id,), row, Position(seq))


def test_track_records_changed_by_a_batch() -> None:
    u = np.asarray([1.0, 2.0], dtype="<f4").tobytes()
    changes = [change(1, "a", "update", [1.0, 2.0]), change(2, "b", "update", [1.0, 2.0]),
               change(3, "a", "add", [3.0, 4.0]), change(4, "c", "add", [0.0, 0.0]),
               change(5, "d", "delete", None)]
    got = track(changes, {"a": False, "b": True, "c": False, "d": True},
                {"c": Doubt(0, None, u), "d": Doubt(0, 1, u)})
    assert got == {"a": Doubt(1, 3, u), "c": Doubt(0, 4, u), "d": None}


def test_scan_reads_the_log_in_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SQLite file with Chroma's queue table: the doubts, read 3 seq_ids per transaction."""
    db = sqlite3.connect(tmp_path / "chroma.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE embeddings_queue (seq_id INTEGER PRIMARY KEY, created_at TIMESTAMP, "
               "operation INTEGER NOT NULL, topic TEXT NOT NULL, id TEXT NOT NULL, vector BLOB, "
               "encoding TEXT, metadata TEXT)")
    rows = [(0, "a", b"a0"), (1, "x", b"xu"), (1, "b", None), (3, "y", None), (0, "x", b"xa"),
            (1, "y", b"yu"), (1, "z", b"zu"), (0, "z", b"za"), (1, "z", b"zv")]
    for op, item_id, vector in rows:
        db.execute("INSERT INTO embeddings_queue (operation, topic, id, vector) VALUES (?, 't', ?, ?)",
                   (op, item_id, vector))
    db.execute("INSERT INTO embeddings_queue (operation, topic, id, vector) VALUES (1, 'other', 'q', x'00')")
    transactions = 0

    def read(fn: Any) -> Any:
        nonlocal transactions
        transactions += 1
        db.execute("BEGIN")
        try:
            return fn(db)
        finally:
            db.execute("COMMIT")

    monkeypatch.setattr(chroma_doubt, "SCAN_STEP", 3)
    # x: UPDATE while missing (unknown: taken as missing), then ADD; y: UPDATE after a DELETE,
    # no ADD yet; z: ADD after the UPDATE, then a vector UPDATE that settles it
    assert chroma_doubt.scan(read, "t") == {"x": Doubt(2, 5, b"xu"), "y": Doubt(6, None, b"yu")}
    assert transactions == 1 + 3 + 3 + 1
