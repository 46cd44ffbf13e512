"""Two classes the differential fuzzing found, through the real command line.

- A text primary key holding NUL: PostgreSQL text cannot hold it, so the row is a reject
  with a reason, and every place that stores a key (the snapshot's resume position in the
  checkpoint, ``syncd.rejects``, the log) survives it — the snapshot resumes after a kill
  right behind such a key, and the stream goes on.
- Date/times whose UTC value is in year 10000 or in year 0 (1 BC): PostgreSQL holds them,
  so they are stored exactly on the snapshot and the stream path, and verify expects them
  exactly and sees a difference.

PostgreSQL is read back as text (``::text``), which no syncd code formats.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import REPO, run_syncd, syncd_cmd
from tests.integration.cutover.test_reverse_tables import forward_setup, run_reverse, sqlite_rows
from tests.integration.sqlite.test_values_exact import (
    as_text,
    assert_reason,
    differences,
    verify,
    write_sqlite,
)

KEYS = "CREATE TABLE k (id TEXT PRIMARY KEY, v INTEGER)"


def nul_rows(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()


def run_killed(cfg: Path, at: str) -> None:
    """``syncd run`` SIGKILLs itself at *at* (``SYNCD_KILL_AT``)."""
    proc = subprocess.run(syncd_cmd("--config", str(cfg), "run", "--until-caught-up"), cwd=REPO,
                          text=True, capture_output=True, timeout=120,
                          env={**os.environ, "SYNCD_KILL_AT": at})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


async def open_key_rejects(pg: asyncpg.Connection, table: str) -> list[tuple[str, str, int | None]]:
    rows = await pg.fetch("SELECT key::text AS key, error, position FROM syncd.rejects "
                          "WHERE object = $1 AND resolved_at IS NULL ORDER BY id", table)
    return [(r["key"], r["error"], r["position"]) for r in rows]


async def test_a_nul_in_a_text_key_is_a_reject_and_the_snapshot_resumes_behind_it(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    write_sqlite(db, KEYS)
    # inserted (rowid order, the snapshot's for this rowid table) as text sorts by its bytes:
    # 'a' < 'x' NUL 'y' < 'z'; one row per chunk, so the NUL key is the second chunk's last key:
    # the resume position committed with it (after the rowid cursor, as its anchor)
    nul_rows(db, "INSERT INTO k VALUES ('a', 1), ('x' || char(0) || 'y', 2), ('z', 3)")
    cfg = make_config(db, chunk_rows=1)
    run_syncd("--config", str(cfg), "init")
    run_killed(cfg, "chunk:2")
    state = json.loads(await pg.fetchval("SELECT snapshot::text FROM syncd.checkpoints"))
    assert "$rowid" in state["last_key"]["k"][0], state
    assert state["last_key"]["k"][1:] == [{"$text_hex": "780079"}], state
    assert state["copied"]["k"] == 2

    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")  # resumes behind 'x\0y'
    assert "Traceback" not in proc.stderr, proc.stderr
    held = await as_text(pg, "SELECT id, v::text FROM k ORDER BY id")
    assert held == {"a": ("1",), "z": ("3",)}
    found = await open_key_rejects(pg, "k")
    assert len(found) == 1, found  # once: the resume did not read it again
    key, reason, _ = found[0]
    assert json.loads(key) == [{"$text_base64": "eAB5"}]
    assert_reason(reason, "k", "id='x\\x00y'", "column id", "NUL", "bytea")

    # the stream: a new NUL key and a change to a good row
    nul_rows(db, "INSERT INTO k VALUES ('p' || char(0), 4); UPDATE k SET v = 10 WHERE id = 'a'")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "Traceback" not in proc.stderr, proc.stderr
    held = await as_text(pg, "SELECT id, v::text FROM k ORDER BY id")
    assert held == {"a": ("10",), "z": ("3",)}
    found = await open_key_rejects(pg, "k")
    assert len(found) == 2, found
    key, reason, position = found[1]
    assert json.loads(key) == [{"$text_base64": "cAA="}] and position is not None
    assert_reason(reason, "k", "id='p\\x00'", "column id", "NUL", "bytea")

    code, report = verify(cfg)
    assert code == 5, json.dumps(report)[:2000]  # only the quarantined rows differ
    assert differences(report) == []

    # the app deletes a rejected row: nothing to delete in PostgreSQL, its reject is resolved
    nul_rows(db, "DELETE FROM k WHERE id = 'x' || char(0) || 'y'")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert [json.loads(k) for k, _, _ in await open_key_rejects(pg, "k")] == [[{"$text_base64": "cAA="}]]
    code, report = verify(cfg)
    assert code == 5 and differences(report) == [], json.dumps(report)[:2000]
    status = run_syncd("--config", str(cfg), "status", check=False)
    assert "Traceback" not in status.stderr, status.stderr
    listed = run_syncd("--config", str(cfg), "rejects")
    assert "p\\x00" in listed.stdout and "bytea" in listed.stdout, listed.stdout


async def test_a_nul_text_key_mapped_to_bytea_is_stored(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """The advice of the reason works: with the key column mapped to bytea, the row arrives."""
    db = tmp_path / "app.sqlite"
    write_sqlite(db, KEYS)
    nul_rows(db, "INSERT INTO k VALUES ('a', 1), ('x' || char(0) || 'y', 2), ('z', 3)")
    cfg = make_config(db, chunk_rows=1, extra='[target.column_types]\n"k.id" = "bytea"\n')
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    nul_rows(db, "INSERT INTO k VALUES ('p' || char(0), 4)")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = await as_text(pg, "SELECT encode(id, 'hex'), v::text FROM k ORDER BY id")
    assert held == {"61": ("1",), "7000": ("4",), "780079": ("2",), "7a": ("3",)}
    assert await open_key_rejects(pg, "k") == []
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]


# --- years 10000 and 0 in UTC -------------------------------------------------------------------

TIMES = "CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, tz TIMESTAMPTZ, ms DATETIME)"
# SQLite values -> what PostgreSQL must print (TimeZone UTC, DateStyle ISO)
TIME_ROWS: list[tuple[tuple[Any, ...], tuple[str, str, str]]] = [
    (("9999-12-31T23:30:00-01:00", "9999-12-31 23:59:59.5-00:01", 253402300800000),
     ("10000-01-01 00:30:00", "10000-01-01 00:00:59.5+00", "10000-01-01 00:00:00")),
    (("0001-01-01T00:30:00+01:00", "0001-01-01 00:00:00.000001+14:00", -62135596800001),
     ("0001-12-31 23:30:00 BC", "0001-12-31 10:00:00.000001+00 BC", "0001-12-31 23:59:59.999 BC")),
]


async def test_years_10000_and_0_in_utc_are_stored_exactly_and_verified(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    insert = "INSERT INTO events (id, at, tz, ms) VALUES (?, ?, ?, ?)"
    write_sqlite(db, TIMES, insert, [(i + 1, *src) for i, (src, _) in enumerate(TIME_ROWS)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot
    write_sqlite(db, "", insert, [(i + 11, *src) for i, (src, _) in enumerate(TIME_ROWS)])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # stream

    held = await as_text(pg, "SELECT id, at::text, tz::text, ms::text FROM events ORDER BY id")
    want = {i + 1: dst for i, (_, dst) in enumerate(TIME_ROWS)}
    want |= {i + 11: dst for i, (_, dst) in enumerate(TIME_ROWS)}
    assert held == want
    assert await open_key_rejects(pg, "events") == []
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]

    # a loader that is one microsecond, an hour or a year off is caught, by key and column
    await pg.execute("UPDATE events SET at = at + interval '1 microsecond' WHERE id = 1")
    await pg.execute("UPDATE events SET tz = tz - interval '1 hour' WHERE id = 2")
    await pg.execute("UPDATE events SET at = '0001-12-31 23:30:00' WHERE id = 12")
    await pg.execute("UPDATE events SET ms = 'infinity' WHERE id = 11")
    code, report = verify(cfg)
    assert code == 1
    assert sorted(differences(report)) == [("events", [1], "changed", ["at"]),
                                          ("events", [2], "changed", ["tz"]),
                                          ("events", [11], "changed", ["ms"]),
                                          ("events", [12], "changed", ["at"])]


async def test_a_datetime_key_in_year_10000_is_stored_and_verified(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """verify reads such a key back into its range predicates, and the snapshot resumes on it."""
    db = tmp_path / "app.sqlite"
    write_sqlite(db, "CREATE TABLE t (at DATETIME PRIMARY KEY, v INTEGER)",
                 "INSERT INTO t VALUES (?, ?)",
                 [("2024-01-01 00:00:00", 1), ("9999-12-31T23:30:00-01:00", 2),
                  ("0001-01-01T00:30:00+01:00", 3)])
    cfg = make_config(db, chunk_rows=1)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = await as_text(pg, "SELECT at::text, v::text FROM t ORDER BY at")
    assert held == {"0001-12-31 23:30:00 BC": ("3",), "2024-01-01 00:00:00": ("1",),
                    "10000-01-01 00:30:00": ("2",)}
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]


async def test_the_reverse_stream_rejects_years_0_and_10000_with_a_reason(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """SQLite has no form syncd writes for them (the forward mapping reads four-digit years):
    a reject in ``_syncd_rejects`` naming the value, and the stream goes on."""
    cfg = await forward_setup(tmp_path, make_config, TIMES, "INSERT INTO events (id) VALUES (1)")
    assert cfg.sqlite is not None
    await pg.execute("""
        INSERT INTO events (id, at) VALUES (20, '10000-01-01 00:30:00'), (21, '0001-12-31 23:30:00 BC'),
                                           (22, '2024-01-01 00:00:00')""")
    await run_reverse(cfg)
    assert sqlite_rows(cfg.sqlite.path, "events", "id, at") == {1: (1, None), 22: (22, "2024-01-01 00:00:00")}
    reasons = sqlite_rows(cfg.sqlite.path, "_syncd_rejects", "key, error")
    assert sorted(reasons) == ["[20]", "[21]"], reasons
    for _, reason in reasons.values():
        assert "outside the years 1-9999" in reason and "\n" not in reason, reason
