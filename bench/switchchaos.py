"""Switch kill campaign: SIGKILL ``syncd cutover`` / ``syncd rollback`` at random steps, under load.

    python -m bench.switchchaos --kills 20 [--rate 100] [--vectors] [--seed S] [--work DIR]

The reference app (tests/app/refapp.py: reads ``.env``, reloads on SIGHUP, logs every write
and whether the store acknowledged it) writes all along; ``syncd run`` streams; the campaign's
own PostgreSQL (bench/campaign.py). Each round switches the app the other way: ``cutover``
when it uses SQLite, ``rollback`` when it uses PostgreSQL, with ``SYNCD_KILL_AT=<op>:<step>``
at a random step (preflight, fence, drain, flip, reload), so the command dies there by
SIGKILL. Then the switch is finished: ``--resume``, or, for a killed cutover, a ``rollback``
that reverts it (a coin decides). The app keeps writing for a random moment and the next
round begins.

At the end the app stops, the stream of the final direction drains, and both stores are
compared with the state the app's acknowledged writes imply (tests/app/records.py, which
shares nothing with syncd's converters): acknowledged writes lost (a key missing or stale)
0, doubled (a row no acknowledged write left there) 0, ``syncd verify`` equal, the daemon
stops on SIGTERM with exit 0; the app writes that failed (the app saw the error and gave up
retrying, e.g. on a fenced table while a killed rollback waits to be resumed) are counted.
One line per check; exit 1 if any failed.

With ``--vectors`` the app also writes its embeddings (a ``chroma run`` server of the
campaign's own, then pgvector after a cutover, tests/integration/cutover_support.py): each
switch also fences Chroma or pgvector and turns the collection's stream around, and the
final checks cover the collection in Chroma and its table in PostgreSQL the same way.

With ``--daemon-kills SHARE`` that share of the rounds also SIGKILLs ``syncd run`` right after
the switch command died, and starts it again before the switch is finished: the daemon's own
crash in the middle of a half-done switch (a fence up, the config flipped or not, the
reverse streams started or not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from bench import campaign, pg
from bench.campaign import Check
from tests.app import records
from tests.integration.chroma_support import ChromaServer, run_chroma
from tests.integration.cutover_support import Migration

STEPS = ("preflight", "fence", "drain", "flip", "reload")
TABLES = ("users", "documents")
COLLECTION = "embeddings"
"""The reference app's collection (and its pgvector table) with ``--vectors``."""


