"""Soak: the app writes for M minutes at R changes/s while ``syncd run`` streams.

    python -m bench.soak --minutes 60 --rate 500 [--seed S] [--work DIR]

The campaign's own PostgreSQL server and a populated app database (bench/campaign.py);
``syncd init``, then ``syncd run`` (a subprocess) copies the snapshot and streams while the
crash tests' randomized writer (inserts, updates, deletes and key changes over nine tables)
commits at the given rate. Every ``--scrape`` seconds the harness reads ``/metrics`` and
``/status`` from the daemon's health listener and samples the daemon's RSS and open file
descriptors (``/proc/<pid>/fd``), the target database's connections (``pg_stat_activity``),
the rows in ``_syncd_changelog`` (and how many of them are applied, at or below the
committed checkpoint, and only wait to be pruned), the size of the SQLite WAL and the rows in
Chroma's ``embeddings_queue``
(the app also writes a collection: bench/chroma_app.py). Every second it samples the
lag as seen from outside: now minus the commit-time stamp of the newest ``events`` row in
PostgreSQL. At the end it stops the writer, waits for the stream to catch up, and checks
(bench.campaign.final_checks): nothing lost, nothing doubled, every row equal, ``syncd verify``.

One line per check; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from bench import campaign, chroma_app
from bench.campaign import Check
from bench.chroma_app import Chroma
from bench.noise import CpuLedger
from bench.procs import tree_rss
from bench.stream_lag import percentile, slope

MIB = 1 << 20
CHANGELOG_BOUND_SECONDS = 120
"""The changelog may hold at most this many seconds of writes (pruning keeps up)."""
WAL_BOUND = 64 * MIB
FD_SPREAD = 8
PG_CONNECTIONS_MAX = 20


@dataclass(frozen=True)
class Sample:
    t: float
    rss: int
    fds: int
    pg_connections: int
    changelog: int
    kept: int
    """Changelog rows at or below the committed checkpoint: applied, waiting to be pruned."""
    wal: int
    phase: str
    chroma_queue: int
    """Rows in Chroma's ``embeddings_queue`` (0 without Chroma)."""
    chroma_kept: int
    """Of them at or below syncd's committed Chroma position: applied, waiting to be pruned."""
    metrics_ok: bool
    syncd_lag: float | None
    """The lag syncd reports itself in ``/status`` (age of the oldest change not applied)."""


async def sample(conn: asyncpg.Connection, setup: campaign.Setup, daemon: campaign.Daemon,
                 t: float, chroma: Chroma | None = None) -> Sample:
    proc = psutil.Process(daemon.pid)
    fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
    conns = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                                "AND pid <> pg_backend_pid()", setup.database)
    changelog = campaign.sqlite_value(setup.sqlite, "SELECT count(*) FROM _syncd_changelog")
    cp = await campaign.stored_position(conn)
    kept = campaign.sqlite_value(setup.sqlite, "SELECT count(*) FROM _syncd_changelog "
                                 f"WHERE id <= {cp[0] if cp else 0}")
    metrics = await asyncio.to_thread(daemon.get, "/metrics")
    st = await asyncio.to_thread(daemon.status)
    queue = (0, 0)
    if chroma is not None:
        ccp = await chroma_app.chroma_position(conn, chroma.writer.collection_id)
        queue = await asyncio.to_thread(chroma.store.log_size, ccp[0] if ccp else None)
    return Sample(t, tree_rss(proc), fds, int(conns), int(changelog), int(kept),
                  wal_size(setup.sqlite),
                  str(st["phase"]) if st else "?", queue[0], queue[1],
                  metrics is not None and b"syncd_lag_seconds" in metrics,
                  st.get("lag_seconds") if st else None)


