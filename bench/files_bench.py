"""`syncd export` / `syncd import` side by side with syncd's own snapshot and the COPY ceiling.

    python -m bench.files_bench tables  --rounds 3 [--users 200000 --documents 500000]
    python -m bench.files_bench vectors --rounds 3 [--items 100000 --dim 384]
    … [--format parquet]                       (the bundle's format; default jsonl)

Each round times every step once, in an order that alternates from round to round (the
machine is shared: a load that comes and goes falls on each step in turn), with the CPU the
rest of the machine took meanwhile (``bench.noise``):

- tables: the generated app database (bench/gen_app_db.py). ``snapshot``: ``init`` + ``run
  --until-caught-up`` into an empty database; ``export``: ``export --to DIR`` of a pristine copy
  (no capture); ``import``: ``import DIR`` of that round's bundle into an empty database, verify
  on (the default); ``ceiling``: binary ``COPY FROM`` files of the same rows plus the keys,
  indexes and foreign keys (bench/copy_ceiling.py).
- vectors: one cosine collection of clustered vectors (``bench.chroma_bench.dataset``) in a
  Chroma persist directory, filled after a first ``init`` (its log keeps every vector).
  ``snapshot``: ``init`` with a new state directory and ``run --until-caught-up`` (copy and HNSW
  build); ``export``; ``import`` (copy, HNSW build, hash check, search parity); ``ceiling``: a
  binary COPY of the same vectors built beforehand (only PostgreSQL's side timed), plus the HNSW
  build time the snapshot logged, so both sides hold an index.

Prints JSON: per round and step the wall seconds, peak RSS and foreign CPU share, then the
median and spread of ``import / snapshot``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import copy_ceiling, pg
from bench.chroma_bench import copy_ceiling as vector_ceiling
from bench.chroma_bench import dataset, events
from bench.export_bench import bundle_size
from bench.gen_app_db import generate
from bench.noise import CpuLedger
from bench.procs import run_measured, warm_file
from bench.schema import TABLES
from bench.syncd_run import SYNCD, _toml_str, prepare, snapshot, source_counts

FILL = """
import sys
import chromadb
from chromadb.config import Settings
from bench.chroma_bench import dataset
path, n, dim, fill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
client = chromadb.PersistentClient(path, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("docs", embedding_function=None,
                                     configuration={"hnsw": {"space": "cosine"}})
if fill:
    vecs = dataset(n, dim, 5)
    for s in range(0, n, 2000):
        e = min(n, s + 2000)
        col.add(ids=[f"item-{i:07d}" for i in range(s, e)], embeddings=vecs[s:e],
                documents=[f"document {i}" for i in range(s, e)],
                metadatas=[{"i": i, "topic": i % 97} for i in range(s, e)])
"""
Step = Callable[[int], dict[str, Any]]


def rounds_of(steps: dict[str, Step], rounds: int, ledger: CpuLedger) -> list[dict[str, Any]]:
    """Every step once per round, the order reversed every other round."""
    out = []
    names = list(steps)
    for r in range(rounds):
        row: dict[str, Any] = {"round": r + 1}
        for name in names if r % 2 == 0 else names[::-1]:
            ledger.mark(name)
            row[name] = steps[name](r)
            ledger.mark("-")
            row[name]["foreign_share"] = ledger.report()[-1]["foreign_share"]
            print(json.dumps({"round": r + 1, name: row[name]}), file=sys.stderr, flush=True)
        out.append(row)
    return out


def ratios(results: list[dict[str, Any]], a: str, b: str) -> dict[str, float]:
    rs = [r[a]["seconds"] / r[b]["seconds"] for r in results]
    return {"median": round(statistics.median(rs), 2), "min": round(min(rs), 2), "max": round(max(rs), 2)}


def measured(m: Any) -> dict[str, Any]:
    if m.returncode not in (0, 5):
        raise RuntimeError(f"{' '.join(m.argv[:4])}…: exit {m.returncode}, see {m.log}")
    return {"seconds": round(m.seconds, 2), "peak_rss_mb": round(m.peak_rss / 2**20), "exit": m.returncode}


def tables(out: Path, rounds: int, users: int, documents: int, fmt: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    source = out / f"app-{users}-{documents}.sqlite"
    if not source.exists():
        generate(source, users, documents)
    server = pg.start(out / "pg")
    files = out / "ceiling-files"
    copy_ceiling.prepare(server, source, files)
    ledger = CpuLedger(out / "pg" / "postmaster.pid")
    expected = source_counts(source)

    def snap(r: int) -> dict[str, Any]:
        _, s = snapshot(server, source, out / "snapshot", "bench_snapshot")
        assert s["complete"], s
        return {"seconds": round(s["seconds"], 2), "peak_rss_mb": round(s["peak_rss"] / 2**20)}

    def export(r: int) -> dict[str, Any]:
        setup = prepare(server, source, out / "export", "bench_export")
        bundle = out / "bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        warm_file(setup.sqlite)
        m = measured(run_measured(setup.argv("export", "--to", str(bundle), "--format", fmt),
                                  setup.work / "export.log", timeout=3600))
        return {**m, "bundle_mb": round(bundle_size(bundle) / 2**20)}

    def load(r: int) -> dict[str, Any]:
        bundle = out / "bundle"
        if not (bundle / "manifest.json").exists():
            export(r)
        setup = prepare(server, source, out / "import", "bench_import")
        pg.checkpoint(server)
        m = measured(run_measured(setup.argv("import", str(bundle)), setup.work / "import.log", timeout=3600))
        assert pg.describe(server, "bench_import", TABLES)["rows"] == expected
        return m

    def ceiling(r: int) -> dict[str, Any]:
        c = copy_ceiling.ceiling(server, files)
        return {"seconds": round(c["total_seconds"], 2)}

    results = rounds_of({"snapshot": snap, "import": load, "ceiling": ceiling, "export": export},
                        rounds, ledger)
    return {"rows": sum(expected.values()), "sqlite_mb": round(source.stat().st_size / 2**20),
            "rounds": results, "import_over_snapshot": ratios(results, "import", "snapshot"),
            "import_over_ceiling": ratios(results, "import", "ceiling"),
            "snapshot_over_ceiling": ratios(results, "snapshot", "ceiling"),
            "export_over_snapshot": ratios(results, "export", "snapshot")}


def vectors(out: Path, rounds: int, items: int, dim: int, fmt: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    os.environ["SYNCD_LOG_LEVEL"] = "info"  # the snapshot's "index built" event
    server = pg.start(out / "pg")
    ledger = CpuLedger(out / "pg" / "postmaster.pid")
    persist = (out / f"chroma-{items}-{dim}").resolve()

    def config(name: str, database: str) -> Path:
        work = (out / name).resolve()
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        dsn = pg.recreate_database(server, database)
        path = work / "syncd.toml"
        path.write_text(f"[source.chroma]\npath = {_toml_str(str(persist))}\n[target]\n"
                        f"dsn = {_toml_str(dsn)}\ncommand_timeout = 3600\n"
                        f"[state]\ndir = {_toml_str(str(work / 'state'))}\n"
                        "[health]\nlisten = \"127.0.0.1:0\"\n")
        return path

    def syncd(cfg: Path, log: str, *args: str) -> Any:
        return run_measured([str(SYNCD), "--config", str(cfg), *args], cfg.parent / log, timeout=7200)

    if not (persist / "done").exists():
        shutil.rmtree(persist, ignore_errors=True)
        subprocess.run([sys.executable, "-c", FILL, str(persist), str(items), str(dim), "0"], check=True)
        measured(syncd(config("first-init", "bench_vec_first"), "init.log", "init"))
        subprocess.run([sys.executable, "-c", FILL, str(persist), str(items), str(dim), "1"], check=True)
        (persist / "done").touch()
    data = dataset(items, dim, 5)
    built: list[float] = []

    def snap(r: int) -> dict[str, Any]:
        cfg = config("snapshot", "bench_vec_snapshot")
        measured(syncd(cfg, "init.log", "init"))
        m = measured(syncd(cfg, "snapshot.log", "run", "--until-caught-up"))
        ev = events((cfg.parent / "snapshot.log").read_text())
        index = [e["seconds"] for e in ev if e.get("event") == "index built"]
        built.extend(index[:1])
        return {**m, "hnsw_build_seconds": index[0] if index else None}

    def export(r: int) -> dict[str, Any]:
        cfg = config("export", "bench_vec_export")
        bundle = out / "bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        m = measured(syncd(cfg, "export.log", "export", "--to", str(bundle), "--format", fmt))
        return {**m, "bundle_mb": round(bundle_size(bundle) / 2**20)}

    def load(r: int) -> dict[str, Any]:
        if not (out / "bundle" / "manifest.json").exists():
            export(r)
        cfg = config("import", "bench_vec_import")
        m = measured(syncd(cfg, "import.log", "import", str(out / "bundle")))
        return m

    def ceiling(r: int) -> dict[str, Any]:
        dsn = pg.recreate_database(server, "bench_vec_ceiling")
        server.psql("bench_vec_ceiling", "CREATE EXTENSION IF NOT EXISTS vector")
        rate = asyncio.run(vector_ceiling(dsn, data))["payload"]
        copy = items / rate
        index = statistics.median(built) if built else 0.0
        return {"seconds": round(copy + index, 2), "copy_seconds": round(copy, 2),
                "hnsw_build_seconds_from_snapshot": index}

    results = rounds_of({"snapshot": snap, "import": load, "export": export, "ceiling": ceiling},
                        rounds, ledger)
    return {"items": items, "dim": dim, "rounds": results,
            "import_over_snapshot": ratios(results, "import", "snapshot"),
            "snapshot_over_ceiling": ratios(results, "snapshot", "ceiling"),
            "export_over_snapshot": ratios(results, "export", "snapshot")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("tables", "vectors"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="the bundle's format")
    ap.add_argument("--out", type=Path, default=Path("bench/out/files"))
    args = ap.parse_args(argv)
    if args.what == "tables":
        result = tables(args.out / "tables", args.rounds, args.users, args.documents, args.format)
    else:
        result = vectors(args.out / "vectors", args.rounds, args.items, args.dim, args.format)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
