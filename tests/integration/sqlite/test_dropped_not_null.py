"""A NOT NULL column the app's migration drops in SQLite (the ORM rebuild: new table without
it, copy, drop, rename) stays in PostgreSQL and is left NULL for rows written after
(architecture.md); its NOT NULL must go with it, or every row written after is rejected
("null value in column … violates not-null constraint") though SQLite holds it fine. Found by
the fuzz campaign (seeds 3000104 and 3000110, in a batch)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_syncd
from tests.workload import Daemon, open_rejects, wait_caught_up

REBUILD = """
    CREATE TABLE new__t (id INTEGER PRIMARY KEY, note TEXT);
    INSERT INTO new__t (id, note) SELECT id, note FROM t;
    DROP TABLE t;
    ALTER TABLE new__t RENAME TO t;
"""


def _app(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def _initialised(db: Path, make_config: Any) -> tuple[sqlite3.Connection, Path]:
    """Five rows in a table with a NOT NULL column, and `syncd init` run on them."""
    conn = _app(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, views BIGINT NOT NULL, note TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i * 10, f"n{i}") for i in range(1, 6)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    return conn, cfg


@pytest.mark.parametrize("live", [False, True], ids=["caught-up", "streaming"])
async def test_rows_after_a_not_null_column_is_dropped_are_stored(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection, live: bool) -> None:
    db = tmp_path / "app.sqlite"
    conn, cfg = _initialised(db, make_config)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    daemon = Daemon(cfg, tmp_path / "daemon.log") if live else None
    try:
        if daemon:
            await wait_caught_up(pg, db, daemon)
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.executescript(REBUILD)
        conn.execute("INSERT INTO t (id, note) VALUES (6, 'after')")
        conn.execute("UPDATE t SET note = 'changed' WHERE id = 2")
        conn.close()
        if daemon:
            await wait_caught_up(pg, db, daemon)
    finally:
        if daemon and daemon.alive:
            daemon.kill()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await open_rejects(pg) == []
    rows = [tuple(r) for r in await pg.fetch("SELECT id, note, views FROM t ORDER BY id")]
    src = _app(db)
    want = src.execute("SELECT id, note FROM t ORDER BY id").fetchall()
    src.close()
    assert [r[:2] for r in rows] == want
    assert [r[2] for r in rows] == [None] * 6  # left NULL after the drop (the copy again)


async def test_a_not_null_column_dropped_before_the_first_copy(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """`init` creates the table with the column NOT NULL; the app's migration drops it before the
    first `run` copies anything (fuzz seed 3004020: a daemon killed at once, then the rebuild):
    the copy must store every row, not reject each for the NULL it leaves there."""
    db = tmp_path / "app.sqlite"
    conn, cfg = _initialised(db, make_config)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.executescript(REBUILD)
    conn.execute("INSERT INTO t (id, note) VALUES (6, 'after')")
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await open_rejects(pg) == []
    rows = [tuple(r) for r in await pg.fetch("SELECT id, note, views FROM t ORDER BY id")]
    assert rows == [(i, f"n{i}", None) for i in range(1, 6)] + [(6, "after", None)]
