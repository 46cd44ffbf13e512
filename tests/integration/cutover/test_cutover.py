"""Cutover and rollback end to end: the reference app writes all along; nothing acknowledged is lost.

Real SQLite file, real PostgreSQL, the real daemon and commands as subprocesses, and the
reference app (tests/app) writing at a steady rate and reloading on SIGHUP.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from syncd.cutover import fence
from tests.app import records
from tests.integration.cutover_support import Migration

TABLES = ("users", "documents")


@pytest.fixture
def migration(tmp_path: Path, pg_dsn: str) -> Iterator[Migration]:
    m = Migration(tmp_path, pg_dsn)
    try:
        yield m
    finally:
        m.close()


def sqlite_fences(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return fence.sqlite_fences(conn)
    finally:
        conn.close()


async def pg_fences(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await fence.pg_fenced(conn, "public")
    finally:
        await conn.close()


async def direction(dsn: str) -> tuple[str, str | None]:
    """The stored direction; no syncd.cutover (nothing was ever switched, or a refused or dry
    run, which create nothing) means forward."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('syncd.cutover') IS NOT NULL"):
            return "forward", None
        row = await conn.fetchrow("SELECT direction, operation FROM syncd.cutover WHERE id = 1")
        return str(row["direction"]), row["operation"]
    finally:
        await conn.close()


async def assert_converged(m: Migration, *, timeout: float = 30) -> dict[str, Any]:
    """Both stores hold exactly the acknowledged writes (waiting for the streams to drain)."""
    want = records.expected(m.records())
    want = {t: want.get(t, {}) for t in TABLES}  # the log is complete: the app has stopped
    deadline = time.monotonic() + timeout
    while True:
        in_sqlite = records.diff(want, records.read_sqlite(m.db, TABLES))
        in_pg = records.diff(want, await records.read_postgres(m.pg_dsn, TABLES))
        if not in_sqlite and not in_pg:
            return want
        if time.monotonic() > deadline:
            raise AssertionError(f"stores differ from the acknowledged writes:\n sqlite: {in_sqlite}\n"
                                 f" postgres: {in_pg}\n{m.daemon_log.read_text()[-3000:]}")
        await asyncio.sleep(0.3)


def assert_none_lost(m: Migration) -> None:
    failed = [r for r in m.records() if not r.ok]
    assert not failed, f"writes the app could not make: {failed[:3]}"


def written_on(m: Migration, store: str) -> int:
    return sum(1 for r in m.records() if r.ok and r.store == store)


async def test_cutover_rollback_cutover_under_load(migration: Migration) -> None:
    """cutover → writes on PostgreSQL → rollback → writes on SQLite → cutover, the app writing
    at 200/s through every switch. The app is stopped before each comparison (and a new
    instance started), so that the log is complete when the stores are read."""
    m = migration
    m.start(rate=200)
    await asyncio.sleep(1.0)

    out = m.switch("cutover")
    assert out["ok"] and out["pause_seconds"] is not None
    assert [s["step"] for s in out["steps"]] == ["preflight", "fence", "drain", "flip", "reload", "commit"]
    assert "RELATIONAL_DB_PROVIDER=postgres" in m.env.read_text()
    assert await direction(m.pg_dsn) == ("reverse", None)
    assert len(sqlite_fences(m.db)) == 3 * len(TABLES)
    await asyncio.sleep(2.0)
    m.stop_app()
    assert written_on(m, "postgres") > 100, "the app did not move to PostgreSQL"
    m.wait_streaming("postgres→sqlite")
    await assert_converged(m)

    m.start_app(rate=200)
    await asyncio.sleep(1.0)
    out = m.switch("rollback")
    assert out["ok"]
    assert "RELATIONAL_DB_PROVIDER=sqlite" in m.env.read_text()
    assert await direction(m.pg_dsn) == ("forward", None)
    assert sqlite_fences(m.db) == []
    assert sorted(await pg_fences(m.pg_dsn)) == sorted(TABLES)
    before = written_on(m, "sqlite")
    await asyncio.sleep(2.0)
    m.stop_app()
    assert written_on(m, "sqlite") > before + 100, "the app did not move back to SQLite"
    m.wait_streaming("sqlite")
    await assert_converged(m)

    m.start_app(rate=200)
    await asyncio.sleep(1.0)
    out = m.switch("cutover")
    assert out["ok"]
    assert await pg_fences(m.pg_dsn) == []
    await asyncio.sleep(1.5)
    m.stop_app()
    m.wait_streaming("postgres→sqlite")
    want = await assert_converged(m)
    assert_none_lost(m)
    assert sum(len(rows) for rows in want.values()) > 500
    assert m.stop_daemon() == 0
    shown = m.command("status").stdout
    assert shown.startswith("app: uses PostgreSQL (cut over)"), shown
    assert "postgres→sqlite: streaming" in shown and "0 pending" in shown, shown


