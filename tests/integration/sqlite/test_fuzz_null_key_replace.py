"""Found by the fuzz campaign (seed 3002458, batch 3002440..3002459, shrunk): a table with a
non-rowid integer key holding a NULL key and a fractional key (both rejects in PostgreSQL),
then an ``INSERT OR REPLACE`` with a NULL key. Every SQLite row must be in PostgreSQL or an
open reject with a reason."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd


async def test_rejected_keys_stay_rejected_after_a_replace_with_a_null_key(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute('CREATE TABLE parents (id bigint, note TEXT, PRIMARY KEY (id))')
    cfg = make_config(db, chunk_rows=2, batch_size=1)
    run_syncd("--config", str(cfg), "init")
    conn.execute("INSERT INTO parents (note, id) VALUES ('a', NULL)")
    conn.execute("INSERT INTO parents (note, id) VALUES ('b', 1.5)")
    conn.execute("INSERT OR REPLACE INTO parents (note, id) VALUES ('c', NULL)")
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    rejects = [(json.loads(r["key"]), r["error"]) for r in await pg.fetch(
        "SELECT key::text, error FROM syncd.rejects WHERE resolved_at IS NULL")]
    stored = [r["id"] for r in await pg.fetch("SELECT id FROM parents")]
    assert stored == []
    assert sorted(str(k) for k, _ in rejects) == ["[1.5]", "[None]", "[None]"], rejects


async def test_rows_after_null_keys_are_copied_and_each_null_key_row_is_one_reject(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """More NULL-key rows than a chunk holds, in a composite key, before any keyed row: the
    snapshot copies every keyed row, rejects each NULL-key row once (a second run re-reads
    nothing twice), and verify agrees: everything matches but the quarantined rows."""
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE pairs (a TEXT, b INTEGER, note TEXT, PRIMARY KEY (a, b))")
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)",
                     [(None, 1, "n1"), ("x", None, "n2"), (None, None, "n3"), ("a", 1, "k1"),
                      ("b", 2, "k2"), ("c", 3, "k3"), ("d", 4, "k4"), (None, 2, "n4")])
    conn.close()
    cfg = make_config(db, chunk_rows=2, batch_size=1)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    stored = [(r["a"], r["b"], r["note"]) for r in await pg.fetch("SELECT a, b, note FROM pairs ORDER BY a")]
    assert stored == [("a", 1, "k1"), ("b", 2, "k2"), ("c", 3, "k3"), ("d", 4, "k4")]
    rejected = sorted(json.loads(r["row"])["note"] for r in await pg.fetch(
        "SELECT row_image::text AS row FROM syncd.rejects WHERE object = 'pairs' AND resolved_at IS NULL"))
    assert rejected == ["n1", "n2", "n3", "n4"]
    verify = run_syncd("--config", str(cfg), "verify", check=False)
    assert verify.returncode == 5, verify.stdout + verify.stderr  # 5: all else matches, rows quarantined
    assert "4 rows quarantined in syncd.rejects" in verify.stdout, verify.stdout
