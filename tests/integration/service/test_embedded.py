"""The embedded PostgreSQL (``dsn = "embedded"``) is never left running with nobody owning it, and
`syncd embedded start|stop|dsn` lets an operator look at the target without the daemon."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import asyncpg
import psutil

from tests.conftest import run_syncd
from tests.integration.daemon_support import app_db, free_port, insert, start, streaming, wait_for


def embedded_config(tmp_path: Path, port: int) -> Path:
    db = app_db(tmp_path / "app.sqlite", 300)
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{db}"\n\n[target]\ndsn = "embedded"\n\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n\n[health]\nlisten = "127.0.0.1:{port}"\n\n'
                   "[stream]\npoll_interval = 0.2\n")
    return cfg


def postmasters(pgdata: Path) -> list[psutil.Process]:
    """Running postgres servers on *pgdata*, found by process (not by syncd's own files)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmd and str(pgdata) in cmd:
            found.append(proc)
    return found


def test_sigkilled_run_leaves_no_server_nobody_owns(tmp_path: Path) -> None:
    port = free_port()
    cfg = embedded_config(tmp_path, port)
    pgdata = tmp_path / "state" / "postgres"
    try:
        run_syncd("--config", str(cfg), "init", timeout=180)
        assert postmasters(pgdata) == []  # init started it and stopped it
        log = tmp_path / "run.log"
        daemon = start(cfg, log=log)
        wait_for(lambda: streaming(port, 300), "the daemon to copy", proc=daemon, log=log, timeout=180)
        insert(tmp_path / "app.sqlite", 1000, 25)
        wait_for(lambda: streaming(port, 325), "the daemon to stream", proc=daemon, log=log)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        assert len(postmasters(pgdata)) == 1  # SIGKILL leaves the server behind: the next start finds it

        run_syncd("--config", str(cfg), "status", timeout=180)
        assert postmasters(pgdata) == [], "the next start/stop cycle left the server running"

        insert(tmp_path / "app.sqlite", 2000, 10)
        run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=180)
        run_syncd("--config", str(cfg), "verify", timeout=180)  # exit 0: every row equal
        assert postmasters(pgdata) == []
    finally:
        for proc in postmasters(pgdata):
            proc.kill()


async def test_embedded_start_dsn_stop(tmp_path: Path) -> None:
    cfg = embedded_config(tmp_path, free_port())
    pgdata = tmp_path / "state" / "postgres"
    try:
        started = await asyncio.to_thread(run_syncd, "--config", str(cfg), "embedded", "start", timeout=180)
        assert len(postmasters(pgdata)) == 1, started.stdout + started.stderr
        shown = await asyncio.to_thread(run_syncd, "--config", str(cfg), "embedded", "dsn")
        dsn = shown.stdout.splitlines()[0].strip()
        assert dsn.startswith("postgresql://"), shown.stdout
        assert re.search(r"psql .*postgresql://", shown.stdout), shown.stdout
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            # another syncd command uses the server and exits: the operator's server stays up
            await asyncio.to_thread(run_syncd, "--config", str(cfg), "init", timeout=180)
            assert await conn.fetchval("SELECT count(*) FROM notes") == 0
            status = await asyncio.to_thread(run_syncd, "--config", str(cfg), "status", timeout=180)
            assert f"target: the embedded PostgreSQL, {dsn}" in status.stdout, status.stdout
        finally:
            await conn.close()
        assert len(postmasters(pgdata)) == 1
        stopped = await asyncio.to_thread(run_syncd, "--config", str(cfg), "embedded", "stop", timeout=120)
        assert postmasters(pgdata) == [], stopped.stdout + stopped.stderr
        again = await asyncio.to_thread(run_syncd, "--config", str(cfg), "embedded", "dsn", check=False)
        assert again.returncode == 1 and "not running" in again.stderr and "embedded start" in again.stderr
    finally:
        for proc in postmasters(pgdata):
            proc.kill()


def test_embedded_needs_an_embedded_target(tmp_path: Path, make_config: object) -> None:
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{app_db(tmp_path / "app.sqlite", 1)}"\n'
                   '[target]\ndsn = "postgresql://u:pw@127.0.0.1:1/x"\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n')
    done = run_syncd("--config", str(cfg), "embedded", "start", check=False)
    assert done.returncode == 2 and "target.dsn" in done.stderr and "pw@" not in done.stderr, done.stderr
    assert os.path.exists(tmp_path / "state" / "postgres") is False
