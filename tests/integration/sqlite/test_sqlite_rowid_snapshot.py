"""The snapshot of a table with a declared TEXT key pages it by rowid: killed, renumbered, resumed.

The copy of such a table reads it in rowid order (docs/architecture.md, "Paging by rowid"),
in chunks committed with their cursor, so a SIGKILL resumes after the last one. Between the
kill and the resume the rowids are renumbered with no trigger firing — a ``.dump`` reloaded
and restored over the file (in place, with SQLite's backup API, or renamed over it), after a
``VACUUM`` — while rows were deleted below the cursor: rows the copy had not read yet move
below it. Or the app moves rows it already copied past the cursor (``INSERT OR REPLACE``, a
delete and an insert of the same key), which would read them twice: the second COPY of a
key is refused (a reject, resolved by the catch-up; a strict stream stops). Either way, after the
resume every row must be in PostgreSQL exactly once and equal, with no reject ever, and
``syncd verify`` must exit 0.

(SQLite 3.40's ``VACUUM`` keeps the rowids of a table with an index, and a declared TEXT key
has one; SQLite only promises to keep those of an INTEGER PRIMARY KEY. The reload renumbers
them here, as a ``VACUUM`` of another version may.)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_syncd
from tests.workload import Daemon, open_rejects, stored_checkpoint

CHUNK = 200
ROWS = 3000


def create(db: Path) -> None:
    """3,000 documents under random UUID keys; then every third deleted (gaps all along)."""
    rng = random.Random(7)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE documents (id TEXT PRIMARY KEY, body TEXT NOT NULL, n INTEGER)")
    conn.executemany("INSERT INTO documents VALUES (?, ?, ?)",
                     [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"body {i}", i)
                      for i in range(ROWS)])
    conn.execute("DELETE FROM documents WHERE n % 3 = 1")
    conn.close()


def rowids(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, rowid FROM documents"))
    finally:
        conn.close()


def reload(db: Path, *, in_place: bool) -> None:
    """VACUUM, then `.dump` into a new file (each row numbered again) and that file restored
    over *db*: in place with the backup API (the shell's `.restore`; same inode) or renamed."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    script = "\n".join(conn.iterdump())
    conn.close()
    new = db.with_name("reloaded.sqlite")
    out = sqlite3.connect(new, isolation_level=None)
    out.executescript(script)
    if in_place:
        target = sqlite3.connect(db)
        out.backup(target)
        target.close()
        out.close()
        new.unlink()
    else:
        out.close()
        os.replace(new, db)


def move_copied_rows(db: Path, keys: list[str]) -> None:
    """The app rewrites rows that were copied already: each gets a new rowid past the cursor."""
    conn = sqlite3.connect(db, isolation_level=None)
    for k in keys[:5]:
        conn.execute("INSERT OR REPLACE INTO documents VALUES (?, 'replaced', -1)", (k,))
    for k in keys[5:8]:
        conn.execute("DELETE FROM documents WHERE id = ?", (k,))
        conn.execute("INSERT INTO documents VALUES (?, 'deleted and inserted again', -2)", (k,))
    conn.execute("INSERT INTO documents VALUES ('zzz-new', 'new', 0)")
    conn.close()


async def copied_keys(pg: asyncpg.Connection) -> list[str]:
    return [r[0] for r in await pg.fetch("SELECT id FROM documents ORDER BY id")]


async def assert_every_row_once(pg: asyncpg.Connection, db: Path, cfg: Path) -> None:
    conn = sqlite3.connect(db)
    held = sorted(conn.execute("SELECT id, body, n FROM documents"))
    conn.close()
    got = sorted(tuple(r) for r in await pg.fetch("SELECT id, body, n FROM documents"))
    missing = sorted(set(held) - set(got))
    extra = sorted(set(got) - set(held))
    assert (len(got), missing, extra) == (len(held), [], []), \
        f"{len(held)} rows in SQLite, {len(got)} in PostgreSQL; missing {missing[:5]}, extra {extra[:5]}"
    assert not await open_rejects(pg)
    # none resolved either: a row read twice would have been refused once (and stopped a strict stream)
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def kill_mid_table(tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> tuple[Path, Path]:
    db = tmp_path / "app.sqlite"
    create(db)
    cfg = make_config(db, chunk_rows=CHUNK)
    run_syncd("--config", str(cfg), "init")
    rc = await Daemon(cfg, tmp_path / "syncd.log", kill_at="chunk:4").wait()
    assert rc == -signal.SIGKILL, f"exit {rc}"
    cp = await stored_checkpoint(pg)
    assert cp is not None and cp[1] is not None and not cp[1]["complete"]
    assert cp[1]["copied"] == {"documents": 4 * CHUNK}, cp
    assert "$rowid" in cp[1]["last_key"]["documents"][0], "documents is not paged by rowid"
    return db, cfg


@pytest.mark.parametrize("in_place", [True, False], ids=["restored-in-place", "renamed-over"])
async def test_rowids_renumbered_between_kill_and_resume(tmp_path: Path, make_config: Any,
                                                         pg: asyncpg.Connection, in_place: bool) -> None:
    db, cfg = await kill_mid_table(tmp_path, make_config, pg)
    before = rowids(db)
    reload(db, in_place=in_place)
    after = rowids(db)
    assert before.keys() == after.keys()
    moved = sum(before[k] != after[k] for k in before)
    assert moved > len(before) // 2, f"only {moved} rows renumbered: the test would prove nothing"
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_every_row_once(pg, db, cfg)


async def test_copied_rows_moved_past_the_cursor_by_the_app(tmp_path: Path, make_config: Any,
                                                            pg: asyncpg.Connection) -> None:
    db, cfg = await kill_mid_table(tmp_path, make_config, pg)
    move_copied_rows(db, await copied_keys(pg))
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_every_row_once(pg, db, cfg)


async def test_moved_renumbered_and_killed_again(tmp_path: Path, make_config: Any,
                                                            pg: asyncpg.Connection) -> None:
    """Both at once, and a second kill after the renumbering was noticed."""
    db, cfg = await kill_mid_table(tmp_path, make_config, pg)
    move_copied_rows(db, await copied_keys(pg))
    reload(db, in_place=True)
    rc = await Daemon(cfg, tmp_path / "syncd.log", kill_at="chunk:2").wait()
    assert rc == -signal.SIGKILL, f"exit {rc}"
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await assert_every_row_once(pg, db, cfg)
