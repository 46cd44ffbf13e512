"""Fixtures for network faults between syncd and PostgreSQL.

    syncd ──▶ Toxiproxy proxy "pg" (127.0.0.1:P) ──▶ PostgreSQL on 127.0.0.1:Q (tcp_pg)
    tests ───────────────────────────────────────────▶ PostgreSQL directly (tcp_pg_dsn)

The daemon's ``target.dsn`` goes through the proxy; the tests read PostgreSQL
directly, so a fault never hides what syncd really committed. Toxiproxy is the
real one when ``TOXIPROXY_URL`` is set, otherwise the in-tree server
(``tests/toxiproxy_server.py``); both are driven with ``toxiproxy-python``. A
real one must share this machine's loopback (a local binary, or a container on
the host network): PostgreSQL listens on 127.0.0.1, and the proxy's port is
picked here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import log_events
from tests.pg_tcp import TcpPostgres, free_port
from tests.toxiproxy_server import toxiproxy_api, use_client
from tests.workload import Daemon, Writer, WriterThread

CONNECT_TIMEOUT = 3.0
"""``[target] connect_timeout`` of the daemon under test, seconds."""
COMMAND_TIMEOUT = 5.0
"""``[target] command_timeout``: a statement that gets no answer fails after this long."""
RETRY_MAX = 2.0
"""``[stream] retry_max_seconds``: the backoff's cap, small so that recovery is quick."""
MAX_LAG = 5.0
"""``[health] max_lag_seconds``."""
PROXY = "pg"


# --- PostgreSQL on TCP ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def tcp_pg() -> Iterator[TcpPostgres]:
    # Not under pytest's tmp_path: a pytest session starting meanwhile makes /tmp/pytest-of-<user>
    # mode 0700, and the server, running as another OS user when root, would lose its data dir.
    base = Path(tempfile.mkdtemp(prefix="syncd-test-tcp-pg-"))
    try:
        with TcpPostgres.started(base) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def tcp_pg_dsn(tcp_pg: TcpPostgres) -> AsyncIterator[str]:
    """A fresh database on the TCP server, reached directly (not through the proxy)."""
    name = "n_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(tcp_pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield tcp_pg.dsn_for(name)
    admin = await asyncpg.connect(tcp_pg.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def direct_pg(tcp_pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The tests' own connection to the test database, bypassing the proxy."""
    conn = await asyncpg.connect(tcp_pg_dsn)
    yield conn
    await conn.close()


# --- Toxiproxy -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def toxiproxy_url() -> Iterator[str]:
    with toxiproxy_api() as url:
        yield url


@pytest.fixture
def pg_proxy(toxiproxy_url: str, tcp_pg: TcpPostgres, tcp_pg_dsn: str) -> Iterator[tuple[Any, str]]:
    """The proxy ``pg`` in front of the TCP PostgreSQL, and the test database's DSN through it."""
    client = use_client(toxiproxy_url)
    stale = client.get_proxy(PROXY)  # left behind on a shared, real Toxiproxy
    if stale is not None:
        stale.destroy()
    listen = f"127.0.0.1:{free_port()}"
    proxy = client.create(upstream=tcp_pg.address, name=PROXY, listen=listen)
    database = urlsplit(tcp_pg_dsn).path
    try:
        yield proxy, f"postgresql://postgres@{listen}{database}"
    finally:
        proxy.destroy()


# --- the daemon's health endpoints ---------------------------------------------------------

@dataclass(frozen=True)
class Health:
    """GETs against the daemon's health server, off the event loop."""

    base: str

    def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except (urllib.error.URLError, OSError) as err:  # not listening (yet, or any more)
            return 0, {"error": str(err)}

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(self._get, path)

    async def stream(self) -> dict[str, Any]:
        """The one stream's entry of /status."""
        code, body = await self.get("/status")
        assert code == 200, body
        (stream,) = body["streams"]
        return dict(stream)


# --- one scenario: an app database, its config, the daemon, the app writer ------------------

@dataclass
class Net:
    """Everything a network-fault test drives; the fixture cleans up whatever is left running."""

    tmp: Path
    db: Path
    config: Path
    health: Health
    proxy: Any
    pg: asyncpg.Connection
    pg_server: TcpPostgres
    log: Path
    daemons: list[Daemon] = field(default_factory=list)
    writers: list[WriterThread] = field(default_factory=list)
    apps: list[Writer] = field(default_factory=list)

    def start_daemon(self) -> Daemon:
        daemon = Daemon(self.config, self.log)
        self.daemons.append(daemon)
        return daemon

    def start_writer(self, app: Writer, pause: float = 0.002) -> WriterThread:
        if app not in self.apps:
            self.apps.append(app)
        writer = WriterThread(app, pause=pause).start()
        self.writers.append(writer)
        return writer

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines whose ``event`` is *event*."""
        return log_events(self.log.read_text(errors="replace"), event)

    def cleanup(self) -> None:
        for daemon in self.daemons:
            if daemon.alive:
                daemon.kill()
        for writer in self.writers:
            writer.halt()
        for app in self.apps:
            app.close()


def write_net_config(path: Path, *, sqlite: Path, dsn: str, state_dir: Path, health_port: int,
                     **stream: Any) -> Path:
    """A syncd.toml with small timeouts, so a fault shows within seconds."""
    options = {"poll_interval": 0.2, "prune_interval": 0.5, "batch_size": 100, "chunk_rows": 500,
               "retry_max_seconds": RETRY_MAX, **stream}
    lines = [
        "[source.sqlite]", f'path = "{sqlite}"', "",
        "[target]", f'dsn = "{dsn}"', f"connect_timeout = {CONNECT_TIMEOUT}",
        f"command_timeout = {COMMAND_TIMEOUT}", "",
        "[state]", f'dir = "{state_dir}"', "",
        "[health]", f'listen = "127.0.0.1:{health_port}"', f"max_lag_seconds = {MAX_LAG}", "",
        "[stream]", *(f"{k} = {v!r}" for k, v in options.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def net(tmp_path: Path, pg_proxy: tuple[Any, str], direct_pg: asyncpg.Connection,
        tcp_pg: TcpPostgres) -> Iterator[Net]:
    proxy, proxied_dsn = pg_proxy
    port = free_port()
    db = tmp_path / "app.sqlite"
    config = write_net_config(tmp_path / "syncd.toml", sqlite=db, dsn=proxied_dsn,
                              state_dir=tmp_path / "state", health_port=port)
    rig = Net(tmp=tmp_path, db=db, config=config, health=Health(f"http://127.0.0.1:{port}"),
              proxy=proxy, pg=direct_pg, pg_server=tcp_pg, log=tmp_path / "syncd.log")
    try:
        yield rig
    finally:
        rig.cleanup()


async def until(check: Callable[[], Awaitable[Any]], *, within: float, what: str,
                daemon: Daemon | None = None, every: float = 0.1) -> Any:
    """Poll *check* until it returns something truthy; fail after *within* s or if syncd exits."""
    deadline = time.monotonic() + within
    while True:
        if daemon is not None:
            daemon.ensure_alive()
        result = await check()
        if result:
            return result
        if time.monotonic() >= deadline:
            tail = f":\n{daemon.tail()}" if daemon is not None else ""
            raise AssertionError(f"not within {within} s: {what} (last: {result!r}){tail}")
        await asyncio.sleep(every)
