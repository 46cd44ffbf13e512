"""`syncd export` + `syncd import` against syncd's own snapshot, on a generated app database.

    python -m bench.export_bench --users 200000 --documents 500000 [--out bench/out/export]
                                 [--format jsonl|parquet]

Generates the database once (bench/gen_app_db.py), starts an embedded PostgreSQL, then:

1. snapshot: ``init`` + ``run --until-caught-up`` into one database (bench/syncd_run.py);
2. export: ``export --to DIR`` of a fresh copy of the pristine database (no capture);
3. import: ``import DIR`` into another empty database (verify on, as by default).

Each timed with its peak RSS; the target's row counts are checked against SQLite's. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import pg
from bench.gen_app_db import generate
from bench.procs import run_measured, warm_file
from bench.schema import TABLES
from bench.syncd_run import prepare, snapshot, source_counts


def bundle_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run(out: Path, users: int, documents: int, batch_size: int | None, workers: int,
        chunk_format: str = "jsonl") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    source = out / f"app-{users}-{documents}.sqlite"
    if not source.exists():
        generate(source, users, documents)
    server = pg.start(out / "pg")
    results: dict[str, Any] = {"users": users, "documents": documents, "rows": users + documents,
                               "sqlite_bytes": source.stat().st_size, "format": chunk_format}
    _, snap = snapshot(server, source, out / "snapshot", "bench_snapshot")
    results["snapshot"] = {k: snap[k] for k in ("seconds", "peak_rss", "complete")}

    setup = prepare(server, source, out / "export", "bench_import")
    bundle = setup.work / "bundle"
    warm_file(setup.sqlite)
    ex = run_measured(setup.argv("export", "--to", str(bundle), "--format", chunk_format),
                      setup.work / "export.log",
                      timeout=3600).check()
    results["export"] = {"seconds": ex.seconds, "peak_rss": ex.peak_rss, "bundle_bytes": bundle_size(bundle)}
    pg.checkpoint(server)
    args = ["import", str(bundle), "--workers", str(workers)]
    if batch_size:
        args += ["--batch-size", str(batch_size)]
    im = run_measured(setup.argv(*args), setup.work / "import.log", timeout=3600)
    target = pg.describe(server, "bench_import", TABLES)
    results["import"] = {"seconds": im.seconds, "peak_rss": im.peak_rss, "exit": im.returncode,
                         "complete": target["rows"] == source_counts(setup.sqlite)}
    results["import_over_snapshot"] = round(im.seconds / snap["seconds"], 2)
    results["export_plus_import_over_snapshot"] = round((ex.seconds + im.seconds) / snap["seconds"], 2)
    shutil.rmtree(bundle, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=Path("bench/out/export"))
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.out, args.users, args.documents, args.batch_size, args.workers, args.format),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
