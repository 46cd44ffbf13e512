"""Snapshot time side by side: this tree's syncd against another build's, alternating.

    python -m bench.snapshot_ab --trials 3 --against /path/to/old/syncd

Each trial: a fresh copy of the generated app database (200,000 users + 500,000 documents by
default, ``gen_app_db``), an empty target database, ``init``, then a timed
``run --until-caught-up`` (process start to exit: copy, catch-up, index build) and the
per-table copy times from syncd's own log; then ``syncd verify`` (must exit 0). The builds
alternate (the order flips every trial); the load average is recorded before each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import gen_app_db, pg, syncd_run
from bench.procs import run_measured, warm_file

OUT = Path(__file__).resolve().parent / "out" / "snapshot_ab"


def table_seconds(log: Path) -> dict[str, float]:
    """Seconds from one table's first chunk to its "table copied" line, per table (structlog
    timestamps in syncd's log)."""
    out: dict[str, float] = {}
    last = None
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"(\d{4}-\d\d-\d\dT[\d:.]+)", line)
        if not m:
            continue
        ts = datetime.fromisoformat(m.group(1))
        if "snapshot start" in line or "snapshot resume" in line:
            last = ts
        t = re.search(r"table[=\"':\s]+([A-Za-z_]+)", line)
        if "table copied" in line and t and last is not None:
            out[t.group(1)] = round((ts - last).total_seconds(), 2)
            last = ts
    return out


def trial(server: pg.Server, source: Path, syncd: Path) -> dict[str, Any]:
    setup = syncd_run.prepare(server, source, OUT / "work", "snapshot_ab")
    setup = dataclasses.replace(setup, syncd=syncd)
    run_measured(setup.argv("init"), setup.work / "init.log", timeout=300).check()
    warm_file(setup.sqlite)
    pg.checkpoint(server)
    load = os.getloadavg()
    run = run_measured(setup.argv("--log-level", "info", "run", "--until-caught-up"),
                       setup.work / "snapshot.log", timeout=1800).check()
    verify = run_measured(setup.argv("verify"), setup.work / "verify.log", timeout=900)
    return {"seconds": round(run.seconds, 2), "tables": table_seconds(setup.work / "snapshot.log"),
            "peak_rss_mb": round(run.peak_rss / 2**20), "load_before": [round(x, 2) for x in load],
            "verified": verify.returncode == 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--against", type=Path, required=True, help="the other build's syncd executable")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    source = gen_app_db.cached(OUT, args.users, args.documents)
    server = pg.start(OUT / "pgdata")
    builds = {"this tree": syncd_run.SYNCD, "other": args.against}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for i in range(args.trials):
        order = list(builds) if i % 2 == 0 else list(reversed(builds))
        for name in order:
            r = trial(server, source, builds[name])
            print(json.dumps({"trial": i + 1, "build": name, **r}), flush=True)
            results[name].append(r)
    for name, runs in results.items():
        secs = [r["seconds"] for r in runs]
        print(f"{name}: median {statistics.median(secs):.2f} s ({min(secs):.2f}–{max(secs):.2f}) over "
              f"{len(secs)} trials; all verified: {all(r['verified'] for r in runs)}")
    pairs = zip(results["this tree"], results["other"], strict=True)
    ratios = [a["seconds"] / b["seconds"] for a, b in pairs]
    print(f"this tree / other (time): median {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}–{max(ratios):.2f}); load now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
