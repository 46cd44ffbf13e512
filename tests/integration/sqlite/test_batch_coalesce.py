"""A batch is applied as each key's last change, grouped by table (two statements per table
instead of one round trip per run of same-table changes); where PostgreSQL refuses that
order — a unique value moving between rows, a foreign key it checks at once — the batch is
applied again in its own order. Either way the target must end as the source is: checked
here by reading both stores, and by `syncd verify`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_syncd
from tests.workload import open_rejects

SCHEMA = """
    CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE children (id TEXT PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parents(id),
                           email TEXT NOT NULL UNIQUE, n INTEGER);
"""


def _app(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _seed(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO parents VALUES (?, ?)", [(i, f"p{i}") for i in range(1, 6)])
    conn.executemany("INSERT INTO children VALUES (?, ?, ?, ?)",
                     [(f"c{i}", 1 + i % 5, f"c{i}@x", i) for i in range(1, 11)])


def _backlog(conn: sqlite3.Connection) -> None:
    """Changes interleaved across both tables, keys recurring, in a few transactions."""
    conn.execute("BEGIN")
    for n in range(5):  # one key updated again and again: its last row must win
        conn.execute("UPDATE children SET n = ? WHERE id = 'c1'", (100 + n,))
        conn.execute("UPDATE parents SET name = ? WHERE id = 1", (f"p1-{n}",))
    conn.execute("INSERT INTO parents VALUES (10, 'new parent')")
    conn.execute("INSERT INTO children VALUES ('c20', 10, 'c20@x', 20)")  # child of a new parent
    conn.execute("INSERT INTO children VALUES ('gone', 10, 'gone@x', 0)")  # inserted, then deleted
    conn.execute("DELETE FROM children WHERE id = 'gone'")
    conn.execute("DELETE FROM children WHERE id = 'c2'")  # deleted, then inserted anew
    conn.execute("INSERT INTO children VALUES ('c2', 10, 'c2-again@x', 2)")
    conn.execute("DELETE FROM children WHERE parent_id = 5")  # a parent and its children deleted
    conn.execute("DELETE FROM parents WHERE id = 5")
    conn.execute("COMMIT")
    conn.execute("BEGIN")  # a unique value moves from one row to another through a third value
    conn.execute("UPDATE children SET email = 'tmp@x' WHERE id = 'c3'")
    conn.execute("UPDATE children SET email = 'c3@x' WHERE id = 'c6'")
    conn.execute("UPDATE children SET email = 'c6@x' WHERE id = 'c3'")
    conn.execute("COMMIT")


def _rows(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "parents": conn.execute("SELECT id, name FROM parents ORDER BY id").fetchall(),
        "children": conn.execute("SELECT id, parent_id, email, n FROM children ORDER BY id").fetchall(),
    }


async def _target(pg: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "parents": [tuple(r) for r in await pg.fetch("SELECT id, name FROM parents ORDER BY id")],
        "children": [tuple(r) for r in await pg.fetch(
            "SELECT id, parent_id, email, n FROM children ORDER BY id COLLATE \"C\"")],
    }


def _big_rows(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO parents VALUES (?, ?)", [(i, f"p{i}") for i in range(100, 300)])
    conn.executemany("INSERT INTO children VALUES (?, ?, ?, ?)",
                     [(f"k{i}", 100 + i % 200, f"k{i}@x", i) for i in range(300)])
    conn.execute("COMMIT")


def _big_backlog(conn: sqlite3.Connection) -> None:
    """In one transaction, more rows per table than go by executemany (a staging table and one
    statement per table, :mod:`syncd.stores.postgres.staged`): inserts, updates of recurring
    keys, deletes of copied rows, keys deleted and inserted anew. (A unique value moving between
    rows makes PostgreSQL refuse the grouped statements; :func:`_backlog` has one.)"""
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO parents VALUES (?, ?)", [(i, f"p{i}") for i in range(300, 400)])
    for n in range(3):
        conn.executemany("UPDATE children SET n = ? WHERE id = ?",
                         [(n * 1000 + i, f"k{i}") for i in range(0, 300, 2)])
        conn.executemany("UPDATE parents SET name = ? WHERE id = ?",
                         [(f"p{i}-{n}", i) for i in range(100, 300, 3)])
    conn.executemany("DELETE FROM children WHERE id = ?", [(f"k{i}",) for i in range(0, 300, 3)])
    conn.executemany("INSERT INTO children VALUES (?, ?, ?, ?)",
                     [(f"k{i}", 300 + i % 100, f"k{i}-again@x", -i) for i in range(0, 300, 9)])
    conn.executemany("INSERT INTO children VALUES (?, ?, ?, ?)",
                     [(f"new{i}", 300 + i % 100, f"new{i}@x", i) for i in range(200)])
    conn.execute("COMMIT")


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("tables", ["created", "adopted"])
async def test_a_backlog_of_recurring_keys_ends_as_the_source(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection, tables: str, size: str) -> None:
    db = tmp_path / "app.sqlite"
    conn = _app(db)
    _seed(conn)
    if size == "large":
        _big_rows(conn)
    if tables == "adopted":  # the app's own tables: a foreign key checked at once, a unique constraint
        await pg.execute("CREATE TABLE parents (id bigint PRIMARY KEY, name text NOT NULL)")
        await pg.execute("CREATE TABLE children (id text PRIMARY KEY, parent_id bigint NOT NULL "
                         "REFERENCES parents(id), email text NOT NULL UNIQUE, n bigint)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    (_big_backlog if size == "large" else _backlog)(conn)
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await _target(pg) == _rows(conn)
    assert await open_rejects(pg) == []
    verify = run_syncd("--config", str(cfg), "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    conn.close()


async def test_keys_postgresql_holds_equal_in_a_large_batch_are_applied_change_by_change(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """Two JSON keys that differ as text are one jsonb value: one staged statement cannot write
    both (PostgreSQL refuses to update a row twice), so the batch goes change by change, as a
    batch of a few rows always did (the later row wins)."""
    db = tmp_path / "app.sqlite"
    conn = _app(db)
    conn.execute("CREATE TABLE docs (k JSON PRIMARY KEY, v INTEGER)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(f'{{"n": {i}}}', i) for i in range(100)])
    conn.execute("""INSERT INTO docs VALUES ('{"n":7}', 700)""")  # jsonb's {"n": 7} again
    conn.execute("COMMIT")
    run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=60)
    rows = {r["k"]: r["v"] for r in await pg.fetch("SELECT k::text AS k, v FROM docs")}
    assert len(rows) == 100
    assert rows['{"n": 7}'] == 700 and rows['{"n": 8}'] == 8
    conn.close()