async def test_dry_run_changes_nothing(migration: Migration) -> None:
    m = migration
    m.start(rate=50)
    before = m.env.read_text()
    proc = m.command("cutover", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan: fence SQLite" in proc.stdout
    assert m.env.read_text() == before
    assert sqlite_fences(m.db) == []
    assert await direction(m.pg_dsn) == ("forward", None)


@pytest.mark.parametrize("problem", ["daemon", "lag", "reverse-capture", "app-config", "reload"])
async def test_preflight_refuses(tmp_path: Path, pg_dsn: str, problem: str) -> None:
    extra = {"reload": 'reload_timeout = 5\n', "lag": ""}.get(problem, "")
    m = Migration(tmp_path, pg_dsn, extra_cutover=extra)
    try:
        m.init()
        blocker: asyncpg.Connection | None = None
        if problem != "daemon":
            m.start_daemon()
            m.wait_ready()
        if problem == "reload":
            m.config.write_text(m.config.read_text().replace(
                f'reload_command = ["sh", "-c", "kill -HUP $(cat {m.pidfile})"]',
                'reload_command = ["sh", "-c", "echo app not found; exit 3"]'))
        if problem == "app-config":
            m.env.unlink()
        if problem == "reverse-capture":
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute("DROP TRIGGER syncd_capture ON public.documents")
            finally:
                await conn.close()
        if problem == "lag":
            # PostgreSQL holds the table stream up: the daemon's batch waits on the lock while
            # the app's changes pile up in the SQLite changelog.
            m.config.write_text(m.config.read_text().replace("max_lag_seconds = 5", "max_lag_seconds = 1"))
            blocker = await asyncpg.connect(pg_dsn)
            await blocker.execute("BEGIN; LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
            m.start_app(rate=50)
            await asyncio.sleep(3.0)
        try:
            before = m.env.read_text() if m.env.exists() else None
            proc = m.command("cutover")
        finally:
            if blocker is not None:
                await blocker.execute("ROLLBACK")
                await blocker.close()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        text = proc.stdout + proc.stderr
        expect = {"daemon": "does not answer", "lag": "lags",
                  "reverse-capture": "reverse capture is not installed",
                  "app-config": str(m.env), "reload": "exited with 3"}[problem]
        assert expect in text, text
        assert "refused, nothing was changed" in text
        assert sqlite_fences(m.db) == []
        assert await direction(m.pg_dsn) == ("forward", None)
        if before is not None:
            assert m.env.read_text() == before
    finally:
        m.close()


CUTOVER_STEPS = ("preflight", "fence", "drain", "flip", "reload")


@pytest.mark.parametrize("step", CUTOVER_STEPS)
async def test_cutover_killed_then_resumed(migration: Migration, step: str) -> None:
    """SIGKILL of `syncd cutover` at each step; `--resume` finishes it; nothing lost."""
    m = migration
    m.start(rate=100)
    proc = m.command("cutover", env={"SYNCD_KILL_AT": f"cutover:{step}"})
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert (await direction(m.pg_dsn))[1] == "cutover"
    shown = m.command("status").stdout
    assert f"a cutover stopped after step {step}: run `syncd cutover --resume`" in shown, shown
    # the lock and the uncommitted fence died with the process: the app is not stuck
    assert sqlite_fences(m.db) == []
    await asyncio.sleep(0.5)
    out = m.switch("cutover", "--resume")
    assert out["ok"]
    assert await direction(m.pg_dsn) == ("reverse", None)
    assert len(sqlite_fences(m.db)) == 3 * len(TABLES)
    await asyncio.sleep(1.0)
    m.stop_app()
    m.wait_streaming("postgres→sqlite")
    await assert_converged(m)
    assert_none_lost(m)


@pytest.mark.parametrize("step", ("fence", "flip"))
async def test_cutover_killed_then_reverted(migration: Migration, step: str) -> None:
    """SIGKILL of `syncd cutover`, then `syncd rollback` abandons it; nothing lost."""
    m = migration
    m.start(rate=100)
    proc = m.command("cutover", env={"SYNCD_KILL_AT": f"cutover:{step}"})
    assert proc.returncode == -9, proc.stdout + proc.stderr
    await asyncio.sleep(0.5)
    out = m.switch("rollback")
    assert out["ok"]
    assert await direction(m.pg_dsn) == ("forward", None)
    assert "RELATIONAL_DB_PROVIDER=sqlite" in m.env.read_text()
    assert sqlite_fences(m.db) == []
    await asyncio.sleep(1.0)
    m.stop_app()
    m.wait_streaming("sqlite")
    await assert_converged(m)
    assert_none_lost(m)


@pytest.mark.parametrize("step", ("fence", "drain", "flip"))
async def test_rollback_killed_then_resumed(migration: Migration, step: str) -> None:
    m = migration
    m.start(rate=100)
    m.switch("cutover")
    m.wait_streaming("postgres→sqlite")
    proc = m.command("rollback", env={"SYNCD_KILL_AT": f"rollback:{step}"})
    assert proc.returncode == -9, proc.stdout + proc.stderr
    await asyncio.sleep(0.5)
    out = m.switch("rollback", "--resume")
    assert out["ok"]
    assert await direction(m.pg_dsn) == ("forward", None)
    assert sqlite_fences(m.db) == []
    assert sorted(await pg_fences(m.pg_dsn)) == sorted(TABLES)
    await asyncio.sleep(1.0)
    m.stop_app()
    m.wait_streaming("sqlite")
    await assert_converged(m)
    assert_none_lost(m)


async def test_drain_timeout_undoes_the_fence(tmp_path: Path, pg_dsn: str) -> None:
    """The forward stream cannot finish (PostgreSQL holds its table): the cutover gives up after
    drain_timeout and leaves everything as it was; once released, nothing is lost."""
    m = Migration(tmp_path, pg_dsn, extra_cutover='verify = "off"')
    try:
        m.start(rate=50)
        m.config.write_text(m.config.read_text().replace("drain_timeout = 15", "drain_timeout = 2"))
        before = m.env.read_text()
        blocker = await asyncpg.connect(pg_dsn)
        try:
            await blocker.execute("BEGIN; LOCK TABLE public.users, public.documents IN EXCLUSIVE MODE")
            await asyncio.sleep(0.3)
            proc = m.command("cutover")
        finally:
            await blocker.execute("ROLLBACK")
            await blocker.close()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "did not finish within 2 s" in proc.stderr and "cutover undone" in proc.stdout
        assert m.env.read_text() == before
        assert sqlite_fences(m.db) == []
        assert await direction(m.pg_dsn) == ("forward", None)
        await asyncio.sleep(1.0)
        m.stop_app()
        m.wait_streaming("sqlite")
        await assert_converged(m)
        assert_none_lost(m)
    finally:
        m.close()


async def test_reload_failing_after_the_flip_restores_the_config(tmp_path: Path, pg_dsn: str) -> None:
    """The reload works at preflight and fails after the flip: the config is put back, the
    fence undone, and the app never left SQLite."""
    counter = tmp_path / "reloads"
    m = Migration(tmp_path, pg_dsn)
    try:
        m.init()
        m.start_app(rate=50)
        script = (f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
                  f'[ "$n" = 1 ] && {{ echo "app refused to reload"; exit 4; }}; '
                  f"kill -HUP $(cat {m.pidfile})")
        m.config.write_text(m.config.read_text().replace(
            f'reload_command = ["sh", "-c", "kill -HUP $(cat {m.pidfile})"]',
            f"reload_command = ['sh', '-c', '{script}']"))
        m.start_daemon()
        m.wait_ready()
        before = m.env.read_text()
        proc = m.command("cutover")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "app refused to reload" in proc.stderr
        assert "cutover undone" in proc.stdout and "restored" in proc.stdout
        assert m.env.read_text() == before
        assert sqlite_fences(m.db) == []
        assert await direction(m.pg_dsn) == ("forward", None)
        await asyncio.sleep(1.0)
        m.stop_app()
        assert written_on(m, "postgres") == 0
        m.wait_streaming("sqlite")
        await assert_converged(m)
        assert_none_lost(m)
    finally:
        m.close()
