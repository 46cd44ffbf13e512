"""The network between syncd and PostgreSQL fails: syncd waits, says so, and loses nothing.

Each test runs the real daemon (``syncd run``) against an app-shaped SQLite file
that an app writer keeps changing, with ``target.dsn`` pointing at a Toxiproxy
proxy in front of PostgreSQL (see ``conftest.py``), and injects one fault:

- the proxy goes down for 30 s in the middle of the snapshot, and for a while
  during streaming: /readyz is 503 with the reason, /healthz stays 200, the
  process stays up and retries, and resumes from its checkpoint afterwards;
- the connection is reset (RST) in the middle of a snapshot COPY;
- the connection is cut after N bytes (limit_data) during the snapshot;
- 500 ms of latency while streaming: slower, never an error;
- the connection hangs in the middle of a batch (timeout toxic: data swallowed,
  nothing closed): syncd reports it within its command_timeout, keeps retrying,
  and goes on once the toxic is gone.

Every test ends with SIGTERM (exit 0) and reads both stores back, row by row.
Timeouts below are bounds against hangs, not performance goals.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.faults.conftest import COMMAND_TIMEOUT, CONNECT_TIMEOUT, RETRY_MAX, Net, until
from tests.workload import (
    ARCHIVE,
    ARCHIVE_SPEC,
    SPECS,
    Daemon,
    Spec,
    Writer,
    WriterThread,
    create_database,
    describe,
    differences,
    open_rejects,
    sqlite_scalar,
    stored_checkpoint,
    wait_caught_up,
)

ARCHIVE_ROWS = 50_000
"""A static table of ~200-byte rows copied first (tables go in name order): 100 chunks of 500."""
CHUNK = 500
OUTAGE_SNAPSHOT = 30.0
OUTAGE_STREAMING = 10.0
NOTICE = COMMAND_TIMEOUT + CONNECT_TIMEOUT + 10.0
"""Bound for syncd to report a fault at all: a statement timing out, a connect attempt, a margin."""
NOTICE_MARGIN = 2.5
"""Polling and scheduling on top of command_timeout, for a statement left without an answer."""
_FILLER = "ünïcödé ✓ quote ' and \" line\nbreak 日本語 " + "abcdefghijklmnopqrstuvwxyz0123456789" * 6


def seed() -> int:
    return int(os.environ.get("SYNCD_TEST_SEED") or random.randrange(2**32))


def add_archive(db: Path, rows: int) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(ARCHIVE)
        with conn:
            conn.executemany("INSERT INTO archive VALUES (?, ?, ?)",
                             ((i, (f"{i} " + _FILLER[i % 40:] + _FILLER[:i % 40])[:200], i * 0.25)
                              for i in range(1, rows + 1)))
    finally:
        conn.close()


def app_database(db: Path, s: int, *, archive_rows: int = 0) -> Writer:
    """The app's SQLite file with some rows (and the static archive), and its writer."""
    create_database(db)
    if archive_rows:
        add_archive(db, archive_rows)
    app = Writer(db, s, parent_key_changes=False)
    app.populate(users=100, documents=300, tags=300, orders=100, audit=200, settings=50, sessions=100)
    return app


def specs(net: Net) -> tuple[Spec, ...]:
    """The tables to compare: the app's, and the archive if this test has one."""
    archive = sqlite_scalar(net.db, "SELECT count(*) FROM sqlite_schema WHERE name = 'archive'")
    return (ARCHIVE_SPEC, *SPECS) if archive else SPECS


async def snapshot_copied(pg: asyncpg.Connection) -> tuple[int, bool]:
    """Rows the committed snapshot state says are copied, and whether it is complete."""
    cp = await stored_checkpoint(pg)
    if cp is None or cp[1] is None:
        return 0, False
    return sum(cp[1]["copied"].values()), bool(cp[1]["complete"])


async def mid_snapshot(net: Net, daemon: Daemon, more_than: int, within: float = 90) -> int:
    """Wait until the committed snapshot has passed *more_than* rows, and is not complete."""
    async def check() -> int:
        copied, complete = await snapshot_copied(net.pg)
        assert not complete, f"the snapshot completed before the fault ({copied} rows)"
        return copied if copied > more_than else 0
    result: int = await until(check, within=within, what=f"snapshot past {more_than} rows",
                              daemon=daemon, every=0.02)
    return result


