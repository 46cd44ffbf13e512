"""The automatic backups before `cutover` and `rollback` (``backup.auto``), with the reference app
writing: each is taken before the step's first change to a store, and `--json` output stays JSON."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.cutover import fence
from tests.integration.cutover_support import Migration


@pytest.fixture
def migration(tmp_path: Path, pg_dsn: str) -> Iterator[Migration]:
    m = Migration(tmp_path, pg_dsn)
    try:
        yield m
    finally:
        m.close()


def fences(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return fence.sqlite_fences(conn)
    finally:
        conn.close()


def taken(m: Migration, reason: str) -> list[Path]:
    return sorted(p for p in (m.dir / "state" / "backups").iterdir() if p.name.endswith(f"-{reason}"))


async def test_cutover_and_rollback_back_up_the_old_stores_first(migration: Migration) -> None:
    m = migration
    m.start(rate=50)
    assert len(taken(m, "init")) == 1
    await asyncio.sleep(0.5)
    assert m.switch("cutover")["ok"]
    [before_cutover] = taken(m, "cutover")
    copy = before_cutover / "sqlite" / m.db.name
    assert fences(m.db) and fences(copy) == [], "the backup was not taken before the fence"
    assert m.switch("rollback")["ok"]
    assert len(taken(m, "rollback")) == 1
