"""The app's writes beside a running syncd: how fast it commits, and the lag at fixed rates.

Per round: the run_all writer (``bench.stream_lag.Writer``, 100 changes per transaction) flat
out for ``--seconds`` with syncd stopped; then, for each build in turn (the order alternates
between rounds), ``syncd run`` in the background, the same writer flat out, then the lag at
1,000 and 5,000 changes/s (``bench.stream_lag.run_step``). For each writer run: its rate, its
time per change spent in ``COMMIT``, its CPU per change, and the largest size the WAL file
reached (sampled every 20 transactions).

    python -m bench.writer_beside --rounds 4 --against-tree /tmp/tree
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import gen_app_db, pg, stream_lag, syncd_run
from bench.catchup import tree_launcher
from bench.procs import run_measured
from bench.syncd_run import TICKS

OUT = Path(__file__).resolve().parent / "out" / "writer_beside"
PER_COMMIT = 100
LAG_RATES = (1000.0, 5000.0)
LAG_SECONDS = 15.0


def write_flat_out(db: Path, seconds: float, seed: int) -> dict[str, float]:
    """The writer alone in this process, as fast as it goes."""
    writer = stream_lag.Writer(db, seed)
    conn, wal = writer.conn, Path(f"{db}-wal")
    committing = 0.0
    changes = wal_max = 0
    cpu = time.process_time()
    started = time.monotonic()
    while time.monotonic() < started + seconds:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(PER_COMMIT - 1):
            writer.change()
        conn.execute(f"INSERT INTO {TICKS} (t) VALUES (?)", (time.time(),))
        before = time.monotonic()
        conn.execute("COMMIT")
        committing += time.monotonic() - before
        changes += PER_COMMIT
        if changes % (20 * PER_COMMIT) == 0 and wal.exists():
            wal_max = max(wal_max, wal.stat().st_size)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    conn.close()
    return {"rate": changes / elapsed, "commit_us": committing / changes * 1e6,
            "cpu_us": cpu / changes * 1e6, "wal_max_mb": wal_max / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--documents", type=int, default=150_000)
    ap.add_argument("--against-tree", type=Path,
                    help="a checkout of another commit (git worktree add): its syncd beside this tree's")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    server = pg.start(OUT / "pgdata")
    setup = syncd_run.prepare(server, gen_app_db.cached(OUT, args.users, args.documents),
                              OUT / "work", "beside")
    run_measured(setup.argv("init"), setup.work / "init.log", timeout=300).check()
    run_measured(setup.argv("run", "--until-caught-up"), setup.work / "snapshot.log", timeout=900).check()
    builds = {"this tree": setup}
    if args.against_tree:
        builds["other"] = dataclasses.replace(setup, syncd=tree_launcher(args.against_tree))
    dsn = server.dsn("beside")
    results: dict[str, list[dict[str, Any]]] = {"alone": [], **{name: [] for name in builds}}
    seed = 7000
    for i in range(args.rounds):
        seed += 100
        alone = write_flat_out(setup.sqlite, args.seconds, seed)
        results["alone"].append(alone)
        print(f"alone      {alone['rate']:7.0f}/s  commit {alone['commit_us']:4.0f} µs  cpu "
              f"{alone['cpu_us']:4.0f} µs  WAL ≤ {alone['wal_max_mb']:5.1f} MB  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        order = list(builds.items())
        for name, build in order if i % 2 == 0 else order[::-1]:
            with (build.work / f"run-{i}-{name.replace(' ', '-')}.log").open("w") as log:
                proc = subprocess.Popen(build.argv("run"), stdout=log, stderr=subprocess.STDOUT)
            try:
                asyncio.run(stream_lag.wait_visible(setup.sqlite, dsn))
                time.sleep(1.0)
                seed += 1
                r: dict[str, Any] = write_flat_out(setup.sqlite, args.seconds, seed)
                time.sleep(2.0)  # syncd catches up
                for rate in LAG_RATES:
                    seed += 1
                    step = asyncio.run(stream_lag.run_step(setup.sqlite, dsn, rate, LAG_SECONDS, seed=seed))
                    r[f"p50_{rate:.0f}"] = step["lag_p50"] * 1e3
                    r[f"p99_{rate:.0f}"] = step["lag_p99"] * 1e3
                    r[f"bounded_{rate:.0f}"] = step["bounded"]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            results[name].append(r)
            lags = "  ".join(
                f"{rate:.0f}/s p50 {r[f'p50_{rate:.0f}']:5.1f} p99 {r[f'p99_{rate:.0f}']:5.1f} ms"
                f"{'' if r[f'bounded_{rate:.0f}'] else ' UNBOUNDED'}" for rate in LAG_RATES)
            print(f"{name:10s} {r['rate']:7.0f}/s  commit {r['commit_us']:4.0f} µs  "
                  f"cpu {r['cpu_us']:4.0f} µs  WAL ≤ {r['wal_max_mb']:5.1f} MB  {lags}  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name, runs in results.items():
        line = f"{name}: writer {statistics.median(r['rate'] for r in runs):,.0f}/s"
        if name != "alone":
            share = [r["rate"] / a["rate"] for r, a in zip(runs, results["alone"], strict=True)]
            line += (f" = {statistics.median(share):.0%} of alone ({min(share):.0%}–{max(share):.0%})"
                     + "".join(f"; {k} {statistics.median(r[k] for r in runs):.1f} ms"
                               for k in ("p50_1000", "p99_1000", "p50_5000", "p99_5000")))
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
