"""The app migrates its SQLite schema while syncd streams, or while syncd is stopped.

Three kinds of migration, each made by the app while it keeps writing:

- ``ALTER TABLE users ADD COLUMN email … DEFAULT …``: old triggers would keep logging images
  without ``email``, and the existing rows' default would never reach PostgreSQL;
- the table rebuild ORMs do for other changes (new table, copy, drop, rename), here adding a
  REAL column to ``posts``: the old table's triggers go with it, so nothing would be logged;
- a new table (``tags``) that syncd has never captured.

After each, syncd re-installs capture, adds the columns to the tables it created and copies
the changed tables again, then streams on. The test reads every row of every table back from
both stores and compares them, values included; a write the app made in the window between
its migration and syncd's re-capture that is missing or stale in PostgreSQL fails it.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.workload import Daemon, open_rejects, sqlite_scalar, stored_checkpoint, wait_caught_up

TABLES = ("users", "posts", "tags")


def create(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), body TEXT);
        CREATE INDEX posts_user ON posts (user_id);
    """)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"user {i}") for i in range(1, 501)])
    conn.executemany("INSERT INTO posts VALUES (?, ?, ?)",
                     [(i, 1 + i % 500, f"post {i}") for i in range(1, 1001)])
    conn.execute("COMMIT")
    conn.close()


class App(threading.Thread):
    """Writes users, posts and (once it exists) tags, one transaction each, with whatever
    columns the schema has at the time; waits on the lock like an app with a busy timeout."""

    def __init__(self, db: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=30)
        try:
            while not self.stop.is_set():
                self._one(conn)
                self.writes += 1
                time.sleep(0.002)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            conn.close()

    def _columns(self, conn: sqlite3.Connection, table: str) -> list[str]:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]

    def _one(self, conn: sqlite3.Connection) -> None:
        r = self.rng
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        table = r.choice([t for t in TABLES if t in tables])
        cols = self._columns(conn, table)
        key = r.randrange(1, 700 if table != "tags" else 100)
        kind = r.random()
        if kind < 0.15:
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (key,))
            return
        values: dict[str, Any] = {"id": key}
        for c in cols[1:]:
            if c == "user_id":
                values[c] = r.randrange(1, 500)
            elif c == "score":
                values[c] = r.random() * 100
            else:
                values[c] = f"{c} {r.randrange(10**6)}"
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        sets = ", ".join(f"{c} = excluded.{c}" for c in values if c != "id")
        conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks}) "
                     f"ON CONFLICT (id) DO UPDATE SET {sets}", tuple(values.values()))


def migrate(db: Path, script: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


ADD_COLUMN = "ALTER TABLE users ADD COLUMN email TEXT DEFAULT 'nobody@example.com'"
REBUILD = """
    CREATE TABLE posts_new (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), body TEXT,
                            score REAL NOT NULL DEFAULT 1.5);
    INSERT INTO posts_new (id, user_id, body) SELECT id, user_id, body FROM posts;
    DROP TABLE posts;
    ALTER TABLE posts_new RENAME TO posts;
    CREATE INDEX posts_user ON posts (user_id)
"""
NEW_TABLE = "CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT); INSERT INTO tags VALUES (1, 'first')"


def sqlite_table(db: Path, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY id")
        return [d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


async def assert_same(pg: asyncpg.Connection, db: Path, tables: tuple[str, ...] = TABLES) -> None:
    for table in tables:
        cols, rows = await asyncio.to_thread(sqlite_table, db, table)
        got = [tuple(r) for r in await pg.fetch(
            f"SELECT {', '.join(cols)} FROM {table} ORDER BY id")]
        want = {r[0]: r for r in rows}
        have = {r[0]: r for r in got}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        changed = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        assert not (missing or extra or changed), (
            f"{table}: missing {missing[:10]}, extra {extra[:10]}, "
            f"changed {[(want[k], have[k]) for k in changed[:5]]}")


async def test_migrations_while_streaming_are_followed(tmp_path: Path, make_config: Any,
                                                       pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db, chunk_rows=100)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    app = App(db, seed=random.randrange(2**32))
    try:
        await wait_caught_up(pg, db, daemon)
        app.start()
        for script in (ADD_COLUMN, REBUILD, NEW_TABLE):
            await asyncio.sleep(1.0)
            await asyncio.to_thread(migrate, db, script)
        await asyncio.sleep(1.5)
        app.stop.set()
        await asyncio.to_thread(app.join, 30)
        assert app.error is None, app.error
        assert app.writes > 100, app.writes
        await wait_caught_up(pg, db, daemon)
        await assert_same(pg, db)
        assert await open_rejects(pg) == []
        # the copied tables get their foreign key back once the stream has caught up
        deadline = time.monotonic() + 30
        while not await pg.fetchval("SELECT count(*) FROM pg_constraint WHERE conname = 'posts_fk0'"):
            assert time.monotonic() < deadline, daemon.tail()
            await asyncio.sleep(0.2)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        app.stop.set()
        if daemon.alive:
            daemon.kill()
    log = daemon.log.read_text()
    assert "schema changed while streaming" in log, daemon.tail()
    assert "Traceback" not in log, daemon.tail(80)


async def test_migration_while_stopped_then_killed_while_copying_again(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db, chunk_rows=100)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_same(pg, db, ("users", "posts"))

    # syncd is down: the app migrates and writes
    await asyncio.to_thread(migrate, db, ADD_COLUMN)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE users SET email = 'u' || id || '@example.com' WHERE id % 3 = 0")
    conn.execute("INSERT INTO users (id, name, email) VALUES (9001, 'late', 'late@example.com')")
    conn.close()

    # killed after the second chunk of the copy that follows
    killed = Daemon(cfg, tmp_path / "daemon.log", kill_at="chunk:2")
    assert await killed.wait() != 0
    position, state = await stored_checkpoint(pg) or (None, None)
    assert state is not None and not state.get("complete"), state
    assert state["done"] == ["posts"] and state["copied"].get("users") == 200, state

    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_same(pg, db, ("users", "posts"))
    assert await pg.fetchval("SELECT email FROM users WHERE id = 1") == "nobody@example.com"
    copied_from = await pg.fetchval("SELECT copied_from FROM syncd.objects WHERE object = 'users'")
    since = sqlite_scalar(db, "SELECT since FROM _syncd_captured WHERE tbl = 'users'")
    assert copied_from == since and position is not None and since >= position


async def test_a_column_the_adopted_table_lacks_stops_the_stream_with_its_name(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """A table the app's own PostgreSQL migrations made is not altered by syncd: the stream stops
    and says which column to add; once it is there, the table is copied again."""
    db = tmp_path / "app.sqlite"
    create(db)
    await pg.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    try:
        await wait_caught_up(pg, db, daemon)
        await asyncio.to_thread(migrate, db, ADD_COLUMN)
        code = await daemon.wait(within=60)
    finally:
        if daemon.alive:
            daemon.kill()
    assert code == 1, daemon.tail()
    assert "has no column 'email'" in daemon.tail(), daemon.tail()
    assert "Traceback" not in daemon.log.read_text(), daemon.tail(80)

    await pg.execute("ALTER TABLE users ADD COLUMN email text")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_same(pg, db, ("users", "posts"))
    assert await pg.fetchval("SELECT count(*) FROM users WHERE email = 'nobody@example.com'") == 500