async def direction(dsn: str) -> tuple[str, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('syncd.cutover') IS NOT NULL"):
            return "forward", None
        row = await conn.fetchrow("SELECT direction, operation FROM syncd.cutover WHERE id = 1")
        return str(row["direction"]), row["operation"]
    finally:
        await conn.close()


def compare(want: records.State, have: records.State, objects: tuple[str, ...] = TABLES
            ) -> tuple[int, int]:
    """(lost: acknowledged keys missing or stale, doubled: keys no acknowledged write left)."""
    lost = doubled = 0
    for table in objects:
        w, h = want.get(table, {}), have.get(table, {})
        lost += sum(1 for k, row in w.items()
                    if k not in h or records.diff({table: {k: row}}, {table: {k: h[k]}}))
        doubled += sum(1 for k in h if k not in w)
    return lost, doubled


class Campaign:
    def __init__(self, m: Migration, rng: random.Random, daemon_kills: float = 0.0) -> None:
        self.m, self.rng, self.daemon_kills = m, rng, daemon_kills
        self.daemon_killed: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.not_killed: list[str] = []
        self.failed: list[str] = []
        self.refusals: Counter[str] = Counter()

    async def attempt(self, *args: str, env: dict[str, str] | None = None
                      ) -> subprocess.CompletedProcess[str]:
        """Run a switch command; while it is refused (the stream lags on a loaded machine:
        nothing is changed then), wait and try again, up to ten times."""
        for _ in range(10):
            proc = await asyncio.to_thread(self.m.command, *args, env=env)
            if proc.returncode == 0 or "refused, nothing was changed" not in proc.stderr:
                return proc
            self.refusals[proc.stderr.strip().splitlines()[-1][:160]] += 1
            await asyncio.sleep(2.0)
        return proc

    async def round(self, n: int) -> None:
        m = self.m
        going, _ = await direction(m.pg_dsn)
        op = "cutover" if going == "forward" else "rollback"
        step = self.rng.choice(STEPS)
        proc = await self.attempt(op, env={"SYNCD_KILL_AT": f"{op}:{step}"})
        if proc.returncode != -9:
            print(f"round {n:3d}: {op} aimed at {step} not killed: exit {proc.returncode}",
                  flush=True)
            self.not_killed.append(f"{op}:{step} exit {proc.returncode}: "
                                   f"{(proc.stderr or proc.stdout).strip()[-200:]}")
            return
        self.kills[f"{op}:{step}"] += 1
        if self.rng.random() < self.daemon_kills:
            daemon = m.daemon
            assert daemon is not None
            daemon.kill()
            await asyncio.to_thread(daemon.wait, 30)
            self.daemon_killed[f"{op}:{step}"] += 1
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            m.start_daemon()
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        then = "resume" if op == "rollback" or self.rng.random() < 0.5 else "revert"
        args = (op, "--resume") if then == "resume" else ("rollback",)
        done = await self.attempt(*args)
        self.finished[f"{op} killed, {then}"] += 1
        now, pending = await direction(m.pg_dsn)
        print(f"round {n:3d}: {op} killed at {step:<9} then {then:<6} -> exit {done.returncode}, "
              f"now {now}{' (' + pending + ' pending)' if pending else ''}", flush=True)
        if done.returncode != 0 or pending is not None:
            self.failed.append(f"{op}:{step} then {then}: exit {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-300:]}")
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))


async def run(args: argparse.Namespace) -> int:
    work: Path = args.work
    server = campaign.Postgres(work / "pg")
    rng = random.Random(args.seed)
    checks: list[Check] = []
    try:
        dsn = pg.recreate_database(server.server, "switch")
        (work / "run").mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            chroma = stack.enter_context(run_chroma(work / "chroma")) if args.vectors else None
            m = Migration(work / "run", dsn, chroma_url=chroma.url if chroma else None,
                          chroma_dir=chroma.path if chroma else None)
            try:
                await asyncio.to_thread(m.start, args.rate)
                c = Campaign(m, rng, args.daemon_kills)
                started = time.monotonic()
                for n in range(1, args.kills + 1):
                    await c.round(n)
                checks = await finish(c, args, time.monotonic() - started, chroma)
            finally:
                m.close()
    finally:
        server.stop()
    print(f"work dir: {work}")
    return campaign.report(checks)


