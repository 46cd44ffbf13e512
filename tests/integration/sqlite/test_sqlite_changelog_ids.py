"""A changelog id is never given out twice, even after the prune removed every change read.

The changelog is a plain rowid table (no ``AUTOINCREMENT``: keeping ``sqlite_sequence`` costs
every captured write): SQLite gives a new row ``max(id) + 1``, so the prune keeps the newest
row. Were it gone, the next change would get an id at or below the checkpoint and be passed
over for good.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.workload import Daemon, sqlite_scalar, wait_caught_up


def write(db: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


async def wait_pruned(db: Path, daemon: Daemon, within: float = 60) -> None:
    """Until the changelog holds one row (the prune keeps the newest)."""
    deadline = time.monotonic() + within
    while await asyncio.to_thread(sqlite_scalar, db, "SELECT count(*) FROM _syncd_changelog") > 1:
        daemon.ensure_alive()
        assert time.monotonic() < deadline, daemon.tail()
        await asyncio.sleep(0.2)


async def test_changes_after_a_full_prune_and_a_restart_arrive(tmp_path: Path, make_config: Any,
                                                               pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    write(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    assert "AUTOINCREMENT" not in sqlite_scalar(
        db, "SELECT sql FROM sqlite_schema WHERE name = '_syncd_changelog'")

    for round_ in range(3):  # each round: changes, caught up, pruned to the newest, stopped
        daemon = Daemon(cfg, tmp_path / "syncd.log")
        try:
            for i in range(5):
                write(db, "INSERT INTO notes VALUES (?, ?)", round_ * 10 + i, f"r{round_}")
            write(db, "UPDATE notes SET body = 'edited' WHERE id = ?", round_ * 10)
            write(db, "DELETE FROM notes WHERE id = ?", round_ * 10 + 4)
            position = await wait_caught_up(pg, db, daemon)
            assert position == 7 * (round_ + 1)
            await wait_pruned(db, daemon)
            assert await daemon.terminate() == 0, daemon.tail()
        finally:
            if daemon.alive:
                daemon.kill()
        assert sqlite_scalar(db, "SELECT max(id) FROM _syncd_changelog") == position
        rows = sorted(tuple(r) for r in await pg.fetch("SELECT id, body FROM notes"))
        want = sorted((r * 10 + i, "edited" if i == 0 else f"r{r}")
                      for r in range(round_ + 1) for i in range(4))
        assert rows == want, f"round {round_}: {rows}"


def as_older_syncd_made_it(db: Path, *, prune_all: bool) -> None:
    """The changelog as an older syncd made it: ``AUTOINCREMENT``, same rows, same ids, the
    same triggers (and, with *prune_all*, every row pruned, as its prune did)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        triggers = conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' "
                                "AND instr(sql, '_syncd_changelog') > 0").fetchall()
        for name, _ in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("CREATE TEMP TABLE copy AS SELECT * FROM _syncd_changelog")
        conn.execute("DROP TABLE _syncd_changelog")
        conn.execute("CREATE TABLE _syncd_changelog (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, row TEXT, ts REAL NOT NULL)")
        conn.execute("INSERT INTO _syncd_changelog SELECT * FROM copy")
        if prune_all:
            conn.execute("DELETE FROM _syncd_changelog")
        for _, sql in triggers:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()


def changelog_sql(db: Path) -> str:
    return str(sqlite_scalar(db, "SELECT sql FROM sqlite_schema WHERE name = '_syncd_changelog'"))


async def test_init_makes_an_older_changelog_plain_mid_stream(tmp_path: Path, make_config: Any,
                                                              pg: asyncpg.Connection) -> None:
    """An upgrade: a changelog an older syncd made (``AUTOINCREMENT``), with changes not yet
    applied, or pruned empty; ``syncd init`` makes it a plain table, and no change is lost or
    applied under a reused id; nothing is copied again."""
    db = tmp_path / "app.sqlite"
    write(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")

    async def stream(expect: int) -> None:
        daemon = Daemon(cfg, tmp_path / "syncd.log")
        try:
            assert await wait_caught_up(pg, db, daemon) == expect
            assert await daemon.terminate() == 0, daemon.tail()
        finally:
            if daemon.alive:
                daemon.kill()

    for i in range(3):
        write(db, "INSERT INTO notes VALUES (?, 'a')", i)
    await stream(3)
    # pending changes in an AUTOINCREMENT changelog
    as_older_syncd_made_it(db, prune_all=False)
    assert "AUTOINCREMENT" in changelog_sql(db)
    write(db, "UPDATE notes SET body = 'b' WHERE id = 0")
    write(db, "INSERT INTO notes VALUES (3, 'c')")
    assert sqlite_scalar(db, "SELECT seq FROM sqlite_sequence WHERE name = '_syncd_changelog'") == 5
    out = run_syncd("--config", str(cfg), "init").stdout
    assert "already current" in out, out  # no table re-captured (and so none copied again)
    assert "AUTOINCREMENT" not in changelog_sql(db)
    assert sqlite_scalar(db, "SELECT group_concat(id) FROM _syncd_changelog") == "1,2,3,4,5"
    assert sqlite_scalar(db, "SELECT count(*) FROM sqlite_sequence WHERE name = '_syncd_changelog'") == 0
    await stream(5)

    # every row pruned by an older syncd: the head must survive the change of table
    as_older_syncd_made_it(db, prune_all=True)
    run_syncd("--config", str(cfg), "init")
    assert "AUTOINCREMENT" not in changelog_sql(db)
    assert sqlite_scalar(db, "SELECT max(id) FROM _syncd_changelog") == 5
    write(db, "DELETE FROM notes WHERE id = 1")
    write(db, "INSERT INTO notes VALUES (4, 'd')")
    await stream(7)
    rows = sorted(tuple(r) for r in await pg.fetch("SELECT id, body FROM notes"))
    assert rows == [(0, "b"), (2, "a"), (3, "c"), (4, "d")]
