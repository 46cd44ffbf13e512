"""SQLite files whose path holds characters that mean something in a URI (``#``, ``?``, ``%``).

syncd opens SQLite through ``file:`` URIs (read-only for verify and the cutover's checks, read-write
for the source): an unescaped ``#`` ends the path, ``?`` starts the parameters and ``%`` escapes, so
such a path opened another file or none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import run_syncd


@pytest.mark.parametrize("name", ["app#1.sqlite", "what?.sqlite", "100%.sqlite", "a b.sqlite"])
async def test_init_run_verify_on_a_path_with_uri_characters(
        tmp_path: Path, make_config: Callable[..., Path], pg: asyncpg.Connection, name: str) -> None:
    folder = tmp_path / "data #%?"
    folder.mkdir()
    db_path = folder / name
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"note {i}") for i in range(1, 51)])
    db.commit()
    cfg = make_config(db_path)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    db.execute("UPDATE notes SET body = 'changed' WHERE id = 7")
    db.commit()
    db.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    rows = await pg.fetch("SELECT id, body FROM notes ORDER BY id")
    expected = [(i, "changed" if i == 7 else f"note {i}") for i in range(1, 51)]
    assert [(r["id"], r["body"]) for r in rows] == expected
    done = run_syncd("--config", str(cfg), "verify", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [name]
