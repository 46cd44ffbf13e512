"""Trigger row images decode to exactly what SQLite holds (real SQLite, random values)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.stores.sqlite import capture
from syncd.stores.sqlite.schema import describe
from syncd.stores.sqlite.values import decode_key, decode_row

TAG_LIKE = ['["r","1.5e+00"]', '["b","00ff"]', '[', '["', '\\"', 'x["r",', '["r","1.5e+00"]]']
"""Texts that read like the triggers' tags for a REAL or a BLOB: they stay text."""

values = st.one_of(
    st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(), st.binary(max_size=64), st.sampled_from(TAG_LIKE),
)


def make_db(path: Path, columns: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    cols = ", ".join(f'"c{i}"' for i in range(columns))
    conn.execute(f'CREATE TABLE IF NOT EXISTS "t x" (id INTEGER PRIMARY KEY, {cols})')
    capture.install(conn, [describe(conn, "t x", no_primary_key="rowid")])
    return conn


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.lists(values, min_size=3, max_size=3))
def test_row_image_round_trip(tmp_path: Path, row: list[Any]) -> None:
    conn = make_db(tmp_path / "cap.sqlite", 3)
    conn.execute('DELETE FROM "t x"')
    conn.execute(f"DELETE FROM {capture.CHANGELOG}")
    conn.execute('INSERT INTO "t x" VALUES (1, ?, ?, ?)', row)
    held = conn.execute('SELECT c0, c1, c2 FROM "t x"').fetchone()
    image = conn.execute(f"SELECT row FROM {capture.CHANGELOG}").fetchone()[0]
    decoded = decode_row(image)
    assert [decoded[f"c{i}"] for i in range(3)] == list(held)
    assert [type(decoded[f"c{i}"]) for i in range(3)] == [type(v) for v in held]
    conn.close()


def test_wide_table_and_origin_suppression(tmp_path: Path) -> None:
    conn = make_db(tmp_path / "wide.sqlite", 150)  # past json_object's 127-argument limit
    conn.execute('INSERT INTO "t x" (id, c0, c149) VALUES (1, 1.5, x\'00ff\')')
    image = decode_row(conn.execute(f"SELECT row FROM {capture.CHANGELOG}").fetchone()[0])
    assert image["c0"] == 1.5 and image["c149"] == b"\x00\xff"
    # past 60 columns images are merged with json_patch, which leaves NULL keys out: absent = NULL
    assert all(image.get(f"c{i}") is None for i in range(1, 149))
    # syncd's own writes (reverse sync) are not captured
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"UPDATE {capture.ORIGIN} SET suppress = 1")
    conn.execute('INSERT INTO "t x" (id) VALUES (2)')
    conn.execute(f"UPDATE {capture.ORIGIN} SET suppress = 0")
    conn.execute("COMMIT")
    conn.execute('UPDATE "t x" SET id = 3 WHERE id = 1')  # key change: delete + update
    ops = conn.execute(f"SELECT op, pk FROM {capture.CHANGELOG} ORDER BY id").fetchall()
    assert ops == [("I", "[1]"), ("D", "[1]"), ("U", "[3]")]
    dropped = capture.uninstall(conn)
    assert len(dropped) == 3
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE '_syncd%'").fetchone()[0] == 0


def test_keys_and_texts_that_look_like_tags_decode_as_what_sqlite_holds(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "tags.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE k (a ANY, b ANY, v ANY, PRIMARY KEY (a, b)) STRICT")
    capture.install(conn, [describe(conn, "k", no_primary_key="rowid")])
    keys = [(t, 1) for t in TAG_LIKE] + [(1.5, t) for t in TAG_LIKE] + [(b"\x00", "x"), (2, 2.5)]
    conn.executemany("INSERT INTO k VALUES (?, ?, ?)", [(a, b, a) for a, b in keys])
    logged = conn.execute(f"SELECT pk, row FROM {capture.CHANGELOG} ORDER BY id").fetchall()
    assert len(logged) == len(keys)
    for (a, b), (pk, row) in zip(keys, logged, strict=True):
        key = decode_key(pk)
        assert key == (a, b) and [type(v) for v in key] == [type(a), type(b)]
        image = decode_row(row)
        assert image == {"a": a, "b": b, "v": a} and type(image["v"]) is type(a)
