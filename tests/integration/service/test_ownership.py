"""One owner per stream: the state-dir lock, the per-stream advisory lock, and the fencing generation
that stops a stale process's commit (docs/architecture.md, "Ownership").

Every test drives the real `syncd` command line against a real PostgreSQL and SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.integration.daemon_support import (
    app_db,
    free_port,
    insert,
    start,
    status,
    stop,
    streaming,
    wait_for,
    with_listen,
)


def one_line(stderr: str) -> str:
    """The one line for the operator (structured log lines, JSON, aside)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


async def pg_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM notes"))
    finally:
        await conn.close()


async def test_second_run_on_the_same_state_dir_exits_naming_the_first(
        tmp_path: Path, make_config: Any, pg_dsn: str) -> None:
    db = app_db(tmp_path / "app.sqlite", 200)
    port_a, port_b = free_port(), free_port()
    cfg_a = with_listen(make_config(db), port_a)
    cfg_b = with_listen(cfg_a, port_b, tmp_path / "second.toml")
    run_syncd("--config", str(cfg_a), "init")
    log = tmp_path / "a.log"
    first = start(cfg_a, log=log)
    try:
        wait_for(lambda: streaming(port_a, 200), "the first daemon to stream", proc=first, log=log)
        second = run_syncd("--config", str(cfg_b), "run", check=False, timeout=60)
        assert second.returncode == 1, second.stderr
        line = one_line(second.stderr)
        assert f"pid {first.pid}" in line and socket.gethostname() in line, line
        assert str(tmp_path / "state") in line, line
        assert status(port_b) is None  # it never served
        insert(db, 1000, 5)  # the first one still streams
        wait_for(lambda: streaming(port_a, 205), "the first daemon to apply", proc=first, log=log)
    finally:
        assert stop(first) == 0


async def test_second_run_on_the_same_target_exits_naming_the_first(
        tmp_path: Path, make_config: Any, pg_dsn: str) -> None:
    """Another state dir (another host, a copied config): the advisory lock in PostgreSQL refuses it."""
    db = app_db(tmp_path / "app.sqlite", 200)
    port_a, port_b = free_port(), free_port()
    cfg_a = with_listen(make_config(db), port_a)
    cfg_b = with_listen(cfg_a, port_b, tmp_path / "second.toml",
                        **{str(tmp_path / "state"): str(tmp_path / "other-state")})
    run_syncd("--config", str(cfg_a), "init")
    log = tmp_path / "a.log"
    first = start(cfg_a, log=log)
    try:
        wait_for(lambda: streaming(port_a, 200), "the first daemon to stream", proc=first, log=log)
        second = run_syncd("--config", str(cfg_b), "run", check=False, timeout=60)
        assert second.returncode == 1, second.stderr
        line = one_line(second.stderr)
        assert f"pid {first.pid}" in line and socket.gethostname() in line and "sqlite" in line, line
        insert(db, 1000, 5)
        wait_for(lambda: streaming(port_a, 205), "the first daemon to apply", proc=first, log=log)
    finally:
        assert stop(first) == 0


async def test_stale_owner_cannot_move_the_checkpoint(tmp_path: Path, make_config: Any, pg_dsn: str) -> None:
    """The first daemon is frozen and its lock connection dies (the advisory lock is released); a
    second daemon takes the stream over. When the first wakes up, its next commit is refused by
    the fencing generation: it stops with exit 1 naming the new owner, and the checkpoint stays
    the new owner's."""
    db = app_db(tmp_path / "app.sqlite", 100)
    port_a, port_b = free_port(), free_port()
    cfg_a = with_listen(make_config(db), port_a)
    cfg_b = with_listen(cfg_a, port_b, tmp_path / "second.toml",
                        **{str(tmp_path / "state"): str(tmp_path / "other-state")})
    run_syncd("--config", str(cfg_a), "init")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    first = start(cfg_a, log=log_a)
    second: subprocess.Popen[str] | None = None
    admin = await asyncpg.connect(pg_dsn)
    try:
        wait_for(lambda: streaming(port_a, 100), "the first daemon to stream", proc=first, log=log_a)
        os.kill(first.pid, signal.SIGSTOP)
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'syncd owner' AND datname = current_database()")
        second = start(cfg_b, log=log_b)
        insert(db, 1000, 20)
        await asyncio.to_thread(wait_for, lambda: streaming(port_b, 20), "the second daemon to take over",
                                proc=second, log=log_b)
        owner_position = await admin.fetchval(
            "SELECT position FROM syncd.checkpoints WHERE stream = 'sqlite'")
        os.kill(first.pid, signal.SIGCONT)
        insert(db, 2000, 5)
        code = await asyncio.to_thread(first.wait, 90)
        text = log_a.read_text()
        assert code == 1, text
        assert f"pid {second.pid}" in text, text
        await asyncio.to_thread(wait_for, lambda: streaming(port_b, 25), "the second daemon to apply",
                                proc=second, log=log_b)
        row = await admin.fetchrow(
            "SELECT position, generation FROM syncd.checkpoints WHERE stream = 'sqlite'")
        owner = await admin.fetchrow("SELECT generation, owner FROM syncd.owners WHERE stream = 'sqlite'")
        assert row["generation"] == owner["generation"] == 2
        assert row["position"] >= owner_position
        assert await pg_count(pg_dsn) == 125
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            stop(first)
        if second is not None:
            assert stop(second) == 0
        await admin.close()


async def test_start_takes_no_lock_a_checkpoint_writer_holds(
        tmp_path: Path, make_config: Any, pg_dsn: str) -> None:
    """Set-up of syncd's state tables runs once, before the streams, and takes no table lock when the
    tables are current: before, every stream re-ran ``ALTER TABLE syncd.checkpoints ADD COLUMN IF NOT
    EXISTS`` (an ACCESS EXCLUSIVE lock) while other streams wrote their checkpoints — a deadlock in
    about one start in ten with two Chroma collections. Here another writer holds a row lock in
    syncd.checkpoints and syncd.rejects for the whole start; syncd must not wait for it."""
    db = app_db(tmp_path / "app.sqlite", 50)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    insert(db, 100, 10)
    writer = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)
    tx = writer.transaction()
    await tx.start()
    proc = None
    try:
        await writer.execute("INSERT INTO syncd.checkpoints (stream, position) VALUES ('elsewhere', 1)")
        await writer.execute("INSERT INTO syncd.rejects (stream, object, key, error) "
                             "VALUES ('elsewhere', 't', '[1]', 'x')")
        proc = start(cfg, "--until-caught-up", log=tmp_path / "run.log")
        while proc.poll() is None:
            waiting = await watcher.fetch(
                "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT l.granted AND n.nspname = 'syncd'")
            assert not waiting, f"syncd waits for {[(r['relname'], r['mode']) for r in waiting]}"
            await asyncio.sleep(0.05)
        assert proc.returncode == 0, (tmp_path / "run.log").read_text()
        assert await pg_count(pg_dsn) == 60
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await tx.rollback()
        await writer.close()
        await watcher.close()
