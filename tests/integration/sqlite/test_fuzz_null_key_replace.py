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
import pytest

from tests.conftest import run_syncd


@pytest.mark.xfail(strict=True, reason="open: the row with key 1.5 is neither stored nor rejected "
                   "(fuzz class missing:int+replace+kill, seed 3002458); strict, so the fix shows")
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
