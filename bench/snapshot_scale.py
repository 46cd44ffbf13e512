"""Snapshot scaling: does syncd's snapshot time grow in proportion to the database, with its
memory flat? The issue's goal: a 5 GB database, time ∝ size (± 10 %), RSS flat.

    python -m bench.snapshot_scale [--scales 1 3 6.5] [--rounds 2] [--no-verify]

Scale 1 is the run_all database (200,000 users + 500,000 documents, ~765 MB); scale *f* has
*f* times the rows of each table (6.5: ~5 GB). Each run: a fresh copy of the database and an
empty target database, ``init``, then ``run --until-caught-up`` timed from process start to
exit (copy, catch-up, keys, indexes and foreign key), peak RSS of syncd's process tree, then
``syncd verify`` (exit 0 required). The scales run in ascending order in odd rounds and
descending in even ones, so a drift of the machine's speed does not favour one size. Reported:
seconds per GB and per million rows, each against scale 1's in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import gen_app_db, pg, syncd_run
from bench.procs import run_measured

OUT = Path(__file__).resolve().parent / "out" / "scale"
BASE_USERS, BASE_DOCUMENTS = 200_000, 500_000


def _copy_seconds(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "snapshot done":
            return float(event["seconds"])
    return None


def one(server: pg.Server, scale: float, verify: bool) -> dict[str, Any]:
    users, documents = int(BASE_USERS * scale), int(BASE_DOCUMENTS * scale)
    source = gen_app_db.cached(OUT, users, documents)
    load = os.getloadavg()[0]
    setup, result = syncd_run.snapshot(server, source, OUT / "work", "scale", time_limit=7200)
    rows = users + documents
    size = source.stat().st_size
    out: dict[str, Any] = {
        "scale": scale, "rows": rows, "bytes": size, "seconds": result["seconds"],
        "copy_seconds": _copy_seconds(setup.work / "snapshot.log"), "peak_rss": result["peak_rss"],
        "complete": result["complete"], "load_before": load,
        "s_per_gb": result["seconds"] / (size / 1e9), "s_per_mrows": result["seconds"] / (rows / 1e6),
    }
    if verify:
        started = time.perf_counter()
        run = run_measured(setup.argv("verify"), setup.work / "verify.log", timeout=7200)
        out["verify_exit"] = run.returncode
        out["verify_seconds"] = time.perf_counter() - started
    pg.drop_database(server, "scale")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 6.5])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args(argv)
    if 1.0 not in args.scales:
        ap.error("--scales must include 1 (the reference size)")
    server = pg.start(OUT / "pgdata")
    results: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = sorted(args.scales, reverse=bool(r % 2))
        for scale in order:
            res = {"round": r + 1, **one(server, scale, not args.no_verify)}
            results.append(res)
            print(json.dumps(res), flush=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'scale':>6} {'GB':>6} {'rows':>10} {'seconds':>17} {'s/GB':>15} {'vs scale 1':>11} "
          f"{'peak RSS MB':>12}")
    for scale in sorted(args.scales):
        runs = [x for x in results if x["scale"] == scale]
        ratios = []
        for x in runs:
            base = next(b for b in results if b["scale"] == 1.0 and b["round"] == x["round"])
            ratios.append(x["s_per_gb"] / base["s_per_gb"])
        secs = [x["seconds"] for x in runs]
        per = [x["s_per_gb"] for x in runs]
        rss = [x["peak_rss"] / 1e6 for x in runs]
        print(f"{scale:>6} {runs[0]['bytes'] / 1e9:>6.2f} {runs[0]['rows']:>10,} "
              f"{min(secs):>8.1f}–{max(secs):<8.1f} {min(per):>7.2f}–{max(per):<7.2f} "
              f"{statistics.median(ratios):>5.2f} ({min(ratios):.2f}–{max(ratios):.2f}) "
              f"{min(rss):>5.0f}–{max(rss):<5.0f}")
    ok = all(x["complete"] and x.get("verify_exit", 0) == 0 for x in results)
    print("all complete and verified:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
