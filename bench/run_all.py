"""SQLite → PostgreSQL benchmark, everything in one run.

    .venv/bin/python -m bench.run_all            # 200k users + 500k documents, ~10 minutes

1. generate the app database (full size, and a quarter-size one for the RSS comparison);
2. the plain sqlite3 + asyncpg loop, then the binary ``COPY FROM file`` ceiling (3 runs), and
   the DuckDB route as many times when the ``bench`` extra is installed (``bench.duckdb_route``);
3. pgloader, default and with the same target types;
4. syncd: ``init`` + ``run --until-caught-up`` at both sizes (time, peak RSS);
5. syncd ``run`` streaming: lag at 1,000 changes/s, then higher rates until lag grows.

Results go to ``bench/out/results.json`` (and a timestamped copy); the markdown report is
printed at the end (``python -m bench.report bench/out/results.json`` prints it again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import copy_ceiling, duckdb_route, gen_app_db, pg, pgloader_run, report, stream_lag, syncd_run
from bench.noise import CpuLedger, wait_quiet

OUT = Path(__file__).resolve().parent / "out"
PG_SETTINGS = ("shared_buffers", "max_wal_size", "wal_level", "synchronous_commit", "fsync",
               "checkpoint_timeout", "maintenance_work_mem", "work_mem")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


LEDGER = CpuLedger()


def phase(name: str) -> None:
    """Start a phase: log it and mark the CPU ledger."""
    log(name)
    LEDGER.mark(name)


def machine(server: pg.Server) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
    pgl = pgloader_run.installed()
    pgl_version = (subprocess.run([pgl, "--version"], capture_output=True, text=True)
                   .stdout.splitlines()[0] if pgl else None)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "pgloader": pgl_version,
        "postgres": pg.settings(server, PG_SETTINGS),
    }


def generate(path: Path, users: int, documents: int, reuse: bool) -> dict[str, Any]:
    manifest = path.with_suffix(".json")
    want = {"users": users, "documents": documents}
    if reuse and path.exists() and manifest.exists():
        info: dict[str, Any] = json.loads(manifest.read_text())
        if {k: info.get(k) for k in want} == want:
            log(f"reusing {path}")
            return info
    log(f"generating {path}: {users} users, {documents} documents")
    info = {**want, **gen_app_db.generate(path, users, documents), "path": str(path)}
    manifest.write_text(json.dumps(info))
    return info


def syncd_version() -> dict[str, Any]:
    """The syncd commit measured, and whether its working tree had local changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=OUT.parent.parent).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "syncd"))}


def syncd_probe(server: pg.Server, out: Path) -> str | None:
    """None if syncd can snapshot a tiny database, else why not."""
    if not syncd_run.available():
        return f"{syncd_run.SYNCD} does not exist (pip install -e . not done yet)"
    tiny = out / "tiny.sqlite"
    gen_app_db.generate(tiny, 200, 500)
    try:
        _, result = syncd_run.snapshot(server, tiny, out / "syncd-probe", "bench_syncd_probe",
                                       time_limit=120)
    except Exception as exc:
        return f"syncd failed on a 700-row database: {exc}"
    finally:
        pg.drop_database(server, "bench_syncd_probe")
    if not result["complete"]:
        return f"syncd's snapshot of a 700-row database is incomplete: {result['rows']}"
    return None


async def streaming(server: pg.Server, setup: syncd_run.Setup, args: argparse.Namespace,
                    ) -> dict[str, Any]:
    """``syncd run`` in the background while the writer sweeps the change rate."""
    with syncd_run.Daemon(setup) as daemon:
        try:
            async with asyncio.timeout(300):
                ready = await stream_lag.wait_visible(setup.sqlite, setup.dsn)
        except TimeoutError:
            return {"error": "syncd run: a change was not visible after 300 s"}
        log(f"syncd run is streaming (first change visible after {ready:.2f} s)")
        sweep = await stream_lag.sweep(
            setup.sqlite, setup.dsn, headline_rate=args.rate,
            headline_seconds=args.headline_seconds, step_seconds=args.step_seconds,
            steps=tuple(args.steps),
            on_step=lambda rate: phase(f"syncd streaming at {rate:,.0f} changes/s"))
        alive = daemon.alive()
        status = health_status(setup.health)
    source = syncd_run.source_counts(setup.sqlite)
    target = pg.describe(server, setup.database, tuple(source))["rows"]
    return {
        "startup_to_first_visible_seconds": ready,
        **sweep,
        "daemon_alive_after_sweep": alive,
        "status_after_sweep": status,
        "source_rows_after": source,
        "target_rows_after": target,
        "converged": source == target,
        "daemon": daemon.summary(),
    }


def backlog(server: pg.Server, setup: syncd_run.Setup, seconds: float) -> dict[str, Any]:
    """With syncd stopped, the writer alone runs flat out (its capacity); then a timed
    ``run --until-caught-up`` drains that backlog: syncd's apply rate with no writer
    competing for the CPU."""
    phase("backlog: writer alone, syncd stopped")
    writer = asyncio.run(stream_lag.writer_capacity(setup.sqlite, seconds))
    phase("backlog: syncd run --until-caught-up")
    drained = syncd_run.catch_up(setup)
    source = syncd_run.source_counts(setup.sqlite)
    target = pg.describe(server, setup.database, tuple(source))["rows"]
    return {
        "writer_capacity": writer["achieved_rate"],
        "changes": writer["changes"],
        "catch_up_seconds": drained["seconds"],
        "catch_up_rate": writer["changes"] / drained["seconds"],
        "peak_rss": drained["peak_rss"],
        "converged": source == target,
    }


