"""Kill campaign: SIGKILL ``syncd run`` at random moments, restart it, and count what was lost.

    python -m bench.chaos --kills 100 [--seed S] [--pg-crashes 20] [--rate 200] [--work DIR]

The app (the crash tests' randomized writer) writes all along. The kills are spread over the
phases the daemon goes through:

1. snapshot: the first third of the kills land while the initial copy runs (a static
   ``archive`` table and small chunks make it last); the daemon is started, allowed to run
   for a random moment once ``/status`` says ``snapshot``, and killed.
2. Once the snapshot is complete and caught up, the writer pauses and audit triggers are
   installed in PostgreSQL (as in tests/integration/sqlite/test_sqlite_crash.py): from then on
   every row write syncd commits into ``events`` / ``counters`` is counted.
3. catch-up and streaming: the rest of the kills. For a catch-up kill the daemon stays down
   for a moment while the app writes, then is killed while it replays the backlog; for a
   streaming kill it is killed at a random moment after it has caught up.
4. half-way, the app migrates its schema (``ALTER TABLE archive ADD COLUMN``, the largest
   table) and the next kill aims at the re-copy that follows (``snapshot`` again).
5. ``--pg-crashes`` times, while the daemon streams, the PostgreSQL server is killed with
   SIGKILL (postmaster and backends), left down for a moment and started again; the daemon
   must ride it out (it is not restarted).

6. with Chroma (``--chroma-share``, bench/chroma_app.py) the app also writes a collection on a
   ``chroma run`` server; kills aim at the Chroma stream's snapshot, its index build (seen in
   ``pg_stat_progress_create_index``), catch-up and streaming too, and ``--chroma-restarts``
   times the server is SIGKILLed and started again while syncd streams (not restarted).

The phase of each kill is the one ``/status`` reported just before it. After every kill the
committed checkpoint must not have gone backwards. At the end: acknowledged writes lost 0,
doubled 0, every row equal, ``syncd verify`` equal (bench.campaign.final_checks).

One line per check; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import campaign, chroma_app
from bench.campaign import Check
from bench.chroma_app import Chroma
from bench.noise import CpuLedger
from tests.workload import ARCHIVE_SPEC, SPECS

STREAM = {"chunk_rows": 200, "batch_size": 200, "poll_interval": 0.2, "prune_interval": 1.0}
ALTER = "ALTER TABLE archive ADD COLUMN note TEXT DEFAULT 'migrated'"
"""The largest table (static, not audited): its re-copy lasts long enough to be killed in."""
LATER = {"starting": {"snapshot", "catch-up", "streaming"}, "snapshot": {"streaming"},
         "catch-up": {"streaming"}, "streaming": set()}
"""Phases that mean the one aimed at has been missed (a re-copy goes catch-up -> snapshot)."""


@dataclass
class Ledger:
    """What the campaign did: kills per phase, store faults, checkpoint regressions."""

    kills: Counter[str] = field(default_factory=Counter)
    aimed: Counter[str] = field(default_factory=Counter)
    pg_crashes: int = 0
    chroma_restarts: int = 0
    chroma_restarts_early: Counter[str] = field(default_factory=Counter)
    """Chroma restarts aimed at the Chroma stream's snapshot or index build, by the phase hit."""
    daemon_died: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    last_position: int = 0
    last_chroma_position: int = 0
    schema_changed: bool = False


async def wait_phase(daemon: campaign.Daemon, aim: str, within: float,
                     kind: str = "sqlite") -> str:
    """Poll ``/status`` until the phase of the *kind* stream is *aim*, or one after it
    (missed), or *within* passes; return the phase."""
    deadline = time.monotonic() + within
    phase = "starting"
    while time.monotonic() < deadline and daemon.alive:
        phase = await asyncio.to_thread(daemon.phase, kind)
        if phase == aim or phase in LATER[aim]:
            return phase
        await asyncio.sleep(0.05)
    return phase


