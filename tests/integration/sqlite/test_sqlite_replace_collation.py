"""INSERT OR REPLACE over a UNIQUE index whose collation is NOCASE or RTRIM.

SQLite removes the row that conflicts on a UNIQUE index without firing its DELETE trigger,
so the sink deletes rows holding the same unique values under another key before it upserts.
"The same" is the index's collation: under NOCASE 'Alice' and 'alice' conflict (ASCII letters
only: 'É' and 'é' do not), under RTRIM 'abc' and 'abc  ' do. PostgreSQL compares bytes; the
test reads every row back from both stores after the app replaced rows across each kind.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.workload import open_rejects

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE UNIQUE, name TEXT);
CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT);
CREATE UNIQUE INDEX tags_label ON tags (label COLLATE NOCASE);
CREATE TABLE codes (id INTEGER PRIMARY KEY, code TEXT COLLATE RTRIM UNIQUE);
CREATE TABLE accounts (login TEXT COLLATE NOCASE PRIMARY KEY, plan TEXT);
"""
KEYS = {"users": "id", "tags": "id", "codes": "id", "accounts": "login"}


def rows(db: Path, table: str) -> dict[Any, tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        cur = conn.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        k = names.index(KEYS[table])
        return {r[k]: tuple(r) for r in cur.fetchall()}
    finally:
        conn.close()


async def test_replace_across_case_and_trailing_spaces(tmp_path: Path, make_config: Any,
                                                       pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO users VALUES (1, 'Alice@Example.com', 'alice'), (2, 'Élise@x', 'élise')")
    conn.execute("INSERT INTO tags VALUES (1, 'rust'), (2, 'Go')")
    conn.execute("INSERT INTO codes VALUES (1, 'abc'), (2, 'xyz')")
    conn.execute("INSERT INTO accounts VALUES ('Bob', 'free'), ('Carol', 'pro')")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    conn.execute("INSERT OR REPLACE INTO users VALUES (3, 'alice@example.COM', 'replaced')")
    conn.execute("INSERT INTO users VALUES (4, 'élise@x', 'not a conflict: NOCASE folds ASCII only')")
    conn.execute("REPLACE INTO tags VALUES (3, 'RUST')")
    conn.execute("INSERT INTO tags VALUES (4, 'go ') ON CONFLICT DO NOTHING")
    conn.execute("INSERT OR REPLACE INTO codes VALUES (3, 'abc  ')")
    conn.execute("INSERT OR REPLACE INTO accounts VALUES ('bob', 'team')")
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    problems = []
    for table, key in KEYS.items():
        held = rows(db, table)
        got = {r[key]: tuple(r) for r in await pg.fetch(f"SELECT * FROM {table}")}
        for k in sorted(held.keys() | got.keys()):
            if held.get(k) != got.get(k):
                problems.append(f"{table} {k!r}: SQLite {held.get(k)} != PostgreSQL {got.get(k)}")
    assert not problems, "\n".join(problems)
    assert not await open_rejects(pg)
