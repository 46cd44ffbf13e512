"""Rows that cannot be written go to syncd.rejects, and only there; the rest goes on."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER, at DATETIME, doc JSON, code VARCHAR(5),
                    note TEXT, ok BOOLEAN)
"""
GOOD = (None, 1, "2024-01-01 00:00:00", '{"a": 1}', "abc", "fine", 1)
# (id, column, bad value, what the error must mention)
BAD: list[tuple[int, str, Any, str]] = [
    (101, "qty", "twelve", "does not fit bigint"),
    (102, "at", "2024-02-30 10:00:00", "not a valid date/time"),
    (103, "doc", "{not json", "invalid JSON"),
    (104, "code", "toolong", "longer than 5"),  # refused by PostgreSQL itself? no: by the converter
    (105, "note", "nul\x00inside", "NUL"),
    (106, "ok", 7, "does not fit boolean"),
]


def insert_rows(conn: sqlite3.Connection, first_id: int, n: int) -> None:
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(first_id + i, *GOOD[1:]) for i in range(n)])


def insert_bad(conn: sqlite3.Connection, offset: int) -> None:
    for rid, col, value, _ in BAD:
        row = dict(zip(["id", "qty", "at", "doc", "code", "note", "ok"], GOOD, strict=True))
        row["id"], row[col] = rid + offset, value
        conn.execute("INSERT INTO items VALUES (:id, :qty, :at, :doc, :code, :note, :ok)", row)


async def rejects(pg: asyncpg.Connection) -> dict[int, dict[str, Any]]:
    rows = await pg.fetch("SELECT object, key::text, row_image::text, error FROM syncd.rejects "
                          "WHERE resolved_at IS NULL")
    out = {}
    for r in rows:
        assert r["object"] == "items"
        out[json.loads(r["key"])[0]] = {"row": json.loads(r["row_image"]), "error": r["error"]}
    return out


async def test_bad_rows_quarantined_in_snapshot_and_stream(tmp_path: Path, make_config: Any,
                                                           pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA)
    insert_rows(conn, 1, 50)
    insert_bad(conn, 0)  # present before the snapshot
    conn.commit()
    cfg = make_config(db, chunk_rows=20)
    run_syncd("--config", str(cfg), "init")
    insert_bad(conn, 100)  # arrive through the changelog
    insert_rows(conn, 1000, 30)
    conn.commit()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    found = await rejects(pg)
    for offset in (0, 100):
        for rid, col, value, words in BAD:
            r = found.pop(rid + offset)
            assert words in r["error"] and col in r["error"], r["error"]
            kept = r["row"][col]
            if isinstance(kept, dict):  # text with NUL is kept base64-encoded (jsonb cannot hold it)
                kept = base64.b64decode(kept["$text_base64"]).decode()
            assert kept == value  # the raw row is kept, as SQLite held it
    assert found == {}
    ids = [r[0] for r in await pg.fetch("SELECT id FROM items ORDER BY id")]
    assert ids == list(range(1, 51)) + list(range(1000, 1030))  # good rows only, nothing else
    status = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)
    assert status["streams"][0]["rejects"] == 2 * len(BAD)

    # fixing a row at the source resolves its reject once the change streams in
    conn.execute("UPDATE items SET qty = 12 WHERE id = 101")
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert 101 not in await rejects(pg)
    assert await pg.fetchval("SELECT qty FROM items WHERE id = 101") == 12


async def test_postgres_side_refusal_is_isolated(tmp_path: Path, make_config: Any,
                                                 pg: asyncpg.Connection) -> None:
    """A value the converter lets through but PostgreSQL refuses (adopted int4 column)."""
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.executemany("INSERT INTO counters VALUES (?, ?)", [(i, i) for i in range(1, 41)])
    conn.execute("INSERT INTO counters VALUES (41, 5000000000)")  # > int4
    conn.commit()
    await pg.execute("CREATE TABLE counters (id bigint PRIMARY KEY, n numeric(5,0))")
    cfg = make_config(db, chunk_rows=1000)
    run_syncd("--config", str(cfg), "init")
    conn.execute("INSERT INTO counters VALUES (42, 42), (43, 9999999), (44, 44)")
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    keys = sorted(json.loads(k)[0] for k in
                  await pg.fetchval("SELECT array_agg(key::text) FROM syncd.rejects"))
    assert keys == [41, 43]
    n = await pg.fetchval("SELECT count(*) FROM counters")
    assert n == 42  # 40 + 42 + 44


async def test_strict_mode_stops_without_losing_position(tmp_path: Path, make_config: Any,
                                                         pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA)
    insert_rows(conn, 1, 10)
    conn.commit()
    cfg = make_config(db, extra="")
    text = cfg.read_text().replace("[target]\n", "[target]\nstrict = true\n")
    cfg.write_text(text)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    conn.execute("INSERT INTO items VALUES (500, 'bad', NULL, NULL, NULL, NULL, NULL)")
    conn.commit()
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert proc.returncode == 1
    assert "strict mode" in proc.stdout + proc.stderr and "500" in proc.stdout + proc.stderr
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0
    checkpoint = await pg.fetchval("SELECT position FROM syncd.checkpoints")
    # the log holds the bad image: stopping again, at the same place, until the operator decides
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert proc.returncode == 1
    assert await pg.fetchval("SELECT position FROM syncd.checkpoints") == checkpoint
    # the operator turns strict off: the row is quarantined, and a fix at the source resolves it
    cfg.write_text(text.replace("strict = true", "strict = false"))
    conn.execute("UPDATE items SET qty = 5 WHERE id = 500")
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await pg.fetchval("SELECT qty FROM items WHERE id = 500") == 5
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 1
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects WHERE resolved_at IS NULL") == 0
    assert await pg.fetchval("SELECT position FROM syncd.checkpoints") > checkpoint


def test_operator_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{missing}"\n[target]\n'
                   'dsn = "postgresql://app:s3cret-pw@127.0.0.1:1/app"\n'
                   f'[state]\ndir = "{tmp_path}"\n')
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr

    sqlite3.connect(missing).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "127.0.0.1:1" in proc.stderr and "s3cret-pw" not in proc.stderr + proc.stdout

    cfg.write_text(cfg.read_text() + "[stream]\nbatch_size = -1\n")
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode == 2 and "stream.batch_size" in proc.stderr

    cfg.write_text(f'[source.sqlite]\npath = "{missing}"\ntables = ["ghost"]\n[target]\n'
                   'dsn = "${SYNCD_NO_SUCH_VAR}"\n')
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode == 2 and "target.dsn" in proc.stderr and "SYNCD_NO_SUCH_VAR" in proc.stderr


async def test_missing_table_named_in_config(tmp_path: Path, make_config: Any) -> None:
    db = tmp_path / "app.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE real_one (id INTEGER PRIMARY KEY)")
    cfg = make_config(db)
    cfg.write_text(cfg.read_text().replace("[source.sqlite]\n", '[source.sqlite]\ntables = ["ghost"]\n'))
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode == 1 and "ghost" in proc.stderr and "Traceback" not in proc.stderr
