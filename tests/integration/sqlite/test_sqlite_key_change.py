"""The app rebuilds a table changing only its primary key, or only a NOT NULL, while syncd streams.

Column names and declared types stay the same, so a signature of those alone does not
change. After the rebuild the app writes rows only the new definition allows: two rows under
one old key (the key widened), a NULL where NOT NULL was dropped. syncd must re-capture the
table, give its PostgreSQL table the new primary key and nullability, and copy it again; the
test reads every row back from both stores.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.workload import Daemon, open_rejects, sqlite_scalar, wait_caught_up

SCHEMA = """
CREATE TABLE memberships (user_id INTEGER NOT NULL, group_id INTEGER NOT NULL, role TEXT,
                          PRIMARY KEY (user_id));
CREATE TABLE profiles (id INTEGER PRIMARY KEY, bio TEXT NOT NULL);
"""
REBUILD = """
CREATE TABLE memberships_new (user_id INTEGER NOT NULL, group_id INTEGER NOT NULL, role TEXT,
                              PRIMARY KEY (user_id, group_id));
INSERT INTO memberships_new SELECT * FROM memberships;
DROP TABLE memberships;
ALTER TABLE memberships_new RENAME TO memberships;
CREATE TABLE profiles_new (id INTEGER PRIMARY KEY, bio TEXT);
INSERT INTO profiles_new SELECT * FROM profiles;
DROP TABLE profiles;
ALTER TABLE profiles_new RENAME TO profiles;
"""
ORDER = {"memberships": "user_id, group_id", "profiles": "id"}


def sqlite_rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {ORDER[table]}")]
    finally:
        conn.close()


async def recaptured(db: Path, daemon: Daemon, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while await asyncio.to_thread(sqlite_scalar, db, "SELECT count(*) FROM sqlite_schema WHERE type = "
                                  "'trigger' AND tbl_name IN ('memberships', 'profiles')") < 6:
        daemon.ensure_alive()
        assert time.monotonic() < deadline, f"syncd did not capture the rebuilt tables:\n{daemon.tail()}"
        await asyncio.sleep(0.1)


async def test_primary_key_or_not_null_changed_by_a_rebuild(tmp_path: Path, make_config: Any,
                                                            pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO memberships VALUES (?, ?, ?)", [(u, 1, "member") for u in range(1, 51)])
    conn.executemany("INSERT INTO profiles VALUES (?, ?)", [(i, f"bio {i}") for i in range(1, 51)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    try:
        await wait_caught_up(pg, db, daemon)
        conn.execute("BEGIN IMMEDIATE")
        for statement in REBUILD.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
        conn.executemany("INSERT INTO memberships VALUES (?, 2, 'second group')",
                         [(u,) for u in range(1, 21)])
        conn.execute("UPDATE memberships SET role = 'owner' WHERE user_id = 3 AND group_id = 2")
        conn.execute("DELETE FROM memberships WHERE user_id = 4 AND group_id = 1")
        conn.executemany("INSERT INTO profiles VALUES (?, NULL)", [(i,) for i in range(51, 61)])
        conn.execute("UPDATE profiles SET bio = NULL WHERE id = 7")
        # those writes were not logged (the rebuild dropped the triggers): once syncd captures
        # the tables again, a logged write tells when its copy and replay are through
        await recaptured(db, daemon)
        conn.execute("UPDATE profiles SET bio = 'after re-capture' WHERE id = 1")
        await wait_caught_up(pg, db, daemon)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        if daemon.alive:
            daemon.kill()
        conn.close()
    for table, order in ORDER.items():
        held = await asyncio.to_thread(sqlite_rows, db, table)
        got = [tuple(r) for r in await pg.fetch(f"SELECT * FROM {table} ORDER BY {order}")]
        assert got == held, (f"{table}: only in SQLite {sorted(set(held) - set(got))[:10]}, "
                             f"only in PostgreSQL {sorted(set(got) - set(held))[:10]}")
    assert not await open_rejects(pg)
    key = await pg.fetchval("""SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conrelid = 'memberships'::regclass AND c.contype = 'p'""")
    assert key == ["user_id", "group_id"]