class Campaign:
    def __init__(self, conn: asyncpg.Connection, setup: campaign.Setup, pg: campaign.Postgres,
                 rng: random.Random, chroma: Chroma | None = None) -> None:
        self.conn, self.setup, self.pg, self.rng = conn, setup, pg, rng
        self.chroma = chroma
        self.ledger = Ledger()

    def chroma_caught_up(self) -> Callable[[], Awaitable[bool]] | None:
        """For :func:`campaign.wait_caught_up`: the Chroma stream too (on the current
        connection: a PostgreSQL crash replaces it)."""
        if self.chroma is None:
            return None
        return chroma_app.caught_up(self.conn, self.chroma.store, self.chroma.writer.collection_ids)

    async def chroma_done(self) -> bool:
        """The Chroma stream's snapshot is complete and its table's vector index built (it is
        built at the start of catch-up); True without Chroma."""
        if self.chroma is None:
            return True
        cp = await chroma_app.chroma_position(self.conn, self.chroma.writer.collection_id)
        return cp is not None and cp[1] and bool(await self.conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%USING hnsw%'",
            chroma_app.COLLECTION))

    async def check_position(self, after: str) -> None:
        cp = await campaign.stored_position(self.conn)
        if cp is None:
            return
        if cp[0] < self.ledger.last_position:
            self.ledger.regressions.append(f"{after}: {cp[0]} < {self.ledger.last_position}")
        self.ledger.last_position = max(self.ledger.last_position, cp[0])
        if self.chroma is None:
            return
        ccp = await chroma_app.chroma_position(self.conn, self.chroma.writer.collection_id)
        if ccp is None:
            return
        if ccp[0] < self.ledger.last_chroma_position:
            self.ledger.regressions.append(f"{after}: chroma {ccp[0]} < "
                                           f"{self.ledger.last_chroma_position}")
        self.ledger.last_chroma_position = max(self.ledger.last_chroma_position, ccp[0])

    async def kill_in(self, aim: str, *, down: float = 0.0, kind: str = "sqlite") -> str:
        """Start the daemon, wait for phase *aim* of the *kind* stream (``sqlite`` /
        ``chroma``), a random moment more, SIGKILL; return the phase read from ``/status``
        just before the kill. *aim* ``index build`` (Chroma): killed as soon as PostgreSQL
        shows the collection's vector index being built."""
        label = aim if kind == "sqlite" else f"chroma {aim}"
        self.ledger.aimed[label] += 1
        await asyncio.sleep(down)  # the app writes meanwhile: a backlog to catch up on
        daemon = campaign.Daemon(self.setup)
        try:
            if aim == "index build":
                building = await self.wait_index_build(daemon, within=120)
            else:
                building = False
                await wait_phase(daemon, aim, within=120, kind=kind)
                await asyncio.sleep(self.rng.uniform(0.0, {"snapshot": 1.0, "catch-up": 0.2}
                                                     .get(aim, 2.0)))
            phase = "index build" if building else await asyncio.to_thread(daemon.phase, kind)
            if not daemon.alive:
                self.ledger.daemon_died.append(f"before a {aim} kill: exit "
                                               f"{daemon.proc.returncode}")
                return "exited"
            await asyncio.to_thread(daemon.kill)
        finally:
            if daemon.alive:
                daemon.kill()
        self.ledger.kills[phase if kind == "sqlite" else f"chroma {phase}"] += 1
        n = sum(self.ledger.kills.values())
        await self.check_position(f"kill {n} ({kind} {phase})")
        print(f"kill {n:3d}: {kind:<6} aimed at {aim:<11} phase {phase:<11} checkpoint "
              f"{self.ledger.last_position} / chroma {self.ledger.last_chroma_position}", flush=True)
        return phase

    async def wait_index_build(self, daemon: campaign.Daemon, within: float) -> bool:
        """Until PostgreSQL reports a ``CREATE INDEX`` in the target database (True), or the
        index is there without one being seen, or *within* passes (False)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and daemon.alive:
            if await self.conn.fetchval(
                    "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_database d "
                    "ON d.oid = p.datid WHERE d.datname = $1", self.setup.database):
                return True
            if await self.chroma_done():
                return False
            await asyncio.sleep(0.01)
        return False

    async def chroma_restart(self) -> None:
        """SIGKILL the Chroma server while the daemon streams, start it again on the same
        directory; the daemon must ride it out (it is not restarted)."""
        assert self.chroma is not None
        daemon = campaign.Daemon(self.setup)
        try:
            await wait_phase(daemon, "streaming", within=120, kind="chroma")
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            await asyncio.to_thread(self.chroma.store.crash)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await asyncio.to_thread(self.chroma.store.restart)
            self.ledger.chroma_restarts += 1
            print(f"Chroma restart {self.ledger.chroma_restarts}: SIGKILL, restarted", flush=True)
            await asyncio.sleep(1.0)
            if not daemon.alive:
                self.ledger.daemon_died.append(f"exit {daemon.proc.returncode} after Chroma "
                                               f"restart {self.ledger.chroma_restarts}")
                daemon = campaign.Daemon(self.setup)
            await campaign.wait_caught_up(self.conn, self.setup, daemon, within=300,
                                          also=self.chroma_caught_up())
            await self.check_position(f"Chroma restart {self.ledger.chroma_restarts}")
            await asyncio.to_thread(daemon.terminate)
        finally:
            if daemon.alive:
                daemon.kill()

    async def chroma_restart_in(self, aim: str) -> str:
        """Start the daemon, wait for the Chroma stream's *aim* (``snapshot``, or ``index build``
        as PostgreSQL reports it), SIGKILL the Chroma server, start it again a moment later; the
        daemon must ride it out. It is then stopped with SIGTERM (the snapshot resumes at the
        next start); return the phase the restart fell in."""
        assert self.chroma is not None
        label = f"chroma restart in {aim}"
        self.ledger.aimed[label] += 1
        daemon = campaign.Daemon(self.setup)
        try:
            if aim == "index build":
                building = await self.wait_index_build(daemon, within=120)
            else:
                building = False
                await wait_phase(daemon, aim, within=120, kind="chroma")
                await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            phase = "index build" if building else await asyncio.to_thread(daemon.phase, "chroma")
            await asyncio.to_thread(self.chroma.store.crash)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await asyncio.to_thread(self.chroma.store.restart)
            self.ledger.chroma_restarts_early[phase] += 1
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            if not daemon.alive:
                self.ledger.daemon_died.append(f"exit {daemon.proc.returncode} after a Chroma restart "
                                               f"in {phase}")
                return phase
            await asyncio.to_thread(daemon.terminate)
        finally:
            if daemon.alive:
                daemon.kill()
        await self.check_position(f"Chroma restart in {phase}")
        n = sum(self.ledger.chroma_restarts_early.values())
        print(f"Chroma restart {n} aimed at {aim}: fell in {phase}, daemon rode it out; chroma checkpoint "
              f"{self.ledger.last_chroma_position}", flush=True)
        return phase

    async def pg_crash(self) -> None:
        """SIGKILL PostgreSQL while the daemon streams; the daemon must survive it."""
        daemon = campaign.Daemon(self.setup)
        try:
            await wait_phase(daemon, "streaming", within=120)
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            await asyncio.to_thread(self.pg.crash)
            await self.conn.close()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await asyncio.to_thread(self.pg.restart)
            self.conn = await asyncpg.connect(self.setup.dsn)
            self.ledger.pg_crashes += 1
            print(f"PostgreSQL crash {self.ledger.pg_crashes}: SIGKILL, restarted", flush=True)
            await asyncio.sleep(1.0)
            if not daemon.alive:  # it should have waited and retried, not exited
                self.ledger.daemon_died.append(f"exit {daemon.proc.returncode} after PostgreSQL "
                                               f"crash {self.ledger.pg_crashes}")
                daemon = campaign.Daemon(self.setup)
            await campaign.wait_caught_up(self.conn, self.setup, daemon, within=300,
                                          also=self.chroma_caught_up())
            await self.check_position(f"PostgreSQL crash {self.ledger.pg_crashes}")
            await asyncio.to_thread(daemon.terminate)
        finally:
            if daemon.alive:
                daemon.kill()

    async def settle(self, writer: campaign.PacedWriter) -> tuple[int, int]:
        """Run to caught up with the writer paused; install the audit; return its base."""
        writer.pause()
        if self.chroma:
            self.chroma.writer.pause()
        daemon = campaign.Daemon(self.setup)
        try:
            await campaign.wait_caught_up(self.conn, self.setup, daemon,
                                          also=self.chroma_caught_up())
            await self.conn.execute(campaign.AUDIT)
            base = (campaign.sqlite_value(self.setup.sqlite, "SELECT count(*) FROM events"),
                    campaign.sqlite_value(self.setup.sqlite, "SELECT sum(n) FROM counters"))
            await asyncio.to_thread(daemon.terminate)
        finally:
            if daemon.alive:
                daemon.kill()
        writer.pause(False)
        if self.chroma:
            self.chroma.writer.pause(False)
        return base

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate, self.setup.sqlite)
        self.ledger.schema_changed = True


def migrate(sqlite: Path) -> None:
    conn = sqlite3.connect(sqlite, timeout=60, isolation_level=None)
    try:
        conn.execute(ALTER)
    finally:
        conn.close()


async def run(args: argparse.Namespace) -> int:
    work: Path = args.work
    pg = campaign.Postgres(work / "pg")
    ledger = CpuLedger(pg.data_dir / "postmaster.pid")
    ledger.mark("campaign")
    rng = random.Random(args.seed)
    chroma: Chroma | None = None
    try:
        if args.chroma_share > 0:
            chroma = Chroma.start(work / "chroma", args.seed + 2, args.rate * args.chroma_share,
                                  populate=args.chroma_items, space=args.space,
                                  lifecycle=args.chroma_lifecycle)
        setup = campaign.prepare(pg.server, work / "run", database="chaos", seed=args.seed,
                                 scale=args.scale, archive_rows=args.archive_rows, stream=STREAM,
                                 chroma=(chroma.store.url, chroma.store.path) if chroma else None)
        init = campaign.run_cli(setup, "init")
        if init.returncode != 0:
            print(f"FAIL  syncd init: exit {init.returncode}: {init.stderr.strip()[-300:]}")
            return 1
        if chroma:
            chroma.after_init()
        conn = await asyncpg.connect(setup.dsn)
        c = Campaign(conn, setup, pg, rng, chroma)
        try:
            checks = await drive(c, args)
        finally:
            await c.conn.close()
    finally:
        ledger.mark("end")
        if chroma:
            chroma.writer.halt()
            chroma.store.stop()
        pg.stop()
    print_ledger(c.ledger)
    for phase in ledger.report():
        print(f"cpu: wall {phase['wall_seconds']} s, campaign {phase['bench_cpu_seconds']} s, "
              f"other load {phase['foreign_cpu_seconds']} s "
              f"({float(phase['foreign_share']) * 100:.0f} % of the machine)")
    print(f"work dir: {work}")
    return campaign.report(checks)


async def drive(c: Campaign, args: argparse.Namespace) -> list[Check]:
    writer = campaign.PacedWriter(c.setup.sqlite, args.seed + 1, args.rate)
    if c.chroma:
        c.chroma.writer.start()
    try:
        for i in range(args.chroma_restarts_early if c.chroma else 0):
            if await c.chroma_done():
                break
            await c.chroma_restart_in(("snapshot", "index build")[i % 2])
        snapshot_kills = max(1, args.kills // 3) if args.kills else 0
        done = 0
        while done < snapshot_kills:
            cp = await campaign.stored_position(c.conn)
            sqlite_done = cp is not None and cp[1]
            chroma_done = await c.chroma_done()
            if sqlite_done and chroma_done:
                break  # the snapshots finished: the rest go to the other phases
            if not chroma_done and (sqlite_done or done % 2 == 0):
                await c.kill_in(c.rng.choice(("snapshot", "index build")), kind="chroma")
            else:
                await c.kill_in("snapshot")
            done += 1
        base = await c.settle(writer)
        rest = args.kills - done
        crash_at = Counter(c.rng.randrange(rest + 1) for _ in range(args.pg_crashes))
        restart_at = Counter(c.rng.randrange(rest + 1)
                             for _ in range(args.chroma_restarts if c.chroma else 0))
        migrate_at = rest // 2 if args.schema_change else -1
        for i in range(rest + 1):
            for _ in range(crash_at[i]):  # several crashes may fall on the same point
                await c.pg_crash()
            for _ in range(restart_at[i]):
                await c.chroma_restart()
            if i == rest:
                break
            if i == migrate_at:
                await c.migrate()
                await c.kill_in("snapshot")
                continue
            kind = "chroma" if c.chroma and c.rng.random() < 1 / 3 else "sqlite"
            if c.rng.random() < 0.5:
                await c.kill_in("catch-up", down=c.rng.uniform(0.5, 2.0), kind=kind)
            else:
                await c.kill_in("streaming", kind=kind)
        # the end: one more run to caught up while the app writes, then the app stops
        daemon = campaign.Daemon(c.setup)
        try:
            await campaign.wait_caught_up(c.conn, c.setup, daemon, also=c.chroma_caught_up())
            await asyncio.sleep(2.0)
            tally = writer.stop()
            record = await asyncio.to_thread(c.chroma.writer.stop) if c.chroma else None
            await campaign.wait_caught_up(c.conn, c.setup, daemon, also=c.chroma_caught_up())
            checks = await campaign.final_checks(c.conn, c.setup, tally, base,
                                                  (ARCHIVE_SPEC, *SPECS))
            if record is not None:
                checks += await chroma_app.chroma_checks(c.conn, record)
            code = await asyncio.to_thread(daemon.terminate)
        finally:
            if daemon.alive:
                daemon.kill()
    finally:
        writer.halt()
    ledger = c.ledger
    total = sum(ledger.kills.values())
    checks.insert(0, Check("kills done", total == args.kills,
                           f"{total} of {args.kills}: "
                           + ", ".join(f"{p} {n}" for p, n in sorted(ledger.kills.items()))))
    checks.insert(1, Check("PostgreSQL crashes done", ledger.pg_crashes == args.pg_crashes,
                           f"{ledger.pg_crashes} of {args.pg_crashes}"))
    if c.chroma:
        checks.insert(2, Check("Chroma restarts done", ledger.chroma_restarts == args.chroma_restarts,
                               f"{ledger.chroma_restarts} of {args.chroma_restarts}"))
    checks.insert(2, Check("daemon never exited by itself", not ledger.daemon_died,
                           f"{len(ledger.daemon_died)} {ledger.daemon_died[:3]}"))
    checks.insert(3, Check("checkpoint never went backwards", not ledger.regressions,
                           f"{len(ledger.regressions)} {ledger.regressions[:3]}"))
    checks.append(Check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}"))
    return checks


def print_ledger(ledger: Ledger) -> None:
    print("kills aimed at: " + ", ".join(f"{p} {n}" for p, n in sorted(ledger.aimed.items())))
    print("kills by phase read from /status just before: "
          + ", ".join(f"{p} {n}" for p, n in sorted(ledger.kills.items())))
    early = ", ".join(f"{n} in {p}" for p, n in sorted(ledger.chroma_restarts_early.items())) or "none early"
    print(f"PostgreSQL SIGKILL + restart: {ledger.pg_crashes}; Chroma SIGKILL + restart: "
          f"{ledger.chroma_restarts} while streaming, {early}; "
          f"schema change mid-run: {'yes' if ledger.schema_changed else 'no'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--pg-crashes", type=int, default=1)
    ap.add_argument("--chroma-share", type=float, default=0.1,
                    help="Chroma writes per second as a share of --rate (0: no Chroma)")
    ap.add_argument("--space", choices=("l2", "cosine", "ip"), default="l2",
                    help="the collections' distance")
    ap.add_argument("--chroma-lifecycle", type=float, default=0.0, metavar="SHARE",
                    help="share of the app's Chroma steps that create, write to, rename or delete "
                         "side collections (0: none)")
    ap.add_argument("--chroma-items", type=int, default=3000,
                    help="items in the collection before syncd starts (its snapshot and index)")
    ap.add_argument("--chroma-restarts", type=int, default=0,
                    help="SIGKILLs + restarts of the Chroma server while syncd streams")
    ap.add_argument("--chroma-restarts-early", type=int, default=0,
                    help="SIGKILLs + restarts of the Chroma server aimed at the Chroma stream's snapshot "
                         "and index build, before the kills")
    ap.add_argument("--no-schema-change", dest="schema_change", action="store_false")
    ap.add_argument("--rate", type=float, default=200.0, help="app row changes per second")
    ap.add_argument("--scale", type=int, default=100, help="initial rows (x2..x5 per table)")
    ap.add_argument("--archive-rows", type=int, default=20_000,
                    help="rows of a static table that make the snapshot last")
    ap.add_argument("--nofile", type=int, default=None, metavar="N",
                    help="start every daemon with ulimit -n N (e.g. 64)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    campaign.Daemon.nofile = args.nofile
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="syncd-chaos-"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {args.kills} kills, {args.pg_crashes} PostgreSQL crashes, "
          f"{args.chroma_restarts} Chroma restarts, seed {args.seed}, "
          f"ulimit -n {args.nofile or 'inherited'}", flush=True)
    try:
        return asyncio.run(run(args))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"FAIL  campaign aborted: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
