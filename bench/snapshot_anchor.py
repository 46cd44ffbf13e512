"""syncd's snapshot against what a user would pick instead, in one run, alternating: the DuckDB
route (:mod:`bench.duckdb_route`) and the binary ``COPY FROM file`` ceiling
(:mod:`bench.copy_ceiling`), each with the same keys, indexes and foreign key.

    python -m bench.snapshot_anchor [--rounds 3] [--users 200000 --documents 500000]

Each round runs the three in a rotated order, each into a fresh empty database after a
checkpoint: syncd ``init`` + ``run --until-caught-up`` timed from process start to exit (then
``syncd verify``, exit 0 required), DuckDB timed from process start to exit, the ceiling by
its own timer (no process start: it is the floor). Reported per round: the times, the load
average before each, syncd / DuckDB and syncd / ceiling; then the medians and spreads. Needs
the ``bench`` extra for DuckDB (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import copy_ceiling, duckdb_route, gen_app_db, pg, syncd_run
from bench.procs import run_measured

OUT = Path(__file__).resolve().parent / "out" / "snapshot_anchor"


def run_syncd(server: pg.Server, source: Path) -> dict[str, Any]:
    setup, result = syncd_run.snapshot(server, source, OUT / "syncd", "anchor_syncd")
    verify = run_measured(setup.argv("verify"), setup.work / "verify.log", timeout=1800)
    pg.drop_database(server, "anchor_syncd")
    return {"seconds": result["seconds"], "peak_rss": result["peak_rss"],
            "complete": result["complete"], "verified": verify.returncode == 0}


def run_ceiling(server: pg.Server, files: Path) -> dict[str, Any]:
    result = copy_ceiling.ceiling(server, files, "anchor_ceiling")
    return {"seconds": result["total_seconds"], "copy_seconds": result["copy_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    args = ap.parse_args(argv)
    if not duckdb_route.available():
        ap.error("duckdb is not installed: pip install -e '.[bench]'")
    OUT.mkdir(parents=True, exist_ok=True)
    source = gen_app_db.cached(OUT, args.users, args.documents)
    server = pg.start(OUT / "pgdata")
    plain = copy_ceiling.prepare(server, source, OUT / "copyfiles")
    print(json.dumps({"plain_loop_seconds": plain["plain_loop"]["total_seconds"]}), flush=True)
    contenders = {
        "syncd": lambda: run_syncd(server, source),
        "duckdb": lambda: duckdb_route.run(server, source, "anchor_duckdb", OUT / "duckdb.log"),
        "ceiling": lambda: run_ceiling(server, OUT / "copyfiles"),
    }
    names = list(contenders)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = names[r % 3:] + names[:r % 3]
        row: dict[str, Any] = {"round": r + 1, "order": order}
        for name in order:
            load = os.getloadavg()[0]
            row[name] = {**contenders[name](), "load_before": round(load, 2)}
        row["syncd/duckdb"] = row["syncd"]["seconds"] / row["duckdb"]["seconds"]
        row["syncd/ceiling"] = row["syncd"]["seconds"] / row["ceiling"]["seconds"]
        row["duckdb/ceiling"] = row["duckdb"]["seconds"] / row["ceiling"]["seconds"]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    (OUT / "results.json").write_text(json.dumps({"plain_loop": plain, "rounds": rounds}, indent=2,
                                                 default=str))
    for name in names:
        secs = [x[name]["seconds"] for x in rounds]
        print(f"{name:8s} median {statistics.median(secs):6.2f} s ({min(secs):.2f}–{max(secs):.2f})")
    for ratio in ("syncd/duckdb", "syncd/ceiling", "duckdb/ceiling"):
        vals = [x[ratio] for x in rounds]
        print(f"{ratio:15s} median {statistics.median(vals):.2f}x ({min(vals):.2f}–{max(vals):.2f})")
    rss = [x["syncd"]["peak_rss"] / 2**20 for x in rounds]
    ok = all(x["syncd"]["complete"] and x["syncd"]["verified"] for x in rounds)
    print(f"syncd peak RSS {min(rss):.0f}–{max(rss):.0f} MB; every syncd copy complete and verified: {ok}")
    print(f"DuckDB's types: {json.dumps(rounds[0]['duckdb']['types'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
