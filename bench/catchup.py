"""Backlog catch-up alone: how fast ``run --until-caught-up`` applies a backlog of mixed
changes (the run_all writer: inserts, updates and deletes over two tables, 100 per commit)
with no writer competing, on a small database so that a trial takes seconds.

    python -m bench.catchup [--trials 3] [--seconds 10] [--profile FILE]
                            [--against SYNCD | --against-tree DIR]

Each trial: fresh copy of the database, ``init``, snapshot, the writer flat out for
``--seconds`` with syncd stopped, then a timed ``run --until-caught-up``; the target is
checked against the source (row counts and a content digest per table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import gen_app_db, pg, stream_lag, syncd_run
from bench.procs import run_measured

OUT = Path(__file__).resolve().parent / "out" / "catchup"


def trial(server: pg.Server, source: Path, seconds: float, profile: Path | None, seed: int,
          syncd: Path, batch_size: int | None = None) -> dict[str, Any]:
    setup = syncd_run.prepare(server, source, OUT / "work", "catchup")
    setup = dataclasses.replace(setup, syncd=syncd)
    run_measured(setup.argv("init"), setup.work / "init.log", timeout=300).check()
    run_measured(setup.argv("run", "--until-caught-up"), setup.work / "snapshot.log", timeout=600).check()
    writer = asyncio.run(stream_lag.writer_capacity(setup.sqlite, seconds, seed=seed))
    load = os.getloadavg()[0]
    argv = setup.argv("run", "--until-caught-up")
    if profile is not None:
        argv = ([sys.executable, "/tmp/timed_syncd.py", *argv[1:]] if str(profile) == "timed" else
                [sys.executable, "-m", "cProfile", "-o", str(profile), argv[0], *argv[1:]])
    if batch_size:
        setup.config.write_text(setup.config.read_text() + f"\n[stream]\nbatch_size = {batch_size}\n")
    run = run_measured(argv, setup.work / "catch-up.log", timeout=900).check()
    stream_seconds = _stream_seconds(setup.work / "catch-up.log")
    verify = run_measured(setup.argv("verify"), setup.work / "verify.log", timeout=600)
    same = verify.returncode == 0
    return {"changes": writer["changes"], "seconds": run.seconds, "rate": writer["changes"] / run.seconds,
            "stream_seconds": stream_seconds, "stream_rate": writer["changes"] / stream_seconds,
            "cpu_us_per_change": run.cpu_seconds / writer["changes"] * 1e6,
            "peak_rss": run.peak_rss, "load_before": load, "converged": same}


def _stream_seconds(log: Path) -> float:
    """From the stream's ``catch-up`` phase to its ``caught up`` line: the catch-up without
    process start, connecting and the ownership claim."""
    stamps: dict[str, datetime.datetime] = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            key = ("start" if event.get("phase") == "catch-up"
                   else "end" if event.get("event") == "caught up" else None)
            if key and key not in stamps:
                stamps[key] = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return (stamps["end"] - stamps["start"]).total_seconds()


def tree_launcher(tree: Path) -> Path:
    """A syncd command that imports syncd from *tree* (a checkout of another commit). Not
    ``PYTHONPATH=tree python -m syncd.cli``: run from this repository, ``-m`` puts the current
    directory first on the import path, and that is this tree's syncd."""
    launcher = OUT / "against-tree-syncd"
    code = (f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); from syncd.cli import main; "
            "sys.argv[0] = 'syncd'; sys.exit(main())")
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"{code}\" \"$@\"\n")
    launcher.chmod(0o755)
    return launcher


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--documents", type=int, default=20_000)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--batch-size", type=int, help="[stream] batch_size (default: syncd's)")
    ap.add_argument("--against", type=Path,
                    help="another build's syncd: trials alternate between it and this tree's")
    ap.add_argument("--against-tree", type=Path,
                    help="a checkout of another commit (git worktree add): its syncd, as --against")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.against_tree:
        args.against = tree_launcher(args.against_tree)
    source = gen_app_db.cached(OUT, args.users, args.documents)
    server = pg.start(OUT / "pgdata")
    builds = {"this tree": syncd_run.SYNCD}
    if args.against:
        builds["other"] = args.against
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for i in range(args.trials):
        order = list(builds.items())
        for name, syncd in order if i % 2 == 0 else order[::-1]:  # alternating, the same backlog (seed)
            r = trial(server, source, args.seconds, args.profile, 1000 + i, syncd, args.batch_size)
            print(json.dumps({"build": name, **r}), flush=True)
            results[name].append(r)
    for name, runs in results.items():
        rates = [r["rate"] for r in runs]
        inner = [r["stream_rate"] for r in runs]
        cpu = [r["cpu_us_per_change"] for r in runs]
        print(f"{name}: catch-up median {statistics.median(rates):,.0f} changes/s "
              f"({min(rates):,.0f}–{max(rates):,.0f}) over {len(rates)} trials, the stream alone "
              f"{statistics.median(inner):,.0f}/s ({min(inner):,.0f}–{max(inner):,.0f}); "
              f"syncd's CPU per change {statistics.median(cpu):.1f} µs ({min(cpu):.1f}–{max(cpu):.1f}); "
              f"all converged: {all(r['converged'] for r in runs)}")
    if args.against:
        for key in ("rate", "stream_rate"):
            ratios = [a[key] / b[key] for a, b in zip(results["this tree"], results["other"], strict=True)]
            print(f"this tree / other, {key}: {statistics.median(ratios):.2f}x "
                  f"({min(ratios):.2f}–{max(ratios):.2f})")
        print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