async def finish(c: Campaign, args: argparse.Namespace, seconds: float,
                 chroma: ChromaServer | None) -> list[Check]:
    m = c.m
    now, pending = await direction(m.pg_dsn)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(m.stop_app)
    await asyncio.to_thread(m.wait_streaming, "sqlite" if now == "forward" else "postgres→sqlite",
                            120)
    if chroma is not None:
        await asyncio.to_thread(m.wait_streaming, "chroma:" if now == "forward" else "pgvector→chroma",
                                120)
    recs = m.records()
    want = records.expected(recs)
    deadline = time.monotonic() + 30
    lost_v = doubled_v = lost_g = doubled_g = 0
    while True:  # the other stream may still be draining
        in_sqlite = records.read_sqlite(m.db, TABLES)
        in_pg = await records.read_postgres(m.pg_dsn, TABLES)
        lost_s, doubled_s = compare(want, in_sqlite)
        lost_p, doubled_p = compare(want, in_pg)
        if chroma is not None:
            in_chroma = await asyncio.to_thread(records.read_chroma, chroma.client(), COLLECTION)
            in_pgvector = await records.read_pgvector(m.pg_dsn, COLLECTION, COLLECTION)
            lost_v, doubled_v = compare(want, in_chroma, (COLLECTION,))
            lost_g, doubled_g = compare(want, in_pgvector, (COLLECTION,))
        if (not (lost_s or doubled_s or lost_p or doubled_p or lost_v or doubled_v or lost_g or doubled_g)
                or time.monotonic() > deadline):
            break
        await asyncio.sleep(0.5)
    kills = sum(c.kills.values())
    acked = sum(1 for r in recs if r.ok)
    refused = [r for r in recs if not r.ok]
    verify = await asyncio.to_thread(m.command, "verify")
    last = (verify.stdout.strip().splitlines() or [verify.stderr.strip()])[-1:]
    code = await asyncio.to_thread(m.stop_daemon)
    rows = sum(len(v) for v in want.values())
    stats: dict[str, Any] = records.pause_stats(recs)
    vectors = [] if chroma is None else [
        Check("embeddings acknowledged (information)", True,
              f"{len(want.get(COLLECTION, {}))} live items; written to Chroma "
              f"{sum(1 for r in recs if r.ok and r.store == 'chromadb')}, to pgvector "
              f"{sum(1 for r in recs if r.ok and r.store == 'pgvector')} times"),
        Check("acknowledged embeddings lost", lost_v == 0 and lost_g == 0,
              f"{lost_v + lost_g} (Chroma {lost_v}, pgvector {lost_g})"),
        Check("acknowledged embeddings doubled", doubled_v == 0 and doubled_g == 0,
              f"{doubled_v + doubled_g} (Chroma {doubled_v}, pgvector {doubled_g})"),
    ]
    return [
        Check("switch kills done", kills == args.kills and not c.not_killed,
              f"{kills} of {args.kills}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.kills.items()))
              + (f"; not killed: {c.not_killed[:2]}" if c.not_killed else "")),
        Check("daemon SIGKILLed (and restarted) inside a killed switch", True,
              f"{sum(c.daemon_killed.values())}: "
              + ", ".join(f"{k} {n}" for k, n in sorted(c.daemon_killed.items()))),
        Check("every killed switch finished (resume / revert)", not c.failed,
              ", ".join(f"{k} {n}" for k, n in sorted(c.finished.items()))
              + (f"; failed: {c.failed[:2]}" if c.failed else "")),
        Check("no switch left pending at the end", pending is None, f"direction {now}"),
        Check("switches refused by preflight, then retried", True,
              f"{sum(c.refusals.values())} {dict(c.refusals.most_common(2))}"),
        Check("app writes refused (not acknowledged: the app saw the error)", True,
              f"{len(refused)} of {len(recs)} ({acked} acknowledged over {seconds:.0f} s; longest "
              f"write {stats['max_write_latency']:.2f} s)"
              + (f": {refused[0].error}" if refused else "")),
        Check("acknowledged writes lost", lost_s == 0 and lost_p == 0,
              f"{lost_s + lost_p} (SQLite {lost_s}, PostgreSQL {lost_p}; {rows} rows expected)"),
        Check("acknowledged writes doubled", doubled_s == 0 and doubled_p == 0,
              f"{doubled_s + doubled_p} (SQLite {doubled_s}, PostgreSQL {doubled_p})"),
        *vectors,
        Check("syncd verify", verify.returncode == 0,
              f"exit {verify.returncode}: {' '.join(last)[:200]}"),
        Check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.switchchaos",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rate", type=float, default=100.0, help="app writes per second")
    ap.add_argument("--daemon-kills", type=float, default=0.0, metavar="SHARE",
                    help="share of the rounds that also SIGKILL syncd run inside the killed switch")
    ap.add_argument("--vectors", action="store_true",
                    help="the app also writes embeddings (Chroma, then pgvector)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="syncd-switchchaos-"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"switchchaos: {args.kills} kills of cutover / rollback, seed {args.seed}", flush=True)
    try:
        return asyncio.run(run(args))
    except (RuntimeError, OSError, AssertionError, asyncpg.PostgresError) as exc:
        print(f"FAIL  campaign aborted: {str(exc)[:2000]}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
