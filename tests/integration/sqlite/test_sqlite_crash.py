"""SIGKILL and SIGTERM at any point: nothing lost, nothing doubled, the snapshot resumes.

``SYNCD_KILL_AT=chunk:N`` / ``batch:N`` makes ``syncd run`` SIGKILL itself right
after its N-th committed snapshot chunk / streamed batch; other kills come from
outside at a random moment. After every interruption the state syncd committed
in PostgreSQL is read back and checked against the rows really there, and the
final copy is compared with SQLite row by row.

The app writer here changes no primary key of a row that others reference and
writes REAL values of at most 13 significant digits: both cases have tests of
their own in test_sqlite_workload.py (which currently fail), and these tests are
about crashes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.workload import (
    ARCHIVE_SPEC,
    SPECS,
    Daemon,
    Writer,
    WriterThread,
    create_database,
    describe,
    differences,
    open_rejects,
    sqlite_scalar,
    stored_checkpoint,
    wait_caught_up,
    write_config,
)

CHUNK = 500
ARCHIVE_ROWS = 8000  # 16 full chunks, copied first (tables are copied in name order)


def seed() -> int:
    return int(os.environ.get("SYNCD_TEST_SEED") or random.randrange(2**32))


async def snapshot_state(pg: asyncpg.Connection) -> dict[str, Any]:
    cp = await stored_checkpoint(pg)
    assert cp is not None and cp[1] is not None, f"no snapshot state committed: {cp}"
    return cp[1]


async def check_snapshot_matches_rows(pg: asyncpg.Connection, state: dict[str, Any]) -> int:
    """The committed snapshot state describes exactly the rows in the target; return rows copied."""
    for spec in (ARCHIVE_SPEC, *SPECS):
        have = await pg.fetchval(f'SELECT count(*) FROM public."{spec.name}"')
        assert have == state["copied"].get(spec.name, 0), \
            f"{spec.name}: {have} rows in PostgreSQL, checkpoint says {state['copied']}"
    # the static archive is copied in key order: exactly ids 1..copied, none twice
    n = state["copied"].get("archive", 0)
    row = await pg.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d, coalesce(max(id), 0) AS top "
                            "FROM archive")
    assert (row["n"], row["d"], row["top"]) == (n, n, n)
    if "archive" in state["last_key"]:
        assert state["last_key"]["archive"] == [n]
    assert not await open_rejects(pg)
    return sum(state["copied"].values())


async def wait_copied(pg: asyncpg.Connection, daemon: Daemon, more_than: int,
                      within: float = 60) -> int:
    """Poll the committed snapshot progress until it passes *more_than* rows."""
    deadline = time.monotonic() + within
    while True:
        daemon.ensure_alive()
        cp = await stored_checkpoint(pg)
        if cp and cp[1]:
            assert not cp[1]["complete"], "the snapshot finished before the interruption"
            copied = sum(cp[1]["copied"].values())
            if copied > more_than:
                return copied
        assert time.monotonic() < deadline, daemon.tail()
        await asyncio.sleep(0.01)


async def test_snapshot_resumes_after_each_kill(tmp_path: Path, make_config: Any,
                                                pg: asyncpg.Connection) -> None:
    s = seed()
    rng = random.Random(s)
    db = tmp_path / "app.sqlite"
    create_database(db, archive_rows=ARCHIVE_ROWS)
    app = Writer(db, s, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=800, documents=2500, tags=3000, orders=1200, audit=1500, settings=500,
                 sessions=800)
    cfg = make_config(db, chunk_rows=CHUNK, batch_size=500)
    run_syncd("--config", str(cfg), "init")
    writer = WriterThread(app, pause=0.005).start()  # the app keeps writing during every run
    log = tmp_path / "syncd.log"
    daemons: list[Daemon] = []

    def spawn(kill_at: str | None = None) -> Daemon:
        daemons.append(Daemon(cfg, log, kill_at=kill_at))
        return daemons[-1]

    copied = 0
    try:
        # 1. kill points inside the archive: exactly K full chunks more each time
        for k in (3, 11):
            rc = await spawn(f"chunk:{k}").wait()
            assert rc == -signal.SIGKILL, f"exit {rc}"
            state = await snapshot_state(pg)
            now = await check_snapshot_matches_rows(pg, state)
            assert now == copied + k * CHUNK, f"copied {now}, expected {copied} + {k} chunks"
            copied = now
        # 2. a kill point that crosses from the archive into the tables being written
        rc = await spawn("chunk:7").wait()
        assert rc == -signal.SIGKILL
        state = await snapshot_state(pg)
        assert state["copied"]["archive"] == ARCHIVE_ROWS and "archive" in state["done"]
        now = await check_snapshot_matches_rows(pg, state)
        assert copied < now <= copied + 7 * CHUNK
        copied = now
        # 3. SIGTERM mid-snapshot: a clean stop, exit 0, progress kept
        daemon = spawn()
        await wait_copied(pg, daemon, copied)
        assert await daemon.terminate() == 0, daemon.tail()
        now = await check_snapshot_matches_rows(pg, await snapshot_state(pg))
        assert now > copied
        copied = now
        # 4. SIGKILL from outside at a random moment (possibly inside a chunk's transaction)
        daemon = spawn()
        await wait_copied(pg, daemon, copied + rng.randrange(0, 2 * CHUNK))
        await asyncio.sleep(rng.uniform(0, 0.05))
        daemon.kill()
        now = await check_snapshot_matches_rows(pg, await snapshot_state(pg))
        assert now >= copied
        # 5. finish the snapshot, then die in the catch-up that replays what the app wrote meanwhile
        rc = await spawn("batch:2").wait()
        assert rc == -signal.SIGKILL
        cp = await stored_checkpoint(pg)
        assert cp is not None and (cp[1] is None or cp[1]["complete"]), cp
        # 6. to the end, streaming what the writer does meanwhile
        daemon = spawn()
        await wait_caught_up(pg, db, daemon)
        await writer.run_until(writer.transactions + 200)
        writer.stop()
        await wait_caught_up(pg, db, daemon)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        for d in daemons:
            if d.alive:
                d.kill()
        writer.halt()
        app.close()

    # the static archive was copied exactly once over all seven runs: a chunk copied twice would
    # have hit the primary key and gone to the rejects
    row = await pg.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d FROM archive")
    assert (row["n"], row["d"]) == (ARCHIVE_ROWS, ARCHIVE_ROWS)
    diffs = await differences(db, pg, (ARCHIVE_SPEC, *SPECS))
    assert not diffs, describe(diffs, f"seed {s}")
    assert not await open_rejects(pg), f"seed {s}: {await open_rejects(pg)}"


AUDIT = """
CREATE SCHEMA audit;
CREATE TABLE audit.applied (seq bigserial, tbl text NOT NULL, op text NOT NULL, id text, n bigint);
CREATE FUNCTION audit.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.applied (tbl, op, id, n)
    VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(NEW)->>'id', (to_jsonb(NEW)->>'n')::bigint);
    RETURN NULL;
