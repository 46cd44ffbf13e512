"""Tables without a primary key are keyed by rowid, and rowids can be renumbered under syncd.

No trigger fires when SQLite renumbers rowids: ``VACUUM`` compacts those of a table with
no INTEGER PRIMARY KEY and no index; a ``.dump`` reloaded into a new file numbers every such
table's rows from 1 again; ``VACUUM INTO`` writes a copy the app may swap in over the file.
Changes logged after that carry the new rowids while PostgreSQL holds the rows under the
old ones: left alone, an update lands on the wrong row and a delete leaves one behind.

Each test renumbers in one of the three ways — while syncd is stopped, or while it streams
— makes more changes, lets syncd catch up, and reads every row back from both stores, keyed
by rowid (PostgreSQL's ``_syncd_rowid``): equal rows under equal rowids, or the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_syncd
from tests.workload import Daemon, open_rejects, wait_caught_up

SCHEMA = """
CREATE TABLE notes (author TEXT, body TEXT);
CREATE TABLE pairs (a INTEGER, b INTEGER);
CREATE UNIQUE INDEX pairs_ab ON pairs (a, b);
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
"""
TABLES = {"notes": ("author", "body"), "pairs": ("a", "b"), "items": ("id", "name")}
"""Table -> columns. notes: VACUUM renumbers it (no index); pairs: VACUUM keeps its rowids
(it has an index) but a reload renumbers it; items: keyed by its INTEGER PRIMARY KEY."""


def create(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"a{i}", f"note {i}") for i in range(12)])
    conn.executemany("INSERT INTO pairs VALUES (?, ?)", [(i, i * 10) for i in range(12)])
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(12)])
    conn.close()


def make_gaps(db: Path) -> None:
    """Delete 4 rows of each table: rowids 2, 3, 4 and 8 are free afterwards."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM notes WHERE author IN ('a1', 'a2', 'a3', 'a7')")
    conn.execute("DELETE FROM pairs WHERE a IN (1, 2, 3, 7)")
    conn.execute("DELETE FROM items WHERE id IN (1, 2, 3, 7)")
    conn.close()


def change_after(db: Path) -> None:
    """An update, a delete and an insert per table, made after the renumbering."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE notes SET body = 'edited' WHERE author = 'a8'")
    conn.execute("DELETE FROM notes WHERE author = 'a9'")
    conn.execute("INSERT INTO notes VALUES ('new', 'after renumbering')")
    conn.execute("UPDATE pairs SET b = -1 WHERE a = 8")
    conn.execute("DELETE FROM pairs WHERE a = 9")
    conn.execute("INSERT INTO pairs VALUES (100, 1000)")
    conn.execute("UPDATE items SET name = 'edited' WHERE id = 8")
    conn.execute("INSERT INTO items VALUES (100, 'new')")
    conn.close()


def vacuum(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    conn.close()


def dump_and_reload(db: Path) -> None:
    """`sqlite3 app.db .dump | sqlite3 new.db`, then the new file renamed over the old."""
    new = db.with_name("reloaded.sqlite")
    cli = shutil.which("sqlite3")
    if cli is not None:
        dump = subprocess.run([cli, str(db), ".dump"], capture_output=True, text=True, check=True).stdout
        subprocess.run([cli, str(new)], input=dump, text=True, check=True, capture_output=True)
    else:  # the same dump, by Python's sqlite3 module
        src = sqlite3.connect(db)
        script = "\n".join(src.iterdump())
        src.close()
        out = sqlite3.connect(new, isolation_level=None)
        out.executescript(script)
        out.close()
    os.replace(new, db)


def vacuum_into(db: Path) -> None:
    new = db.with_name("compacted.sqlite")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM INTO ?", (str(new),))
    conn.close()
    os.replace(new, db)


RENUMBER: dict[str, Callable[[Path], None]] = {
    "vacuum": vacuum, "dump_reload": dump_and_reload, "vacuum_into": vacuum_into}


def rowids(db: Path, table: str) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute(f"SELECT rowid FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def sqlite_rows(db: Path, table: str) -> dict[int, tuple[Any, ...]]:
    cols = ", ".join(TABLES[table])
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT rowid, {cols} FROM {table}")}
    finally:
        conn.close()


async def assert_same_rows(pg: asyncpg.Connection, db: Path) -> None:
    """Every table, row by row, under the same key (rowid, or the primary key) in both stores."""
    problems: list[str] = []
    for table, cols in TABLES.items():
        held = await asyncio.to_thread(sqlite_rows, db, table)
        key = "id" if table == "items" else "_syncd_rowid"
        got = {r[0]: tuple(r[1:]) for r in await pg.fetch(f"SELECT {key}, {', '.join(cols)} FROM {table}")}
        for k in sorted(held.keys() | got.keys()):
            if held.get(k) != got.get(k):
                problems.append(f"{table} rowid {k}: SQLite {held.get(k)} != PostgreSQL {got.get(k)}")
    assert not problems, "\n".join(problems)


async def test_vacuum_while_stopped_then_an_update(tmp_path: Path, make_config: Any,
                                                  pg: asyncpg.Connection) -> None:
    """The reported case: 12 rows, copy, delete 4, VACUUM, update one; caught up, and verify."""
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    make_gaps(db)
    before = rowids(db, "notes")
    vacuum(db)
    assert rowids(db, "notes") != before, "VACUUM did not renumber: the test would prove nothing"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE notes SET body = 'edited' WHERE author = 'a8'")
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_same_rows(pg, db)
    assert not await open_rejects(pg)
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("way", sorted(RENUMBER))
async def test_renumbered_while_stopped(tmp_path: Path, make_config: Any, pg: asyncpg.Connection,
                                        way: str) -> None:
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    make_gaps(db)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # the deletes are in PostgreSQL too
    RENUMBER[way](db)
    change_after(db)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_same_rows(pg, db)
    assert not await open_rejects(pg)


def open_files(pid: int) -> list[str]:
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            held.append(os.readlink(fd))
    return held


async def let_go_of_replaced_file(daemon: Daemon, db: Path, within: float = 60) -> None:
    """Wait until the daemon no longer holds a file that was at *db* open (Linux /proc)."""
    deadline = time.monotonic() + within
    while True:
        daemon.ensure_alive()
        if f"{db} (deleted)" not in await asyncio.to_thread(open_files, daemon.proc.pid):
            return
        assert time.monotonic() < deadline, f"syncd still reads the replaced file:\n{daemon.tail()}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("way", sorted(RENUMBER))
async def test_renumbered_while_streaming(tmp_path: Path, make_config: Any, pg: asyncpg.Connection,
                                          way: str) -> None:
    """The daemon runs throughout; the deletes before the renumbering are streamed first.

    A file renamed over another is followed: syncd re-opens the path. SQLite warns that a
    connection left on a file renamed over may take the new file's journal for its own (the
    app's next transaction then fails with "disk I/O error"), so the app writes once syncd let
    go of the old file. The database is in rollback-journal mode: a WAL database renamed over
    while open would meet the old file's ``-wal``.
    """
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    try:
        await wait_caught_up(pg, db, daemon)
        make_gaps(db)
        await wait_caught_up(pg, db, daemon)
        RENUMBER[way](db)
        if way != "vacuum":  # SQLite: a file renamed over while a connection has it open corrupts
            await let_go_of_replaced_file(daemon, db)  # the new one, so the app waits for syncd
        change_after(db)
        await wait_caught_up(pg, db, daemon, within=90)
        await assert_same_rows(pg, db)
        assert not await open_rejects(pg)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        if daemon.alive:
            daemon.kill()
