"""Chroma "server only" (url without path): what one re-scan costs, the only change feed.

    python -m bench.chroma_remote_bench                     # 10k and 100k items, 384-d
    python -m bench.chroma_remote_bench --sets 10000 --changes 500

For each set: a fresh `chroma run` server is filled (cosine, 384-d, a document and three
metadata keys per item); then, in this process, syncd's own source and sink for topology
"server only" (syncd.stores.chroma.remote) copy the collection into the embedded
PostgreSQL (snapshot) and run scans exactly as `syncd run` does: an idle scan (nothing
changed), and a scan after --changes updates and --changes deletes. Also timed: one
`collection.get(limit=1000, offset=…)` page at the first, middle and last offset (is paging
by offset O(offset)?). Results: bench/out/chroma_remote/results.json and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import pg
from bench.chroma_bench import start_chroma
from syncd import config as config_mod
from syncd.model import Position, SnapshotState
from syncd.stores.chroma.remote import SCAN, RemoteTopology
from syncd.stores.pgvector.remote_sink import open_remote_sink

OUT = Path(__file__).parent / "out" / "chroma_remote"
DIM = 384
PORT = 18431


def stop_chroma(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fill(client: Any, n: int) -> Any:
    col = client.get_or_create_collection("scan_bench", embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    rng = np.random.default_rng(5)
    for i in range(0, n, 2000):
        k = min(2000, n - i)
        col.add(ids=[f"id{j:07d}" for j in range(i, i + k)],
                embeddings=rng.standard_normal((k, DIM)).astype(np.float32),
                documents=[f"document {j} " + "x" * (j % 200) for j in range(i, i + k)],
                metadatas=[{"userId": f"u{j % 50}", "n": j, "ok": j % 2 == 0} for j in range(i, i + k)])
    return col


def page_times(col: Any, n: int) -> dict[str, float]:
    out = {}
    for name, offset in (("first", 0), ("middle", n // 2), ("last", max(0, n - 1000))):
        began = time.perf_counter()
        col.get(limit=1000, offset=offset, include=["embeddings", "documents", "metadatas"])
        out[name] = round(time.perf_counter() - began, 3)
    return out


async def scan(sink: Any, source: Any, stream: str, position: Position,
               batch: int) -> tuple[Position, float, int]:
    """One whole scan from *position* (a finished scan); returns the new position, seconds, writes."""
    source._last_start = None  # due now
    began, applied = time.perf_counter(), 0
    while True:
        page = await source.changes(position, batch)
        applied += (await sink.apply(stream, page)).applied
        position = page.position
        if position.offset % SCAN == SCAN - 1:
            return position, time.perf_counter() - began, applied


async def run_set(n: int, changes: int, batch: int, work: Path, server: pg.Server) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings

    chroma_dir = work / f"chroma-{n}"
    shutil.rmtree(chroma_dir, ignore_errors=True)
    proc = start_chroma(chroma_dir, PORT)
    try:
        client = chromadb.HttpClient(host="127.0.0.1", port=PORT,
                                     settings=Settings(anonymized_telemetry=False))
        began = time.perf_counter()
        col = fill(client, n)
        fill_s = time.perf_counter() - began
        pages = page_times(col, n)
        dsn = pg.recreate_database(server, f"remote_{n}")
        cfg_file = work / "syncd.toml"
        cfg_file.write_text(f'[source.chroma]\nurl = "http://127.0.0.1:{PORT}"\n\n[target]\ndsn = "{dsn}"\n\n'
                            f'[state]\ndir = "{work / "state"}"\n\n[stream]\nbatch_size = {batch}\n')
        config = config_mod.load(cfg_file)
        topology = await RemoteTopology.open(config)
        try:
            info = next(c for c in await topology.catalog() if c.name == "scan_bench")
            source = topology.source(info)
            sink = await open_remote_sink(config, dsn, source)
            stream = f"chroma:{info.id}"
            state = SnapshotState(start=await source.head())
            began = time.perf_counter()
            await sink.begin_snapshot(stream, state)
            async for chunk in source.snapshot_chunks(info.id, None, config.stream.chunk_rows,
                                                      prepare=sink.prepare_chunk):
                state.copied[info.id] = state.copied.get(info.id, 0) + len(chunk.rows)
                await sink.copy_chunk(stream, chunk, state)
            await sink.finish_snapshot(stream, state)
            snapshot_s = time.perf_counter() - began
            position, idle_s, idle_writes = await scan(sink, source, stream, state.start, batch)
            rng = np.random.default_rng(9)
            picked = rng.choice(n, size=2 * changes, replace=False)
            upd = [f"id{j:07d}" for j in picked[:changes]]
            col.update(ids=upd, embeddings=rng.standard_normal((changes, DIM)).astype(np.float32))
            col.delete(ids=[f"id{j:07d}" for j in picked[changes:]])
            position, busy_s, busy_writes = await scan(sink, source, stream, position, batch)
            await sink.close()
        finally:
            await topology.close()
        return {"items": n, "dim": DIM, "fill_seconds": round(fill_s, 1), "page_seconds": pages,
                "snapshot_seconds": round(snapshot_s, 2), "snapshot_items_per_second": round(n / snapshot_s),
                "idle_scan_seconds": round(idle_s, 2), "idle_scan_items_per_second": round(n / idle_s),
                "idle_scan_writes": idle_writes, "changed_scan_seconds": round(busy_s, 2),
                "changed_scan_writes": busy_writes, "changes": 2 * changes}
    finally:
        stop_chroma(proc)
        shutil.rmtree(chroma_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="10000,100000", help="item counts, comma-separated")
    ap.add_argument("--changes", type=int, default=500, help="updates (and as many deletes) before a scan")
    ap.add_argument("--batch", type=int, default=2000, help="page size (stream.batch_size)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "work"
    server = pg.start(work / "pg")
    results = []
    for n in (int(s) for s in args.sets.split(",")):
        result = asyncio.run(run_set(n, args.changes, args.batch, work, server))
        print(json.dumps(result), flush=True)
        results.append(result)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