END $$;
CREATE TRIGGER note AFTER INSERT OR UPDATE ON public.events
    FOR EACH ROW EXECUTE FUNCTION audit.note();
CREATE TRIGGER note AFTER INSERT OR UPDATE ON public.counters
    FOR EACH ROW EXECUTE FUNCTION audit.note();
ALTER TABLE public.events ENABLE ALWAYS TRIGGER note;
ALTER TABLE public.counters ENABLE ALWAYS TRIGGER note;
"""
"""Notes every row write syncd commits into events / counters, in order (rolled back with it)."""


async def test_streaming_survives_sigkill_exactly_once(tmp_path: Path, make_config: Any,
                                                       pg: asyncpg.Connection) -> None:
    s = seed()
    rng = random.Random(s)
    db = tmp_path / "app.sqlite"
    create_database(db)
    app = Writer(db, s, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=200, documents=500, tags=500, orders=200, audit=300, settings=100,
                 sessions=200)
    cfg = make_config(db, batch_size=40)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot done, writer idle
    assert sqlite_scalar(db, "SELECT count(*) FROM events") == 0
    assert sqlite_scalar(db, "SELECT sum(n) FROM counters") == 0
    await pg.execute(AUDIT)  # from here on, every change reaches PostgreSQL by the stream only

    log = tmp_path / "syncd.log"
    writer = WriterThread(app).start()
    daemons: list[Daemon] = []

    def spawn(kill_at: str | None = None) -> Daemon:
        daemons.append(Daemon(cfg, log, kill_at=kill_at))
        return daemons[-1]

    positions = []
    try:
        for k in (4, 25, 70):
            await writer.run_until(writer.transactions + 100)
            rc = await spawn(f"batch:{k}").wait()
            assert rc == -signal.SIGKILL, f"exit {rc}"
            cp = await stored_checkpoint(pg)
            assert cp is not None
            positions.append(cp[0])
        for _ in range(2):  # and from outside, at random moments
            daemon = spawn()
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            daemon.ensure_alive()
            daemon.kill()
            cp = await stored_checkpoint(pg)
            assert cp is not None
            positions.append(cp[0])
        assert positions == sorted(positions) and positions[0] > 0, positions
        daemon = spawn()
        await writer.run_until(writer.transactions + 300)
        tally = writer.stop()
        await wait_caught_up(pg, db, daemon)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        for d in daemons:
            if d.alive:
                d.kill()
        writer.halt()
        app.close()

    diffs = await differences(db, pg)
    assert not diffs, describe(diffs, f"seed {s}")
    assert not await open_rejects(pg)
    events = sqlite_scalar(db, "SELECT count(*) FROM events")
    increments = sqlite_scalar(db, "SELECT sum(n) FROM counters")
    assert events == tally.transactions and increments == tally.transactions
    applied = {(r["tbl"], r["op"]): r["n"] for r in await pg.fetch(
        "SELECT tbl, op, count(*) AS n FROM audit.applied GROUP BY 1, 2")}
    # each committed insert written once, never a second time (a second one would be an UPDATE)
    assert applied.get(("events", "INSERT"), 0) == events, applied
    assert applied.get(("events", "UPDATE"), 0) == 0, applied
    # no batch applied twice after a kill: each counter's values, in the order they were written,
    # only go up (a batch keeps a key's last change only, so not every increment is written)
    written: dict[str, list[int]] = {}
    for r in await pg.fetch("SELECT id, n FROM audit.applied WHERE tbl = 'counters' ORDER BY seq"):
        written.setdefault(r["id"], []).append(r["n"])
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    final = {str(r[0]): int(r[1]) for r in source.execute("SELECT id, n FROM counters")}
    source.close()
    assert sum(final.values()) == increments
    for key, ns in written.items():
        assert ns == sorted(set(ns)), f"counter {key} written {ns}: a batch was applied twice"
        assert ns[-1] == final[key], (key, ns, final)
    assert all(final[key] == 0 for key in set(final) - set(written))
    seqs = await pg.fetchrow("SELECT count(*) AS n, count(DISTINCT seq) AS d, max(seq) AS top FROM events")
    assert (seqs["n"], seqs["d"], seqs["top"]) == (events, events, events)


def changelog_inserts(db: Path, table: str, upto: int) -> tuple[set[int], set[int]]:
    """Rowids inserted into *table* by changes at or below *upto*, and above it."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        below, above = set(), set()
        for cid, pk in conn.execute("SELECT id, pk FROM _syncd_changelog WHERE tbl = ? AND op = 'I'",
                                    (table,)):
            (below if cid <= upto else above).add(json.loads(pk)[0])
        return below, above
    finally:
        conn.close()


