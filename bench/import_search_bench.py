"""What search parity adds to `syncd import`'s verify, and the recall it reports, on one collection.

    python -m bench.import_search_bench --items 20000 --dim 384 [--uniform] [--out bench/out/import_search]

A Chroma persist directory with one cosine collection (``syncd init`` first, so that its log
keeps the vectors the export reads); the vectors are ``bench.chroma_bench.dataset``'s clustered
ones (like text embeddings) or, with ``--uniform``, Gaussian noise (no structure: HNSW's worst
case). Then, timed through the CLI: ``export``, ``import --no-verify`` (the load and the HNSW
build), and ``import --verify-only`` with ``--sample-size 0`` (the hashes alone), the default 20
and 100 queries; each verify's search line. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import run_measured
from bench.syncd_run import SYNCD, _toml_str

FILL = """
import sys
import numpy as np
import chromadb
from chromadb.config import Settings
from bench.chroma_bench import dataset
path, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uniform, fill = sys.argv[4] == "1", sys.argv[5] == "1"
client = chromadb.PersistentClient(path, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("docs", embedding_function=None,
                                     configuration={"hnsw": {"space": "cosine"}})
if fill:
    vecs = (np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32) if uniform
            else dataset(n, dim, 5))
    for s in range(0, n, 2000):
        col.add(ids=[f"item-{i:07d}" for i in range(s, min(n, s + 2000))], embeddings=vecs[s:s + 2000])
"""
SEARCH = re.compile(r"^verify collection docs: search (.*)$", re.M)


def run(out: Path, items: int, dim: int, uniform: bool, chunk_format: str = "jsonl") -> dict[str, Any]:
    shutil.rmtree(out / "work", ignore_errors=True)
    work = (out / "work").resolve()
    work.mkdir(parents=True)
    server = pg.start(out / "pg")
    dsn = pg.recreate_database(server, "bench_import_search")
    app = work / "app.sqlite"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    config = work / "syncd.toml"
    config.write_text(f"[source.sqlite]\npath = {_toml_str(str(app))}\n[source.chroma]\n"
                      f"path = {_toml_str(str(work / 'chroma'))}\n[target]\ndsn = {_toml_str(dsn)}\n"
                      f"[state]\ndir = {_toml_str(str(work / 'state'))}\n"
                      "[health]\nlisten = \"127.0.0.1:0\"\n")

    def fill(add: bool) -> None:
        subprocess.run([sys.executable, "-c", FILL, str(work / "chroma"), str(items), str(dim),
                        "1" if uniform else "0", "1" if add else "0"], check=True)

    def syncd(name: str, *args: str) -> dict[str, Any]:
        m = run_measured([str(SYNCD), "--config", str(config), *args], work / f"{name}.log", timeout=7200)
        text = m.log.read_text()
        found = SEARCH.search(text)
        return {"seconds": round(m.seconds, 2), "peak_rss": m.peak_rss, "exit": m.returncode,
                "search": found[1] if found else None}

    fill(False)
    init = syncd("init", "init")
    assert init["exit"] == 0, (work / "init.log").read_text()
    fill(True)
    bundle = work / "bundle"
    results: dict[str, Any] = {"items": items, "dim": dim, "vectors": "uniform" if uniform else "clustered",
                               "format": chunk_format}
    results["export"] = syncd("export", "export", "--to", str(bundle), "--collection", "docs",
                              "--format", chunk_format)
    results["bundle_bytes"] = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    pg.recreate_database(server, "bench_import_search")
    results["import_no_verify"] = syncd("import", "import", str(bundle), "--no-verify")
    for n in (0, 20, 100):
        results[f"verify_only_{n}_queries"] = syncd(f"verify-{n}", "import", str(bundle), "--verify-only",
                                                    "--sample-size", str(n))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--uniform", action="store_true", help="Gaussian noise instead of clustered vectors")
    ap.add_argument("--out", type=Path, default=Path("bench/out/import_search"))
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.out, args.items, args.dim, args.uniform, args.format), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
