"""The reference app against real stores: what it logs as acknowledged is what the stores hold;
SIGHUP after an .env edit moves its writes to PostgreSQL + pgvector; a fence makes it retry;
SIGTERM ends it with 0."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from syncd.cutover.appconfig import flip
from tests.app import records
from tests.app.stores import chroma_client
from tests.conftest import REPO

DIM = 8
PG_SCHEMA = f"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text, created_at timestamp);
CREATE TABLE documents (id text PRIMARY KEY, user_id bigint, title text, body text, updated_at timestamp);
CREATE TABLE embeddings (id text PRIMARY KEY, embedding vector({DIM}), document text, metadata jsonb);
"""


def app_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.app.refapp", *args]


def wait_for_lines(log: Path, count: int, timeout: float = 60) -> list[records.Record]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            got = records.load(log)
            if len(got) >= count:
                return got
        time.sleep(0.1)
    raise AssertionError(f"the app wrote fewer than {count} log lines in {timeout}s")


async def create_pg_schema(dsn: str) -> None:
    pg = await asyncpg.connect(dsn)
    try:
        await pg.execute(PG_SCHEMA)
    finally:
        await pg.close()


async def read_pg_state(dsn: str) -> records.State:
    state = await records.read_postgres(dsn)
    state.update(await records.read_pgvector(dsn, "embeddings", "embeddings"))
    return state


def test_refapp_logs_match_stores_and_sighup_switches(tmp_path: Path, pg_dsn: str) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "# the seed app's settings\n"
        "RELATIONAL_DB_PROVIDER=sqlite\n"
        "RELATIONAL_DB_DATABASE=./app.sqlite\n"
        f'RELATIONAL_DB_URL="{pg_dsn}"\n'
        "VECTOR_DB_PROVIDER=chromadb\n"
        "VECTOR_DB_CHROMA_PATH=./chroma\n"
        f"VECTOR_DB_DIMENSIONS={DIM}  # Must match your embedding model\n")
    subprocess.run(app_cmd("--env", str(env), "--init-schema"), cwd=REPO, check=True, timeout=120)
    db = tmp_path / "app.sqlite"
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert tables >= {"users", "documents"}
    asyncio.run(create_pg_schema(pg_dsn))

    log = tmp_path / "writes.jsonl"
    proc = subprocess.Popen(app_cmd("--env", str(env), "--log", str(log), "--rate", "200", "--seed", "7",
                                    "--retry-seconds", "5"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(log, 50)
        time.sleep(1.0)
        # a fence: every insert into users is refused for 0.6 s; the app retries, nothing is lost
        fence = sqlite3.connect(db, isolation_level=None)
        fence.execute("CREATE TRIGGER fence BEFORE INSERT ON users BEGIN "
                      "SELECT RAISE(ABORT, 'syncd: writes are fenced'); END")
        time.sleep(0.6)
        fence.execute("DROP TRIGGER fence")
        fence.close()
        time.sleep(1.0)

        flip(env, "env", {"RELATIONAL_DB_PROVIDER": "postgres", "VECTOR_DB_PROVIDER": "pgvector"})
        switched_at = time.time()
        proc.send_signal(signal.SIGHUP)
        before = len(records.load(log))
        wait_for_lines(log, before + 300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""

    recs = records.load(log)
    assert all(r.ok for r in recs), [r for r in recs if not r.ok][:3]
    assert [r.n for r in recs] == list(range(1, len(recs) + 1))
    retried = [r for r in recs if r.attempts > 1]
    assert retried and any("fenced" in (r.error or "") or r.attempts > 10 for r in retried), stderr
    assert max(r.t1 - r.t0 for r in retried) >= 0.3

    old = [r for r in recs if r.store in ("sqlite", "chromadb")]
    new = [r for r in recs if r.store in ("postgres", "pgvector")]
    assert old and new and {r.store for r in new} == {"postgres", "pgvector"}
    assert min(r.t0 for r in new) >= switched_at - 0.5
    assert max(r.n for r in old) < min(r.n for r in new)  # the switch is one point in the sequence

    # before the switch: SQLite and Chroma hold exactly the acknowledged writes
    want_old = records.expected(old)
    have_old = records.read_sqlite(db)
    have_old.update(records.read_chroma(chroma_client(tmp_path / "chroma", None), "embeddings"))
    assert len(want_old["embeddings"]) > 0
    assert records.diff(want_old, have_old) == []

    # after it: PostgreSQL and pgvector started empty and hold exactly the later writes
    want_new = records.expected(new)
    have_new = asyncio.run(read_pg_state(pg_dsn))
    assert records.diff(want_new, have_new) == []
    assert len(want_new["users"]) > 0

    # the comparison can fail: one changed row is named
    some = next(iter(have_new["users"]))
    have_new["users"][some] = {**have_new["users"][some], "name": "someone else"}
    assert any(f"users[{some}]" in p for p in records.diff(want_new, have_new))

    stats = records.pause_stats(recs)
    assert stats["max_write_latency"] >= 0.3 and stats["p50"] < 0.1


def test_records_expected_and_stats() -> None:
    def rec(n: int, op: str, key: int, row: dict[str, object] | None, ok: bool = True,
            t0: float = 0.0, t1: float = 0.0) -> records.Record:
        return records.Record(n, op, "users", key, row, "sqlite", ok, 1, t0, t1, None)

    recs = [rec(1, "insert", 1, {"id": 1, "name": "a"}, t0=0.0, t1=0.01),
            rec(2, "update", 2, {"id": 2, "name": "ghost"}, t0=0.02, t1=0.03),
            rec(3, "insert", 3, {"id": 3, "name": "c"}, ok=False, t0=0.04, t1=0.05),
            rec(4, "update", 1, {"id": 1, "name": "b"}, t0=0.06, t1=0.5),
            rec(5, "delete", 1, None, t0=0.6, t1=0.61)]
    assert records.expected(recs[:4]) == {"users": {1: {"id": 1, "name": "b"}}}
    assert records.expected(recs) == {"users": {}}
    stats = records.pause_stats(recs)
    assert abs(stats["max_write_latency"] - 0.44) < 1e-9
    assert abs(stats["max_gap_between_acks"] - 0.47) < 1e-9
    want = {"t": {1: {"at": "2026-11-22 10:15:00.000000", "x": 2, "v": [0.5, 0.25]}}}
    have = {"t": {1: {"at": dt.datetime(2026, 11, 22, 10, 15), "x": 2.0, "v": [0.5000001, 0.25]}}}
    assert records.diff(want, have) == []
    have["t"][1]["x"] = 3
    assert records.diff(want, have) != []
