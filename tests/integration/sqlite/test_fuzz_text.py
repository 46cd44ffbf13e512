"""Two classes the differential fuzz campaign found, through the real command line.

- SQLite TEXT that is not valid UTF-8 (``CAST(x'ff61' AS TEXT)``) stopped the stream with
  "Could not decode to UTF-8". Such a row is a reject naming table, key and column, every
  other row streams on, and a column mapped to ``bytea`` keeps the exact bytes; a key that is
  not UTF-8 makes its row a reject too, on the snapshot and on the stream, and ``verify``
  counts it as one.
- A REAL ``-0.0`` kept its sign on the snapshot but lost it on the stream (SQLite's printf
  prints ``0.0e+00`` for it).

PostgreSQL is read back as text (``col::text``, ``bytea`` in hex), which no syncd code formats.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.integration.sqlite.test_values_exact import as_text, differences, verify


def sql(db: Path, script: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(script)
        conn.commit()
    finally:
        conn.close()


async def rejects(pg: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await pg.fetch("SELECT key::text AS key, error FROM syncd.rejects "
                          "WHERE object = $1 AND resolved_at IS NULL", table)
    return {r["key"]: r["error"] for r in rows}


def text_key(raw: bytes) -> str:
    """How a key that is not UTF-8 must be recorded: its bytes, which round-trip."""
    return json.dumps([{"$text_base64": base64.b64encode(raw).decode()}])


NOTES = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, raw TEXT);
INSERT INTO notes VALUES (1, 'ok', 'fine');
INSERT INTO notes VALUES (2, CAST(x'ff61' AS TEXT), 'x');
INSERT INTO notes VALUES (3, 'good', CAST(x'c328' AS TEXT));
"""
AFTER_INIT = """
INSERT INTO notes VALUES (11, 'ok', 'fine');
INSERT INTO notes VALUES (12, CAST(x'61ff' AS TEXT), 'x');
INSERT INTO notes VALUES (13, 'good', CAST(x'eda080' AS TEXT));
UPDATE notes SET body = 'fixed' WHERE id = 2;
"""


async def test_text_that_is_not_utf8_is_a_reject_and_bytea_keeps_its_bytes(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    sql(db, NOTES)
    cfg = make_config(db, extra='[target.column_types]\n"notes.raw" = "bytea"\n')
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot
    snap = await rejects(pg, "notes")
    assert list(snap) == ["[2]"]
    assert all(w in snap["[2]"] for w in ("notes", "id=2", "body", "UTF-8", "bytea")), snap

    sql(db, AFTER_INIT)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # stream
    held = await as_text(pg, "SELECT id, body, raw::text FROM notes ORDER BY id")
    assert held == {1: ("ok", "\\x66696e65"), 2: ("fixed", "\\x78"), 3: ("good", "\\xc328"),
                    11: ("ok", "\\x66696e65"), 13: ("good", "\\xeda080")}
    open_ = await rejects(pg, "notes")
    assert list(open_) == ["[12]"]  # 2's reject was resolved by its later update
    assert all(w in open_["[12]"] for w in ("notes", "id=12", "body", "UTF-8", "bytea")), open_

    code, report = verify(cfg)
    assert code == 5 and not differences(report), json.dumps(report)[:2000]
    assert [r["key"] for c in report["checks"] for r in c["rejected"]] == [[12]]

    # verify does not call a bytea that lost a byte equal
    await pg.execute("UPDATE notes SET raw = '\\xc3'::bytea WHERE id = 3")
    code, report = verify(cfg)
    assert code == 1 and differences(report) == [("notes", [3], "changed", ["raw"])]


async def test_a_key_that_is_not_utf8_is_a_reject_on_snapshot_and_stream(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    sql(db, """
        CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER);
        INSERT INTO tags VALUES ('a', 1), (CAST(x'62ff' AS TEXT), 2), ('c', 3), ('d', 4);
    """)
    cfg = make_config(db, chunk_rows=1)  # the key that is not UTF-8 ends a chunk: checkpointed
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    sql(db, """
        INSERT INTO tags VALUES (CAST(x'ff' AS TEXT), 5), ('e', 6);
        UPDATE tags SET n = 7 WHERE name = 'c';
        DELETE FROM tags WHERE name = 'a';
    """)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = await as_text(pg, "SELECT name, n FROM tags ORDER BY name")
    assert held == {"c": (7,), "d": (4,), "e": (6,)}
    open_ = await rejects(pg, "tags")
    assert sorted(open_) == sorted([text_key(b"b\xff"), text_key(b"\xff")])
    assert all("tags" in e and "name" in e and "UTF-8" in e for e in open_.values()), open_

    code, report = verify(cfg)
    assert code == 5 and not differences(report), json.dumps(report)[:2000]
    assert len([r for c in report["checks"] for r in c["rejected"]]) == 2


async def test_negative_zero_keeps_its_sign_on_snapshot_and_stream(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    # untyped columns keep a REAL -0.0 as it is (a REAL column stores it as the integer 0)
    # (and so does ANY in a STRICT table)
    sql(db, "CREATE TABLE m (id INTEGER PRIMARY KEY, d, t); INSERT INTO m VALUES (1, -0.0, -0.0);"
            "CREATE TABLE s (id INTEGER PRIMARY KEY, a ANY) STRICT; INSERT INTO s VALUES (1, -0.0);")
    cfg = make_config(db, extra='[target.column_types]\n"m.d" = "double precision"\n'
                                '"s.a" = "double precision"\n')
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot
    sql(db, """
        INSERT INTO m VALUES (2, -0.0, -0.0), (3, 0.0, 0.0), (4, 1.0, 1.0);
        UPDATE m SET d = -0.0, t = -0.0 WHERE id = 4;
        INSERT INTO m VALUES (5, -0.0, -0.0);
        UPDATE m SET d = 0.0 WHERE id = 5;
        INSERT INTO s VALUES (2, -0.0), (3, 0.0);
    """)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # stream
    held = await as_text(pg, "SELECT id, d::text, t FROM m ORDER BY id")
    assert held == {1: ("-0", "-0.0"), 2: ("-0", "-0.0"), 3: ("0", "0.0"), 4: ("-0", "-0.0"),
                    5: ("0", "-0.0")}
    assert await as_text(pg, "SELECT id, a::text FROM s ORDER BY id") == {1: ("-0",), 2: ("-0",), 3: ("0",)}
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]

    # verify sees a lost sign, either way
    await pg.execute("UPDATE m SET d = 0 WHERE id = 1")
    await pg.execute("UPDATE m SET d = '-0' WHERE id = 3")
    code, report = verify(cfg)
    assert code == 1
    assert sorted(differences(report)) == [("m", [1], "changed", ["d"]), ("m", [3], "changed", ["d"])]