async def test_sigterm_under_load_stops_cleanly_at_a_true_checkpoint(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    s = seed()
    db = tmp_path / "app.sqlite"
    create_database(db)
    app = Writer(db, s, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=200, documents=500, tags=500, orders=200, audit=300, settings=100,
                 sessions=200)
    # no pruning while the writer runs: the changelog is the record to check the checkpoint against
    cfg = write_config(tmp_path / "syncd.toml", sqlite=db, dsn=pg_dsn, state_dir=tmp_path / "state",
                       batch_size=100, prune_interval=1e9)
    run_syncd("--config", str(cfg), "init")
    log = tmp_path / "syncd.log"
    daemon = Daemon(cfg, log)
    writer = WriterThread(app, pause=0.001)
    try:
        await wait_caught_up(pg, db, daemon)
        writer.start()
        await writer.run_until(1500)
        daemon.ensure_alive()
        started = time.monotonic()
        rc = await daemon.terminate(within=60)
        stop_seconds = time.monotonic() - started
        assert rc == 0, daemon.tail()
        writer.stop()
        cp = await stored_checkpoint(pg)
        assert cp is not None
        position = cp[0]
        below, above = changelog_inserts(db, "events", position)
        assert above, "the stop should leave changes behind the checkpoint"
        have = {r[0] for r in await pg.fetch("SELECT _syncd_rowid FROM events")}
        # exactly the inserts up to the checkpoint are there: not ahead, not behind
        assert have == below, (f"checkpoint {position}: {len(below - have)} inserts missing, "
                               f"{len(have - below)} beyond it")
        # a restart takes it from there
        daemon = Daemon(cfg, log)
        await wait_caught_up(pg, db, daemon)
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        if daemon.alive:
            daemon.kill()
        writer.halt()
        app.close()
    diffs = await differences(db, pg)
    assert not diffs, describe(diffs, f"seed {s}")
    print(f"syncd stopped {stop_seconds:.2f} s after SIGTERM under load")