def health_status(listen: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://{listen}/status", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    full = out / "app.sqlite"
    quarter = out / "app-quarter.sqlite"
    results["databases"] = {
        "full": generate(full, args.users, args.documents, args.reuse_db),
        "quarter": generate(quarter, args.users // 4, args.documents // 4, args.reuse_db),
    }
    log("starting the embedded PostgreSQL server")
    server = pg.start(out / "pgdata")
    LEDGER.postmaster_pid_file = out / "pgdata" / "postmaster.pid"
    results["machine"] = machine(server)

    phase("plain loop (sqlite3 + asyncpg copy_records_to_table) and binary COPY files")
    results["plain_loop"] = copy_ceiling.prepare(server, full, out / "copyfiles")
    runs = []
    for i in range(args.ceiling_runs):
        phase(f"COPY FROM file ceiling, run {i + 1}/{args.ceiling_runs}")
        runs.append(copy_ceiling.ceiling(server, out / "copyfiles"))
    results["ceiling"] = {
        "runs": runs,
        "copy_seconds": statistics.median(r["copy_seconds"] for r in runs),
        "total_seconds": statistics.median(r["total_seconds"] for r in runs),
    }
    if duckdb_route.available():
        copies = []
        for i in range(args.ceiling_runs):
            phase(f"DuckDB route, run {i + 1}/{args.ceiling_runs}")
            copies.append(duckdb_route.run(server, full, "bench_duckdb", out / "duckdb.log"))
        results["duckdb"] = {"runs": copies,
                             "seconds": statistics.median(c["seconds"] for c in copies),
                             "peak_rss": max(c["peak_rss"] for c in copies)}
    else:
        log("DuckDB route not measured: pip install -e '.[bench]'")

    if not args.skip_pgloader:
        for variant in ("default", "typed"):
            phase(f"pgloader ({variant})")
            try:
                results[f"pgloader_{variant}"] = pgloader_run.run(server, full, out,
                                                                  variant=variant)
            except RuntimeError as exc:
                results[f"pgloader_{variant}"] = {"error": str(exc)[-2000:]}

    if args.skip_syncd:
        problem: str | None = "skipped (--skip-syncd)"
    else:
        phase("syncd: check that it runs, on a 700-row database")
        problem = syncd_probe(server, out)
    if problem:
        log(f"syncd not measured: {problem}")
        results["syncd"] = {"error": problem}
        return results
    syncd: dict[str, Any] = {"version": syncd_version()}
    results["syncd"] = syncd
    try:
        phase("syncd snapshot, quarter-size database")
        _, syncd["snapshot_quarter"] = syncd_run.snapshot(
            server, quarter, out / "syncd-quarter", "bench_syncd_quarter")
        pg.drop_database(server, "bench_syncd_quarter")
        phase("syncd snapshot, full database")
        setup, syncd["snapshot_full"] = syncd_run.snapshot(server, full, out / "syncd-full",
                                                          "bench_syncd_full")
        if not args.skip_streaming:
            phase("syncd streaming: start-up")
            syncd["streaming"] = asyncio.run(streaming(server, setup, args))
            syncd["backlog"] = backlog(server, setup, args.backlog_seconds)
    except Exception as exc:
        log(f"syncd failed: {exc}")
        syncd["error"] = str(exc)[-3000:]
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reuse-db", action="store_true",
                    help="keep generated databases from an earlier run with the same counts")
    ap.add_argument("--ceiling-runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="headline change rate (/s)")
    ap.add_argument("--headline-seconds", type=float, default=30.0)
    ap.add_argument("--step-seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=float, nargs="*",
                    default=[2000.0, 5000.0, 10000.0, 20000.0, 40000.0])
    ap.add_argument("--backlog-seconds", type=float, default=10.0,
                    help="how long the writer builds a backlog with syncd stopped")
    ap.add_argument("--wait-quiet", type=float, default=300.0,
                    help="wait up to this long for a 10 s window with < 10%% CPU busy (0: no)")
    ap.add_argument("--skip-pgloader", action="store_true")
    ap.add_argument("--skip-syncd", action="store_true")
    ap.add_argument("--skip-streaming", action="store_true")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    quiet = None
    waited = time.perf_counter()
    if args.wait_quiet > 0:
        log(f"waiting up to {args.wait_quiet:.0f} s for the machine to be idle")
        quiet = wait_quiet(args.wait_quiet)
        log(f"machine busy {quiet:.0%} before starting")
    started = time.perf_counter()
    LEDGER.mark("generate databases")
    results = measure(args)
    results["busy_share_before_start"] = quiet
    results["waited_for_idle_seconds"] = started - waited
    LEDGER.mark("end")
    results["foreign_cpu"] = LEDGER.report()
    results["bench_seconds"] = time.perf_counter() - started
    text = json.dumps(results, indent=2, default=str)
    (args.out / "results.json").write_text(text)
    (args.out / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    print(report.render(results))
    log(f"done in {results['bench_seconds']:.0f} s; results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
