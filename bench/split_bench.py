"""A collection over two tables (Signal Hub's documents + embeddings, written through syncd's view
and its INSTEAD OF triggers) against the same collection in one table with the same columns:
the snapshot's time, side by side.

    python -m bench.split_bench [--items 20000] [--dim 1536] [--trials 3]

One `chroma run` server holds the collection (Signal Hub's metadata: file_path, chunk_index,
start_line, end_line, language, model, one more key). Each trial copies it twice into fresh
databases, alternating which goes first: once into one table (`chunks`: every column of both
of Signal Hub's tables but the second key), once into Signal Hub's two tables (the seed's own
DDL). Both have the seed's ivfflat index, built after the load. Reported: syncd's own
``snapshot done`` seconds, items/s, the ratio two tables / one table per trial, and the load
average before each run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from bench import pg as bench_pg
from bench.chroma_bench import client, dataset, events, start_chroma, syncd

OUT = Path(__file__).resolve().parent / "out" / "split"
SEED_DDL = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seeds" / "signal-hub"
            / "schema.sql").read_text()
COLUMNS = ('{ content = "document", file_path = "metadata.file_path", chunk_index = "metadata.chunk_index", '
           'start_line = "metadata.start_line", end_line = "metadata.end_line", '
           'language = "metadata.language", model = "metadata.model" }')
ONE_TABLE = """CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE chunks (
    id TEXT PRIMARY KEY, file_path TEXT NOT NULL, content TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    start_line INTEGER, end_line INTEGER, language VARCHAR(50), metadata JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    embedding vector({dim}), model VARCHAR(100), UNIQUE(file_path, chunk_index));
CREATE INDEX idx_chunks_vector ON chunks USING ivfflat (embedding vector_cosine_ops);
"""


def entry(mode: str, dim: int) -> str:
    if mode == "one table":
        return (f'[[target.collections]]\nname = "signal-hub"\ntable = "chunks"\ncolumns = {COLUMNS}\n'
                f"create = {json.dumps(ONE_TABLE.format(dim=dim))}\n")
    ddl = SEED_DDL.replace("vector(1536)", f"vector({dim})")
    return (f'[[target.collections]]\nname = "signal-hub"\ntable = "embeddings"\ndocuments = "documents"\n'
            f"columns = {COLUMNS}\ncreate = {json.dumps(ddl)}\n")


def copy_once(server: bench_pg.Server, work: Path, port: int, mode: str, dim: int,
              trial: int) -> dict[str, Any]:
    database = f"split_{trial}_{mode.replace(' ', '_')}"
    server.psql(bench_pg.ADMIN_DB, f"DROP DATABASE IF EXISTS {database}")
    server.psql(bench_pg.ADMIN_DB, f"CREATE DATABASE {database}")
    state = work / f"state-{database}"
    shutil.rmtree(state, ignore_errors=True)
    cfg = work / f"{database}.toml"
    cfg.write_text(f'[source.chroma]\nurl = "http://127.0.0.1:{port}"\npath = "{work / "chroma"}"\n\n'
                   f'[target]\ndsn = "{server.dsn(database)}"\ncommand_timeout = 3600\n\n'
                   f'[state]\ndir = "{state}"\n\n[health]\nlisten = "127.0.0.1:0"\n\n' + entry(mode, dim))
    load = os.getloadavg()[0]
    syncd(cfg, "init")
    began = time.perf_counter()
    proc = syncd(cfg, "run", "--until-caught-up")
    wall = time.perf_counter() - began
    snap = next(e for e in events(proc.stderr) if e.get("event") == "snapshot done")
    server.psql(bench_pg.ADMIN_DB, f"DROP DATABASE IF EXISTS {database}")
    return {"mode": mode, "trial": trial, "snapshot_seconds": float(snap["seconds"]),
            "end_to_end_seconds": round(wall, 2), "load_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.split_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--port", type=int, default=18473)
    args = ap.parse_args()
    work = OUT
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = bench_pg.start(work / "pgdata")
    chroma = start_chroma(work / "chroma", args.port)
    runs: list[dict[str, Any]] = []
    try:
        col = client(args.port).get_or_create_collection("signal-hub", embedding_function=None,
                                                         configuration={"hnsw": {"space": "cosine"}})
        data = dataset(args.items, args.dim, seed=15)
        for start in range(0, args.items, 1000):
            span = range(start, min(start + 1000, args.items))
            col.add(ids=[f"src/mod{i // 8}.py#{i % 8}" for i in span], embeddings=data[span.start:span.stop],
                    documents=[f"def f{i}():\n    return {i}\n" for i in span],
                    metadatas=[{"file_path": f"src/mod{i // 8}.py", "chunk_index": i % 8,
                                "start_line": 1 + 20 * (i % 8), "end_line": 20 + 20 * (i % 8),
                                "language": "python", "model": "text-embedding-3-small", "repo": "signal-hub"}
                               for i in span])
        for trial in range(args.trials):
            order = ("one table", "two tables") if trial % 2 == 0 else ("two tables", "one table")
            for mode in order:
                run = copy_once(server, work, args.port, mode, args.dim, trial)
                runs.append(run)
                print(f"trial {trial} {mode:<10} snapshot {run['snapshot_seconds']:7.2f} s "
                      f"({args.items / run['snapshot_seconds']:8,.0f} items/s), end to end "
                      f"{run['end_to_end_seconds']:6.2f} s, load {run['load_before']}", flush=True)
    finally:
        chroma.send_signal(signal.SIGTERM)
        chroma.wait(timeout=60)
    ratios = []
    for trial in range(args.trials):
        by = {r["mode"]: r["snapshot_seconds"] for r in runs if r["trial"] == trial}
        ratios.append(by["two tables"] / by["one table"])
    print(f"two tables / one table, snapshot: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f}); {args.items:,} items x {args.dim}-d")
    (work / "results.json").write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