async def degraded(net: Net, daemon: Daemon, *, more_retries_than: int = 0) -> dict[str, Any]:
    """Wait until /status shows the stream degraded, with an error and retries; return it."""
    async def check() -> dict[str, Any] | None:
        s = await net.health.stream()
        ok = s["degraded"] and s["last_error"] and s["retries"] > more_retries_than
        return s if ok else None
    result: dict[str, Any] = await until(check, within=NOTICE, what="stream reported degraded",
                                         daemon=daemon)
    return result


async def ready(net: Net, daemon: Daemon, within: float = 120) -> None:
    async def check() -> bool:
        code, _ = await net.health.get("/readyz")
        return code == 200
    await until(check, within=within, what="/readyz 200", daemon=daemon, every=0.2)


async def assert_unavailable(net: Net, daemon: Daemon) -> dict[str, Any]:
    """While the target is away: alive, degraded, not ready (and why), live; return the status."""
    daemon.ensure_alive()
    code, body = await net.health.get("/readyz")
    assert code == 503, body
    reason = body["streams"]["sqlite"]
    assert reason.startswith("degraded: ") and "PostgreSQL unreachable" in reason, reason
    code, live = await net.health.get("/healthz")
    assert code == 200 and live["alive"], live
    stream = await net.health.stream()
    assert stream["degraded"] and stream["retries"] > 0, stream
    return stream


async def hold_outage(net: Net, daemon: Daemon, seconds: float) -> dict[str, Any]:
    """Check the daemon's face every half second for *seconds*; return the last status."""
    deadline = time.monotonic() + seconds
    stream = await assert_unavailable(net, daemon)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        stream = await assert_unavailable(net, daemon)
    return stream


async def finish(net: Net, daemon: Daemon, writer: WriterThread, s: int) -> None:
    """Let the writer go on a little, stop it, catch up, stop syncd cleanly, compare."""
    await writer.run_until(writer.transactions + 100)
    writer.stop()
    await ready(net, daemon)
    await wait_caught_up(net.pg, net.db, daemon)
    assert await daemon.terminate() == 0, daemon.tail()
    await assert_same(net, s)


async def assert_same(net: Net, s: int) -> None:
    diffs = await differences(net.db, net.pg, specs(net))
    assert not diffs, describe(diffs, f"seed {s}")
    rejects = await open_rejects(net.pg)
    assert not rejects, f"seed {s}: {rejects}"


async def assert_archive_copied_once(net: Net) -> None:
    """The static archive went over exactly once: no chunk lost, none copied twice.

    A chunk copied twice would hit the primary key and go to the rejects, and count twice in
    the snapshot state (logged when the table is done; the state itself is dropped once
    streaming checkpoints replace it).
    """
    done = [e for e in net.log_events("table copied") if e["table"] == "archive"]
    assert [e["rows"] for e in done] == [ARCHIVE_ROWS], done
    row = await net.pg.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d, max(id) AS top "
                                "FROM archive")
    assert (row["n"], row["d"], row["top"]) == (ARCHIVE_ROWS, ARCHIVE_ROWS, ARCHIVE_ROWS)


# --- the proxy goes down -------------------------------------------------------------------

async def test_outage_of_30_s_during_the_snapshot(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s, archive_rows=ARCHIVE_ROWS)
    run_syncd("--config", str(net.config), "init")
    # a few ms per answer, so that the snapshot is still running when the proxy goes down
    net.proxy.add_toxic(type="latency", name="slow", attributes={"latency": 5})
    daemon = net.start_daemon()
    writer = net.start_writer(app, pause=0.005)

    await mid_snapshot(net, daemon, more_than=10 * CHUNK)
    net.proxy.disable()
    down_at = time.monotonic()
    stream = await degraded(net, daemon)
    assert stream["phase"] == "snapshot", stream
    before, complete = await snapshot_copied(net.pg)
    assert not complete and 0 < before < ARCHIVE_ROWS, before

    stream = await hold_outage(net, daemon, OUTAGE_SNAPSHOT - (time.monotonic() - down_at))
    assert stream["retries"] >= 3, f"syncd should keep retrying during the outage: {stream}"
    assert await snapshot_copied(net.pg) == (before, False), "nothing commits while the proxy is down"

    net.proxy.enable()
    net.proxy.destroy_toxic("slow")
    await finish(net, daemon, writer, s)
    resumed = [e["copied"] for e in net.log_events("snapshot resume")]
    assert before in resumed and min(resumed) > 0, \
        f"the snapshot resumes from its last chunk ({before} rows), not from zero: {resumed}"
    await assert_archive_copied_once(net)


