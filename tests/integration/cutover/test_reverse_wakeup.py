"""The reverse streams wake for a change that becomes readable without a new NOTIFY.

A change in PostgreSQL is read only once it is below the changelog's safe horizon
(:mod:`syncd.pg.changelog`): no transaction that began before it may still be open. When
the change's NOTIFY arrives while another transaction is open, the first read finds
nothing safe; that transaction's end sends no NOTIFY. The change must still come back to
SQLite soon after, not a whole ``stream.poll_interval`` later — during a rollback's drain
the app is fenced and nothing else wakes the stream, so the wait is the app's pause.

Real SQLite file, real PostgreSQL, the real daemon and commands as subprocesses, and the
reference app for the cutover. The poll interval is ten minutes, so a stream that waits
for it never delivers within the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from tests.conftest import REPO, syncd_cmd
from tests.integration.cutover_support import Migration

pytestmark = pytest.mark.asyncio

POLL_INTERVAL = 600.0


def sqlite_user(db: Path, uid: int) -> tuple[object, ...] | None:
    conn = sqlite3.connect(db)
    try:
        row: tuple[object, ...] | None = conn.execute("SELECT id, email FROM users WHERE id = ?",
                                                      (uid,)).fetchone()
        return row
    finally:
        conn.close()


def cut_over(m: Migration) -> None:
    """The app cut over to PostgreSQL, then stopped; the reverse stream caught up."""
    m.start(rate=20)
    time.sleep(0.5)
    assert m.switch("cutover")["ok"]
    time.sleep(0.5)
    m.stop_app()
    m.wait_streaming("postgres→sqlite")


@contextlib.asynccontextmanager
async def insert_behind_open_transaction(pg_dsn: str, uid: int, email: str) -> AsyncIterator[Transaction]:
    """A transaction holding an xid (and writing nothing captured) stays open while another
    commits the insert of user *uid*; yields the open one, to be ended by the caller."""
    blocker = await asyncpg.connect(pg_dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")
        writer = await asyncpg.connect(pg_dsn)
        try:
            await writer.execute("INSERT INTO users (id, email, name, created_at) "
                                 "VALUES ($1, $2, 'Held', '2026-12-07 03:00:00')", uid, email)
        finally:
            await writer.close()
        yield tx
    finally:
        await blocker.close()


async def test_a_change_held_back_by_an_open_transaction_arrives_when_it_ends(tmp_path: Path,
                                                                              pg_dsn: str) -> None:
    m = Migration(tmp_path, pg_dsn, poll_interval=POLL_INTERVAL)
    try:
        cut_over(m)
        uid = 987_654_321
        async with insert_behind_open_transaction(pg_dsn, uid, "late@example.com") as tx:
            await asyncio.sleep(1.0)  # the NOTIFY has been read; the change is above the horizon
            assert sqlite_user(m.db, uid) is None, "read past an open transaction's ids"
            await tx.rollback()
        deadline = time.monotonic() + 30
        while sqlite_user(m.db, uid) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sqlite_user(m.db, uid) == (uid, "late@example.com"), (
            f"the change did not reach SQLite within 30 s of the open transaction's end "
            f"(poll interval {POLL_INTERVAL:g} s)\n{m.daemon_log.read_text()[-2000:]}")
        assert m.stop_daemon() == 0
    finally:
        m.close()


async def test_run_until_caught_up_waits_for_a_change_held_back_by_an_open_transaction(
        tmp_path: Path, pg_dsn: str) -> None:
    """`syncd run --until-caught-up` exits 0 only when every change committed before it
    looked is applied — also one that an open transaction holds behind the horizon."""
    m = Migration(tmp_path, pg_dsn)
    try:
        cut_over(m)
        assert m.stop_daemon() == 0
        uid = 987_654_322
        async with insert_behind_open_transaction(pg_dsn, uid, "held@example.com") as tx:
            run = await asyncio.create_subprocess_exec(
                *syncd_cmd("--config", str(m.config), "run", "--until-caught-up", "--timeout", "60"),
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            finished = asyncio.ensure_future(run.communicate())
            ended_early = bool((await asyncio.wait({finished}, timeout=3.0))[0])
            await tx.rollback()
        out, _ = await asyncio.wait_for(finished, 60)
        text = out.decode(errors="replace")
        assert run.returncode == 0, text[-2000:]
        assert sqlite_user(m.db, uid) == (uid, "held@example.com"), (
            f"`run --until-caught-up` exited 0 (ended while the transaction was open: {ended_early}) "
            f"without the committed change in SQLite\n{text[-2000:]}")
    finally:
        m.close()
