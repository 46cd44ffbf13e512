"""`status`, `cutover` and `rollback` believe only their own daemon, and cutover decides "drained"
from PostgreSQL itself: two configs whose health servers share one port, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.conftest import run_syncd
from tests.integration.daemon_support import app_db, free_port, start, status, stop, streaming, wait_for


def config(tmp: Path, db: Path, dsn: str, port: int, *, cutover: bool = False) -> Path:
    text = (f'[source.sqlite]\npath = "{db}"\n\n[target]\ndsn = "{dsn}"\n\n'
            f'[state]\ndir = "{tmp / "state"}"\n\n[health]\nlisten = "127.0.0.1:{port}"\n\n'
            "[stream]\npoll_interval = 0.2\n")
    if cutover:
        env = tmp / "app.env"
        env.write_text("RELATIONAL_DB_PROVIDER=sqlite\n")
        text += (f'\n[cutover]\napp_config = "{env}"\nreload_command = ["true"]\nverify = "off"\n'
                 'drain_timeout = 2\n\n[cutover.forward]\nRELATIONAL_DB_PROVIDER = "postgres"\n\n'
                 '[cutover.rollback]\nRELATIONAL_DB_PROVIDER = "sqlite"\n')
    path = tmp / "syncd.toml"
    path.write_text(text)
    return path


async def second_database(pg_dsn: str) -> str:
    admin = await asyncpg.connect(pg_dsn)
    name = urlsplit(pg_dsn).path.lstrip("/") + "_b"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(pg_dsn)._replace(path="/" + name))


async def drop_database(pg_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_a_daemon_of_another_config_is_not_believed(tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = config(tmp_path / "a", app_db(tmp_path / "a" / "app.sqlite", 10), pg_dsn, port)
    dsn_b = await second_database(pg_dsn)
    cfg_b = config(tmp_path / "b", app_db(tmp_path / "b" / "app.sqlite", 520), dsn_b, port, cutover=True)
    env_b = tmp_path / "b" / "app.env"
    run_syncd("--config", str(cfg_a), "init")
    run_syncd("--config", str(cfg_b), "init")
    log = tmp_path / "a.log"
    daemon = start(cfg_a, log=log)
    try:
        wait_for(lambda: streaming(port, 10), "A's daemon to stream", proc=daemon, log=log)
        assert status(port) is not None

        # A's own status believes A's daemon
        mine = run_syncd("--config", str(cfg_a), "status")
        assert "daemon: running (answering on" in mine.stdout, mine.stdout

        # B's status: the daemon on the port is not B's
        shown = run_syncd("--config", str(cfg_b), "status")
        assert "daemon: running" not in shown.stdout, shown.stdout
        assert f"the daemon on 127.0.0.1:{port} serves another config" in shown.stdout + shown.stderr
        assert str(tmp_path / "a" / "state") in shown.stdout + shown.stderr
        assert "this config's daemon is not running" in shown.stdout + shown.stderr
        as_json = json.loads(run_syncd("--config", str(cfg_b), "status", "--json").stdout)
        (sqlite,) = as_json["streams"]
        assert sqlite["phase"] == "not-started" and sqlite["daemon"] != "running", sqlite

        # B's cutover refuses, and B's app config is untouched
        cut = run_syncd("--config", str(cfg_b), "cutover", check=False)
        assert cut.returncode == 1, cut.stdout + cut.stderr
        assert "serves another config" in cut.stdout + cut.stderr, cut.stdout + cut.stderr
        assert env_b.read_text() == "RELATIONAL_DB_PROVIDER=sqlite\n"

        # --resume skips the daemon check; "drained" is still read from PostgreSQL: B never copied
        resumed = run_syncd("--config", str(cfg_b), "cutover", "--resume", check=False)
        assert resumed.returncode == 1, resumed.stdout + resumed.stderr
        assert "snapshot" in resumed.stdout + resumed.stderr, resumed.stdout + resumed.stderr
        assert env_b.read_text().startswith("RELATIONAL_DB_PROVIDER=sqlite\n"), env_b.read_text()

        conn = await asyncpg.connect(dsn_b)
        try:
            assert await conn.fetchval("SELECT count(*) FROM notes") == 0  # B was never copied
        finally:
            await conn.close()
    finally:
        assert stop(daemon) == 0
        await drop_database(pg_dsn, dsn_b)