async def test_outage_during_streaming(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s)
    run_syncd("--config", str(net.config), "init")
    daemon = net.start_daemon()
    await ready(net, daemon)
    writer = net.start_writer(app, pause=0.005)
    await writer.run_until(200)

    net.proxy.disable()
    down_at, written = time.monotonic(), writer.transactions
    await degraded(net, daemon)
    await hold_outage(net, daemon, OUTAGE_STREAMING - (time.monotonic() - down_at))
    assert writer.transactions > written + 100, "the app writes on during the outage"

    net.proxy.enable()
    await finish(net, daemon, writer, s)


# --- the connection breaks in the middle of a COPY -----------------------------------------

async def test_reset_in_the_middle_of_a_copy(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s, archive_rows=ARCHIVE_ROWS)
    run_syncd("--config", str(net.config), "init")
    server_log_from = net.pg_server.log.stat().st_size
    # upstream bandwidth narrowed: each chunk's COPY data (~110 kB) takes most of the time, so
    # that the reset lands inside a COPY
    net.proxy.add_toxic(type="bandwidth", name="narrow", stream="upstream", attributes={"rate": 400})
    daemon = net.start_daemon()
    writer = net.start_writer(app, pause=0.005)

    copied = 0
    for _ in range(3):
        copied = await mid_snapshot(net, daemon, more_than=copied + CHUNK)
        retries = (await net.health.stream())["retries"]
        net.proxy.add_toxic(type="reset_peer", name="reset", stream="upstream",
                            attributes={"timeout": 0})
        await degraded(net, daemon, more_retries_than=retries)
        net.proxy.destroy_toxic("reset")
    net.proxy.destroy_toxic("narrow")
    await finish(net, daemon, writer, s)
    await assert_archive_copied_once(net)

    errors = [e["error"] for e in net.log_events("retrying")]
    assert any("copying into" in e for e in errors), errors
    with net.pg_server.log.open(errors="replace") as f:
        f.seek(server_log_from)
        server_log = f.read()
    cut = copies_cut_short(server_log, "archive")
    assert cut >= 1, f"PostgreSQL saw no COPY cut short:\n{server_log[-3000:]}"
    print(f"{cut} of 3 resets landed inside a COPY")


_CLIENT_GONE = re.compile(r"\[(\d+)\] (?:LOG|ERROR):  (?:incomplete message from client|"
                          r"unexpected EOF on client connection)")


def copies_cut_short(server_log: str, table: str) -> int:
    """How many sessions PostgreSQL's log shows losing their client in the middle of a COPY."""
    copy = f'STATEMENT:  COPY "public"."{table}"'
    return len({m.group(1) for line, after in itertools.pairwise(server_log.splitlines())
                if (m := _CLIENT_GONE.search(line)) and copy in after})


async def test_connection_cut_after_n_bytes_during_the_snapshot(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s, archive_rows=ARCHIVE_ROWS)
    run_syncd("--config", str(net.config), "init")
    net.proxy.add_toxic(type="latency", name="slow", attributes={"latency": 5})
    daemon = net.start_daemon()
    writer = net.start_writer(app, pause=0.005)

    copied = await mid_snapshot(net, daemon, more_than=2 * CHUNK)
    # every connection (the one open now, and each new one) is cut after ~2.5 chunks' worth
    net.proxy.add_toxic(type="limit_data", name="cut", stream="upstream",
                        attributes={"bytes": 300_000})
    await degraded(net, daemon, more_retries_than=2)
    after, complete = await snapshot_copied(net.pg)
    assert after > copied and not complete, "the snapshot goes on between the cuts"
    net.proxy.destroy_toxic("cut")
    net.proxy.destroy_toxic("slow")
    await finish(net, daemon, writer, s)
    await assert_archive_copied_once(net)


