"""A live app workload streamed into PostgreSQL: the copy equals the source, row by row.

A seeded writer runs random transactions (inserts, updates, deletes, primary-key
changes, rollbacks) over an app-shaped schema while ``syncd run`` copies and then
streams it. Once the writer stops and syncd has caught up, every table is read
back from both stores and compared. Set ``SYNCD_TEST_SEED`` to replay a seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from syncd.config import Target
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.postgres.tables import TargetTable, plan_table
from syncd.stores.sqlite.schema import discover
from syncd.verify.compare import compare_all
from tests.conftest import run_syncd
from tests.workload import (
    Daemon,
    Spec,
    Writer,
    WriterThread,
    connect,
    create_database,
    describe,
    differences,
    open_rejects,
    sqlite_scalar,
    status_json,
    stored_checkpoint,
    wait_caught_up,
)


def seed() -> int:
    return int(os.environ.get("SYNCD_TEST_SEED") or random.randrange(2**32))


async def syncd_mapping(db: Path, pg: asyncpg.Connection) -> list[TargetTable]:
    """The source tables and their target tables, as syncd maps them (read-only)."""
    conn = sqlite3.connect(db)
    try:
        tables = discover(conn, tables=None, exclude=(), no_primary_key="rowid")
    finally:
        conn.close()
    target = Target(dsn="unused")
    return [plan_table(t, target, await PostgresSink.existing_columns(pg, "public", t.name))
            for t in tables]


async def wait_pruned(db: Path, upto: int, daemon: Daemon, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        daemon.ensure_alive()
        left = await asyncio.to_thread(
            sqlite_scalar, db, "SELECT count(*) FROM _syncd_changelog WHERE id < ?", (upto,))
        if left == 0:  # the newest row stays (its id is the changelog's head)
            return
        assert time.monotonic() < deadline, f"{left} changelog rows at or below checkpoint {upto} " \
                                            f"still there after {within} s"
        await asyncio.sleep(0.2)


async def test_random_workload_converges_row_by_row(tmp_path: Path, make_config: Any,
                                                    pg: asyncpg.Connection) -> None:
    s = seed()
    db = tmp_path / "app.sqlite"
    create_database(db)
    app = Writer(db, s)
    app.populate(users=300, documents=900, tags=1200, orders=300, audit=600, settings=200,
                 sessions=300)
    cfg = make_config(db, chunk_rows=250, batch_size=200)
    run_syncd("--config", str(cfg), "init")
    head_before = sqlite_scalar(db, "SELECT count(*) FROM _syncd_changelog")
    assert head_before == 0  # rows that existed before init arrive by the snapshot

    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app).start()  # writes overlap the snapshot, then stream
    try:
        await writer.run_until(2000)
        daemon.ensure_alive()
        tally = writer.stop()
        position = await wait_caught_up(pg, db, daemon)
        status = (await status_json(cfg))["streams"][0]
        assert status["phase"] == "streaming" and status["pending"] == 0, status
        assert status["checkpoint"] == position
        await wait_pruned(db, position, daemon)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()

    assert tally.transactions >= 2000 and tally.rollbacks > 0
    assert position > 5000, "the workload should have produced many changes"
    diffs = await differences(db, pg)
    assert not diffs, describe(diffs, f"seed {s}", daemon.tail())
    assert not await open_rejects(pg), f"seed {s}: {await open_rejects(pg)}"
    # syncd's own comparison agrees
    by_table = await compare_all(str(db), pg, await syncd_mapping(db, pg))
    assert not any(by_table.values()), {k: [str(d) for d in v] for k, v in by_table.items() if v}
    cp = await stored_checkpoint(pg)
    assert cp is not None and cp[0] == position


async def test_primary_key_change_of_a_referenced_row(tmp_path: Path, make_config: Any,
                                                      pg: asyncpg.Connection) -> None:
    """UPDATE users SET id = ... cascades to the children (ON UPDATE CASCADE) in SQLite.

    SQLite runs the cascade before the parent's AFTER UPDATE trigger, so the
    changelog holds the children's new images before the parent's new key.
    """
    db = tmp_path / "app.sqlite"
    create_database(db)
    app = Writer(db, 1)
    app.populate(users=3, documents=6, tags=6, orders=3, audit=0, settings=0, sessions=3)
    app.close()
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot, then keys and indexes
    conn = connect(db)
    try:
        uid = conn.execute("SELECT owner_id FROM documents LIMIT 1").fetchone()[0]
        did = conn.execute("SELECT document_id FROM tags LIMIT 1").fetchone()[0]
        conn.execute("UPDATE users SET id = 1000 WHERE id = ?", (uid,))
        conn.execute("UPDATE documents SET id = 2000 WHERE id = ?", (did,))
    finally:
        conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    diffs = await differences(db, pg)
    assert not diffs and not await open_rejects(pg), describe(diffs, *await open_rejects(pg))


async def test_insert_or_replace_that_removes_another_row(tmp_path: Path, make_config: Any,
                                                          pg: asyncpg.Connection) -> None:
    """INSERT OR REPLACE deletes the row holding a conflicting UNIQUE value.

    SQLite fires no DELETE trigger for that row unless the app's connection turned
    ``recursive_triggers`` on, so the delete is not in the changelog.
    """
    db = tmp_path / "app.sqlite"
    create_database(db)
    conn = connect(db)
    conn.execute("INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'first'), "
                 "(2, 'b@example.com', 'second')")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    try:
        conn.execute("INSERT OR REPLACE INTO users (id, email, name) VALUES (3, 'a@example.com', 'new')")
    finally:
        conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    diffs = await differences(db, pg)
    assert not diffs and not await open_rejects(pg), describe(diffs, *await open_rejects(pg))


def reals_quote_rounds(n: int = 40) -> list[float]:
    """Doubles that SQLite's quote() writes with too few digits to read them back exactly.

    quote() tries 15 significant digits and checks them with SQLite's own text-to-double
    conversion, which is not exact; for about 1 double in 5,000 it accepts a string that
    correctly parses to a neighbouring double. Found by search, so that the test keeps
    its meaning with any SQLite build (with an exact quote() the list is just empty).
    """
    rng = random.Random(3)
    conn = sqlite3.connect(":memory:")
    found: list[float] = []
    try:
        for _ in range(200_000):
            x = rng.uniform(-1e6, 1e6)
            if float(conn.execute("SELECT quote(?)", (x,)).fetchone()[0]) != x:
                found.append(x)
                if len(found) == n:
                    break
    finally:
        conn.close()
    return found


async def test_real_values_arrive_exactly_by_the_stream(tmp_path: Path, make_config: Any,
                                                        pg: asyncpg.Connection) -> None:
    values = [586194.9460374881, 0.1 + 0.2, 1 / 3, 2.0**-1074, 1.7976931348623157e308,
              time.time(), *reals_quote_rounds()]
    db = tmp_path / "app.sqlite"
    conn = connect(db)
    conn.execute("CREATE TABLE measurements (id INTEGER PRIMARY KEY, x REAL)")
    conn.executemany("INSERT INTO measurements VALUES (?, ?)", list(enumerate(values)))
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # by the snapshot
    conn.executemany("INSERT INTO measurements VALUES (?, ?)",
                     [(1000 + i, v) for i, v in enumerate(values)])  # by the stream
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = dict(sqlite3.connect(db).execute("SELECT id, x FROM measurements").fetchall())
    got = dict(await pg.fetch("SELECT id, x FROM measurements"))
    assert got.keys() == held.keys()
    wrong = {i: (held[i], got[i]) for i in held if got[i] != held[i]}
    assert not wrong, f"{len(wrong)} of {len(held)} REAL values changed on the way: " + ", ".join(
        f"id {i}: {a!r} -> {b!r}" for i, (a, b) in list(wrong.items())[:8])


async def test_vacuum_then_changes_to_a_table_without_primary_key(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """VACUUM renumbers the rowids of a table without INTEGER PRIMARY KEY, and fires no trigger.

    The copy is keyed by the old rowids; later changes carry the new ones. syncd notices (the
    rowids no longer add up to what its changelog accounts for) and copies the table again:
    the same rows under the same rowids in both stores.
    """
    db = tmp_path / "app.sqlite"
    conn = connect(db)
    conn.execute("CREATE TABLE notes (author TEXT, body TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"a{i}", f"note {i}") for i in range(20)])
    conn.execute("DELETE FROM notes WHERE author IN ('a1', 'a2', 'a3', 'a7')")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    conn.execute("VACUUM")
    conn.execute("UPDATE notes SET body = 'edited' WHERE author = 'a8'")
    conn.execute("DELETE FROM notes WHERE author = 'a9'")
    conn.execute("INSERT INTO notes VALUES ('new', 'after vacuum')")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = {r[0]: tuple(r[1:]) for r in conn.execute("SELECT rowid, author, body FROM notes")}
    conn.close()
    got = {r[0]: tuple(r[1:]) for r in await pg.fetch("SELECT _syncd_rowid, author, body FROM notes")}
    wrong = {k: (held.get(k), got.get(k)) for k in held.keys() | got.keys() if held.get(k) != got.get(k)}
    assert not wrong, "rowid: (SQLite, PostgreSQL) " + "; ".join(
        f"{k}: {v}" for k, v in sorted(wrong.items()))


async def test_capture_reinstalled_after_uninstall(tmp_path: Path, make_config: Any,
                                                   pg: asyncpg.Connection) -> None:
    """`uninstall` drops the changelog and keeps the checkpoint; `init` makes a new changelog.

    The new changelog numbers its changes from 1 again, below the kept checkpoint.
    Either syncd notices (copies again, or refuses with an error) or the copy is equal.
    """
    db = tmp_path / "app.sqlite"
    conn = connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    for i in range(300):
        conn.execute("INSERT INTO items VALUES (?, ?)", (i, f"item {i}"))
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    cp = await stored_checkpoint(pg)
    assert cp is not None and cp[0] >= 300
    triggers = "SELECT count(*) FROM pg_trigger WHERE tgname = 'syncd_capture'"
    assert await pg.fetchval(triggers) == 1  # reverse capture, installed by init
    run_syncd("--config", str(cfg), "uninstall")
    assert await pg.fetchval(triggers) == 0
    assert await pg.fetchval("SELECT to_regclass('syncd.changelog')") is None
    run_syncd("--config", str(cfg), "init")
    conn.execute("UPDATE items SET name = 'renamed' WHERE id < 10")
    conn.execute("DELETE FROM items WHERE id >= 290")
    conn.execute("INSERT INTO items VALUES (1000, 'new')")
    conn.close()
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    if proc.returncode != 0:  # refusing, and saying why, is an acceptable answer
        assert "changelog" in (proc.stdout + proc.stderr).lower(), proc.stderr
        return
    diffs = await differences(db, pg, [Spec("items", (("id", "int"), ("name", "text")), ("id",))])
    assert not diffs, describe(diffs, f"checkpoint kept at {cp[0]}")


async def test_case_only_change_of_a_nocase_primary_key(tmp_path: Path, make_config: Any,
                                                        pg: asyncpg.Connection) -> None:
    """'Alice' -> 'alice' in a TEXT COLLATE NOCASE key: equal for SQLite, two keys in PostgreSQL."""
    db = tmp_path / "app.sqlite"
    conn = connect(db)
    conn.execute("CREATE TABLE accounts (login TEXT COLLATE NOCASE PRIMARY KEY, plan TEXT)")
    conn.execute("INSERT INTO accounts VALUES ('Alice', 'free'), ('Bob', 'pro')")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    conn.execute("UPDATE accounts SET login = 'alice' WHERE login = 'Alice'")
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    diffs = await differences(db, pg, [Spec("accounts", (("login", "text"), ("plan", "text")),
                                            ("login",))])
    assert not diffs, describe(diffs)
