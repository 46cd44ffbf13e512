"""The vector of an item whose last operation carried none, replayed from Chroma's log: proven
only by a write the log shows took effect; a first-row ADD is a candidate the server settles."""

from __future__ import annotations

import sqlite3

import numpy as np

from syncd.ports.collections import LOGGED_ULPS, settle_vector
from syncd.stores.chroma.catalog import vectors_from_log
from syncd.stores.chroma.records import OP_ADD, OP_DELETE, OP_UPDATE, OP_UPSERT

TOPIC = "t"


Row = tuple[int, str, int, list[float] | None]


def log(rows: list[Row]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE embeddings_queue (seq_id INTEGER PRIMARY KEY, topic TEXT, id TEXT, "
                 "operation INTEGER, vector BLOB, encoding TEXT)")
    conn.executemany("INSERT INTO embeddings_queue VALUES (?, ?, ?, ?, ?, ?)", [
        (seq, TOPIC, item, op, None if v is None else np.asarray(v, "<f4").tobytes(),
         None if v is None else "FLOAT32") for seq, item, op, v in rows])
    return conn


def replay(rows: list[Row], item: str, seq: int) -> tuple[list[float], bool] | None:
    got = vectors_from_log(log(rows), TOPIC, {item: seq}).get(item)
    return None if got is None else ([float(x) for x in got[0]], got[1])


def test_a_first_row_add_is_only_a_candidate() -> None:
    # the ADD may have found the id present (its creating write pruned) and done nothing
    assert replay([(5, "a", OP_ADD, [1, 2]), (6, "a", OP_UPDATE, None)], "a", 6) == ([1, 2], False)


def test_writes_after_the_first_row_prove_the_vector() -> None:
    assert replay([(1, "a", OP_ADD, [1, 2]), (2, "a", OP_UPDATE, [3, 4]), (3, "a", OP_UPDATE, None)],
                  "a", 3) == ([3, 4], True)
    assert replay([(1, "a", OP_UPSERT, [5, 6]), (2, "a", OP_UPDATE, None)], "a", 2) == ([5, 6], True)
    assert replay([(1, "a", OP_ADD, [1, 2]), (2, "a", OP_DELETE, None), (3, "a", OP_ADD, [7, 8]),
                   (4, "a", OP_UPDATE, None)], "a", 4) == ([7, 8], True)
    # an ADD of a present id does nothing
    assert replay([(1, "a", OP_ADD, [1, 2]), (2, "a", OP_UPDATE, [3, 4]), (3, "a", OP_ADD, [9, 9]),
                   (4, "a", OP_UPDATE, None)], "a", 4) == ([3, 4], True)


def test_no_vector_when_the_log_cannot_give_one() -> None:
    assert replay([(5, "a", OP_UPDATE, [1, 2]), (6, "a", OP_UPDATE, None)], "a", 6) is None  # pruned
    assert replay([(1, "a", OP_ADD, [1, 2]), (2, "a", OP_DELETE, None)], "a", 2) is None  # gone
    # an UPDATE of the missing id, then its ADD: Chroma's index may hold the UPDATE's vector
    assert replay([(1, "a", OP_UPSERT, [1, 2]), (2, "a", OP_DELETE, None), (3, "a", OP_UPDATE, [3, 4]),
                   (4, "a", OP_ADD, [5, 6]), (5, "a", OP_UPDATE, None)], "a", 5) is None
    # rows after the item's seq are not its state at seq
    assert replay([(1, "a", OP_ADD, [1, 2]), (2, "a", OP_UPDATE, [3, 4]), (3, "a", OP_UPDATE, [5, 6])],
                  "a", 2) == ([3, 4], True)


def test_the_server_settles_a_candidate() -> None:
    logged = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    near = (logged.view(np.int32) + np.array([LOGGED_ULPS, -1, 0], dtype=np.int32)).view(np.float32)
    far = (logged.view(np.int32) + np.array([LOGGED_ULPS + 1, 0, 0], dtype=np.int32)).view(np.float32)
    assert settle_vector(near, logged) is logged  # its index's rounding of the logged bits
    assert settle_vector(far, logged) is far  # another vector: the server's
    assert settle_vector(near, None) is near
    assert settle_vector(near, logged[:2]) is near