# --- slow and hanging connections while streaming ------------------------------------------

async def test_latency_of_500_ms_while_streaming(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s)
    run_syncd("--config", str(net.config), "init")
    daemon = net.start_daemon()
    await ready(net, daemon)

    net.proxy.add_toxic(type="latency", name="slow", attributes={"latency": 500})
    # a few app transactions: each touches several tables, and every run of changes to one
    # table costs syncd a round trip, so at 500 ms a transaction takes it seconds
    writer = net.start_writer(app, pause=0.25)
    await writer.run_until(5)
    writer.stop()
    await wait_caught_up(net.pg, net.db, daemon)
    await ready(net, daemon)  # with the latency still there
    stream = await net.health.stream()
    assert stream["retries"] == 0 and not stream["degraded"], \
        f"latency under the timeouts is not a fault: {stream}"

    net.proxy.destroy_toxic("slow")
    assert await daemon.terminate() == 0, daemon.tail()
    await assert_same(net, s)


async def test_hanging_connection_is_noticed_within_the_command_timeout(net: Net) -> None:
    s = seed()
    app = app_database(net.db, s)
    run_syncd("--config", str(net.config), "init")
    daemon = net.start_daemon()
    await ready(net, daemon)
    writer = net.start_writer(app, pause=0.01)
    await writer.run_until(100)

    # Slow answers keep syncd inside its batch transactions most of the time; the hang starts
    # while one is open, after a statement that is neither its BEGIN nor its checkpoint (so the
    # statement left hanging is not the COMMIT).
    net.proxy.add_toxic(type="latency", name="slow", attributes={"latency": 200})
    await until(lambda: _inside_a_batch(net.pg), within=60, every=0.005,
                what="syncd inside a batch transaction", daemon=daemon)
    # nothing comes back from PostgreSQL any more, and nothing is closed
    net.proxy.add_toxic(type="timeout", name="hang", attributes={"timeout": 0})
    hung_at = time.monotonic()
    stream = await degraded(net, daemon)  # within NOTICE seconds, or the test fails here
    noticed = time.monotonic() - hung_at
    await assert_unavailable(net, daemon)
    # it keeps trying (each attempt bounded by connect_timeout), rather than waiting on one
    retries = stream["retries"]
    await until(lambda: _retries_above(net, retries + 1),
                within=3 * (CONNECT_TIMEOUT + COMMAND_TIMEOUT + RETRY_MAX),
                what="more retries while the connection hangs", daemon=daemon)
    stuck_at, _ = await _checkpoint(net.pg)

    net.proxy.destroy_toxic("hang")
    net.proxy.destroy_toxic("slow")
    await until(lambda: _checkpoint_above(net.pg, stuck_at), within=60,
                what="progress after the hang", daemon=daemon)
    await finish(net, daemon, writer, s)
    # checked last, so that the recovery above is verified whatever this says
    print(f"a hanging statement was reported after {noticed:.1f} s")
    assert noticed <= COMMAND_TIMEOUT + NOTICE_MARGIN, (
        f"a statement that got no answer was reported after {noticed:.1f} s, with "
        f"command_timeout = {COMMAND_TIMEOUT:g} s (first error: {stream['last_error']})")


async def _inside_a_batch(pg: asyncpg.Connection) -> bool:
    return bool(await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'syncd' "
        "AND state = 'idle in transaction' AND query NOT ILIKE 'BEGIN%' "
        "AND query NOT ILIKE '%syncd.checkpoints%'"))


async def _retries_above(net: Net, n: int) -> bool:
    return bool((await net.health.stream())["retries"] > n)


async def _checkpoint(pg: asyncpg.Connection) -> tuple[int, Any]:
    cp = await stored_checkpoint(pg)
    assert cp is not None
    return cp


async def _checkpoint_above(pg: asyncpg.Connection, position: int) -> bool:
    return (await _checkpoint(pg))[0] > position