def wal_size(sqlite: Path) -> int:
    wal = Path(f"{sqlite}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def newest_event_age(conn: asyncpg.Connection) -> float | None:
    at = await conn.fetchval("SELECT at FROM events ORDER BY _syncd_rowid DESC LIMIT 1")
    return None if at is None else max(0.0, time.time() - float(at))


def windows(lags: list[tuple[float, float]], width: float) -> list[tuple[float, int, float, float]]:
    """(window start, samples, p50, p99) of the lag samples, per *width* seconds."""
    out: list[tuple[float, int, float, float]] = []
    if not lags:
        return out
    end = lags[-1][0]
    start = 0.0
    while start <= end:
        vals = [v for t, v in lags if start <= t < start + width]
        if vals:
            out.append((start, len(vals), percentile(vals, 50), percentile(vals, 99)))
        start += width
    return out


def bound_checks(samples: list[Sample], warm: float, rate: float,
                 chroma_rate: float | None = None) -> list[Check]:
    after = [s for s in samples if s.t >= warm] or samples[-1:]
    third = max(1, len(after) // 3)
    first = statistics.median(s.rss for s in after[:third])
    last = statistics.median(s.rss for s in after[-third:])
    allowed = max(16 * MIB, 0.10 * first)
    per_hour = slope([(s.t, s.rss) for s in after]) * 3600 / MIB
    fds = [s.fds for s in after]
    conns = [s.pg_connections for s in samples]
    log_bound = max(20_000, int(CHANGELOG_BOUND_SECONDS * rate))
    changelog = max(s.changelog for s in after)
    kept = max(s.kept for s in after)
    wal = max(s.wal for s in samples)
    failed = sum(not s.metrics_ok for s in samples)
    return [
        Check("daemon RSS flat after warm-up", last - first <= allowed,
              f"median {first / MIB:.1f} MiB (first third) -> {last / MIB:.1f} MiB (last third), "
              f"slope {per_hour:+.1f} MiB/h over {after[-1].t - after[0].t:.0f} s, "
              f"range {min(s.rss for s in after) / MIB:.1f}-{max(s.rss for s in after) / MIB:.1f}"
              f" MiB; bound +{allowed / MIB:.0f} MiB"),
        Check("open file descriptors bounded", max(fds) - min(fds) <= FD_SPREAD,
              f"{min(fds)}-{max(fds)} after warm-up; bound spread {FD_SPREAD}"),
        Check("PostgreSQL connections bounded", max(conns) <= PG_CONNECTIONS_MAX
              and conns[-1] <= conns[0] + 2,
              f"{min(conns)}-{max(conns)} (first {conns[0]}, last {conns[-1]}); "
              f"bound {PG_CONNECTIONS_MAX}"),
        Check("_syncd_changelog bounded by pruning", changelog <= log_bound,
              f"max {changelog} rows after warm-up, last {samples[-1].changelog}; "
              f"bound {log_bound}"),
        Check("applied changes pruned", kept <= log_bound,
              f"max {kept} applied rows still in the changelog after warm-up, last "
              f"{samples[-1].kept}; bound {log_bound}"),
        Check("SQLite WAL bounded", wal <= WAL_BOUND,
              f"max {wal / MIB:.1f} MiB, last {samples[-1].wal / MIB:.1f} MiB; "
              f"bound {WAL_BOUND / MIB:.0f} MiB"),
        Check("/metrics and /status answered", failed == 0, f"{failed} of {len(samples)} failed"),
    ] + ([] if chroma_rate is None else chroma_bounds(samples, after, chroma_rate))


def chroma_bounds(samples: list[Sample], after: list[Sample], rate: float) -> list[Check]:
    """Chroma's log is bounded by syncd's pruning like the changelog (Chroma's own purge is
    off while syncd runs; syncd prunes at its checkpoint and below the index's saved position,
    which moves every 1,000 records)."""
    bound = max(20_000, int(CHANGELOG_BOUND_SECONDS * rate))
    queue = max(s.chroma_queue for s in after)
    kept = max(s.chroma_kept for s in after)
    return [
        Check("Chroma embeddings_queue bounded by pruning", queue <= bound,
              f"max {queue} rows after warm-up, last {samples[-1].chroma_queue}; bound {bound}"),
        Check("applied Chroma log rows pruned", kept <= bound,
              f"max {kept} applied rows still in the log after warm-up, last "
              f"{samples[-1].chroma_kept}; bound {bound}"),
    ]


async def soak(args: argparse.Namespace) -> int:
    work: Path = args.work
    server = campaign.Postgres(work / "pg")
    ledger = CpuLedger(server.data_dir / "postmaster.pid")
    chroma: Chroma | None = None
    try:
        if args.chroma_share > 0:
            chroma = Chroma.start(work / "chroma", args.seed + 2, args.rate * args.chroma_share,
                                  populate=args.scale, space=args.space,
                                  lifecycle=args.chroma_lifecycle)
        setup = campaign.prepare(server.server, work / "run", database="soak", seed=args.seed,
                                 scale=args.scale,
                                 chroma=(chroma.store.url, chroma.store.path) if chroma else None)
        init = campaign.run_cli(setup, "init")
        if init.returncode != 0:
            print(f"FAIL  syncd init: exit {init.returncode}: {init.stderr.strip()[-300:]}")
            return 1
        if chroma:
            chroma.after_init()
        conn = await asyncpg.connect(setup.dsn)
        daemon = campaign.Daemon(setup)
        also = (chroma_app.caught_up(conn, chroma.store, chroma.writer.collection_ids)
                if chroma else None)
        try:
            ledger.mark("snapshot")
            await campaign.wait_caught_up(conn, setup, daemon, also=also)
            await conn.execute(campaign.AUDIT)  # no write yet: all that follows is streamed
            ledger.mark("soak")
            checks, samples, lags = await drive(conn, setup, daemon, args, chroma)
            ledger.mark("end")
            code = await daemon_exit(daemon)
            checks.append(Check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}"))
        finally:
            if chroma:
                chroma.writer.halt()
            if daemon.alive:
                daemon.kill()
            await conn.close()
    finally:
        if chroma:
            chroma.store.stop()
        server.stop()
    print_figures(samples, lags, args, ledger)
    print(f"work dir: {work}")
    return campaign.report(checks)


async def daemon_exit(daemon: campaign.Daemon) -> int:
    return await asyncio.to_thread(daemon.terminate)


class Pauses:
    """``--pause-every``: SIGSTOP the daemon for ``--pause-for`` seconds every so often while
    the app goes on writing, so that it resumes behind and reads full batches (backlog
    episodes on demand, to see whether memory steps up at each one or only at the first)."""

    def __init__(self, daemon: campaign.Daemon, every: float | None, length: float) -> None:
        self.daemon, self.every, self.length = daemon, every, length
        self.next = every or 0.0
        self.until: float | None = None
        self.count = 0

    @property
    def paused(self) -> bool:
        return self.until is not None

    def step(self, t: float) -> None:
        if self.until is not None and t >= self.until:
            self.end()
        elif self.every and self.until is None and t >= self.next:
            os.kill(self.daemon.pid, signal.SIGSTOP)
            self.until, self.next = t + self.length, self.next + self.every
            self.count += 1
            print(f"{t:6.0f}  daemon paused for {self.length:.0f} s (#{self.count})", flush=True)

    def end(self) -> None:
        if self.until is not None:
            os.kill(self.daemon.pid, signal.SIGCONT)
            self.until = None


async def drive(conn: asyncpg.Connection, setup: campaign.Setup, daemon: campaign.Daemon,
                args: argparse.Namespace, chroma: Chroma | None
                ) -> tuple[list[Check], list[Sample], list[tuple[float, float]]]:
    writer = campaign.PacedWriter(setup.sqlite, args.seed + 1, args.rate)
    if chroma:
        chroma.writer.start()
    print(HEADER, flush=True)
    started = time.monotonic()
    seconds = args.minutes * 60
    samples: list[Sample] = []
    lags: list[tuple[float, float]] = []
    next_scrape = 0.0
    pauses = Pauses(daemon, args.pause_every, args.pause_for)
    try:
        while (t := time.monotonic() - started) < seconds:
            if not daemon.alive:
                raise RuntimeError(f"syncd exited {daemon.proc.returncode}:\n{daemon.tail()}")
            pauses.step(t)
            if t >= next_scrape and not pauses.paused:
                samples.append(await sample(conn, setup, daemon, t, chroma))
                print(row(samples[-1]), flush=True)
                next_scrape += args.scrape
            age = await newest_event_age(conn)
            if age is not None:
                lags.append((t, age))
            await asyncio.sleep(1.0)
        samples.append(await sample(conn, setup, daemon, time.monotonic() - started, chroma))
    finally:
        pauses.end()
        tally = writer.stop()
        record = await asyncio.to_thread(chroma.writer.stop) if chroma else None
    elapsed = time.monotonic() - started
    top = campaign.sqlite_value(setup.sqlite, "SELECT coalesce(max(id), 0) FROM _syncd_changelog")
    await campaign.wait_caught_up(conn, setup, daemon, also=chroma_app.caught_up(
        conn, chroma.store, chroma.writer.collection_ids) if chroma else None)
    warm = min(args.warmup, seconds / 3)
    checks = [Check("offered load (information)", True,
                    f"{tally.transactions} transactions, {top} captured changes in {elapsed:.0f} s "
                    f"= {top / elapsed:.0f} changes/s (target {args.rate:.0f})")]
    checks += bound_checks(samples, warm, args.rate, chroma.rate if chroma else None)
    if record is not None:
        checks += await chroma_app.chroma_checks(conn, record)
    checks += await campaign.final_checks(conn, setup, tally, (0, 0))
    return checks, samples, lags


HEADER = ("   t s  phase       RSS MiB  fds  pg conns  changelog  (applied)  WAL MiB"
          "  chroma log  (applied)  metrics  syncd lag s")


def row(s: Sample) -> str:
    return (f"{s.t:6.0f}  {s.phase:<10} {s.rss / MIB:8.1f} {s.fds:4d} {s.pg_connections:9d} "
            f"{s.changelog:10d} {s.kept:10d} {s.wal / MIB:8.1f} {s.chroma_queue:11d} {s.chroma_kept:10d}"
            f"  {'ok' if s.metrics_ok else 'FAILED':<7}  "
            f"{'-' if s.syncd_lag is None else f'{s.syncd_lag:.2f}'}")


def print_figures(samples: list[Sample], lags: list[tuple[float, float]],
                  args: argparse.Namespace, ledger: CpuLedger) -> None:
    width = args.window or max(15.0, args.minutes * 60 / 6)
    print(f"lag (now - newest event stamp in PostgreSQL, 1 s samples) per {width:.0f} s window:")
    for start, n, p50, p99 in windows(lags, width):
        print(f"  {start:6.0f} s  n={n:4d}  p50 {p50 * 1000:7.0f} ms  p99 {p99 * 1000:7.0f} ms")
    for phase in ledger.report():
        print(f"cpu {phase['phase']}: wall {phase['wall_seconds']} s, campaign "
              f"{phase['bench_cpu_seconds']} s, other load {phase['foreign_cpu_seconds']} s "
              f"({float(phase['foreign_share']) * 100:.0f} % of the machine)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=500.0, help="row changes per second")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--scale", type=int, default=200, help="initial rows (x2..x5 per table)")
    ap.add_argument("--space", choices=("l2", "cosine", "ip"), default="l2",
                    help="the collections' distance")
    ap.add_argument("--chroma-lifecycle", type=float, default=0.0, metavar="SHARE",
                    help="share of the app's Chroma steps that create, write to, rename or delete "
                         "side collections (0: none)")
    ap.add_argument("--chroma-share", type=float, default=0.1,
                    help="Chroma writes per second as a share of --rate (0: no Chroma)")
    ap.add_argument("--scrape", type=float, default=15.0, help="seconds between scrapes")
    ap.add_argument("--window", type=float, default=None, help="lag window in seconds")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds not judged for RSS")
    ap.add_argument("--nofile", type=int, default=None, metavar="N",
                    help="start every daemon with ulimit -n N (e.g. 64)")
    ap.add_argument("--memory-dir", type=Path, default=None, metavar="DIR",
                    help="run the daemon under bench/tracemem.py: memory samples in DIR")
    ap.add_argument("--tracemalloc-frames", type=int, default=0, metavar="N",
                    help="with --memory-dir: trace allocations N frames deep, snapshots in DIR")
    ap.add_argument("--pause-every", type=float, default=None, metavar="S",
                    help="SIGSTOP the daemon every S seconds (backlog episodes; not scraped then)")
    ap.add_argument("--pause-for", type=float, default=30.0, metavar="S",
                    help="with --pause-every: seconds each pause lasts")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    campaign.Daemon.nofile = args.nofile
    campaign.Daemon.memory_dir = args.memory_dir
    campaign.Daemon.tracemalloc_frames = args.tracemalloc_frames
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="syncd-soak-"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes} min at {args.rate:.0f} changes/s, seed {args.seed}, "
          f"ulimit -n {args.nofile or 'inherited'}", flush=True)
    try:
        return asyncio.run(soak(args))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"FAIL  soak aborted: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
