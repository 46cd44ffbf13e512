"""syncd's reads do not keep the app's WAL from starting over.

A checkpoint can copy back only what every open read transaction already sees, and the WAL
starts over (from its first frame, so the file stops growing) only once all of it has been
copied back. Beside a busy app, syncd's reads kept catching the app's own checkpoints: the WAL
grew to tens of MB and each of the app's commits tried to checkpoint again (docs/benchmarks.md,
"What syncd's reads cost the app's writes"). syncd now checkpoints (PASSIVE) before the read
that follows one that found changes, when it holds no snapshot.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd


def wal_restarts(db: Path) -> int:
    """The WAL header's checkpoint sequence number: it goes up each time the WAL starts over."""
    header = Path(f"{db}-wal").read_bytes()[:32]
    return int(struct.unpack(">I", header[12:16])[0])


async def test_after_syncd_read_the_apps_next_write_starts_the_wal_over(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    app = sqlite3.connect(db, isolation_level=None)  # held open: the WAL outlives syncd's runs
    try:
        app.execute("PRAGMA journal_mode = WAL")
        app.execute("PRAGMA wal_autocheckpoint = 0")  # the app never checkpoints: only syncd can
        app.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        cfg = make_config(db)
        run_syncd("--config", str(cfg), "init")
        run_syncd("--config", str(cfg), "run", "--until-caught-up")

        for i in range(200):
            app.execute("INSERT INTO notes VALUES (?, ?)", (i, "x" * 500))
        before = wal_restarts(db)
        app.execute("INSERT INTO notes VALUES (1000, 'before syncd read')")
        assert wal_restarts(db) == before  # nothing was copied back: the WAL goes on

        run_syncd("--config", str(cfg), "run", "--until-caught-up")
        assert await pg.fetchval("SELECT count(*) FROM notes") == 201
        app.execute("INSERT INTO notes VALUES (1001, 'after syncd read')")
        assert wal_restarts(db) > before, "syncd's read left the WAL as it was: it grows on"
        assert app.execute("SELECT count(*) FROM notes").fetchone()[0] == 202
    finally:
        app.close()
