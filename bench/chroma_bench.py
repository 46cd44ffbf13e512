"""Chroma -> pgvector benchmark: snapshot rate against a raw binary COPY, HNSW build time,
streaming lag under a steady upsert load, and query latency / recall@10 of Chroma, pgvector
and an exact search.

    python -m bench.chroma_bench                         # 100k x 384-d and 20k x 1536-d
    python -m bench.chroma_bench --sets 20000x384 --lag-seconds 10

Each set is written to a fresh `chroma run` server *before* `syncd init` (Chroma purges
its log as it indexes, as for an app that has been running: most vectors then come from
the server; with --after-init, after it: the log holds them), then copied by
`syncd run --until-caught-up` into the embedded PostgreSQL.
Results: bench/out/chroma/results.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from bench import pg as bench_pg

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "chroma"
CHROMA = Path(sys.executable).parent / "chroma"


def dataset(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered vectors (like text embeddings: topics), not uniform noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(10, n // 1000), dim)).astype(np.float32)
    data = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.asarray(data, dtype=np.float32)


def start_chroma(path: Path, port: int) -> subprocess.Popen[bytes]:
    import urllib.request

    path.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "chroma-server.log", "ab") as log:
        proc = subprocess.Popen([str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=log)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("chroma run did not start")


def client(port: int) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def syncd(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYNCD_LOG_LEVEL": "info"}
    proc = subprocess.run([sys.executable, "-m", "syncd.cli", "--config", str(cfg), *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=7200)
    if proc.returncode:
        raise RuntimeError(f"syncd {' '.join(args)}: {proc.stderr[-3000:]}")
    return proc


def events(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def copy_ceiling(dsn: str, data: np.ndarray, chunk: int = 5000) -> float:
    """Vectors per second of a plain binary COPY of the same vectors (the ceiling)."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        dim = data.shape[1]
        await conn.execute(f"DROP TABLE IF EXISTS ceiling; CREATE TABLE ceiling (id text COLLATE \"C\" "
                           f"PRIMARY KEY, embedding vector({dim}) NOT NULL, document text, metadata jsonb)")
        began = time.perf_counter()
        for start in range(0, len(data), chunk):
            rows = [(f"id{i:07d}", data[i], f"document {i}", json.dumps({"i": i, "topic": i % 97}))
                    for i in range(start, min(start + chunk, len(data)))]
            async with conn.transaction():
                await conn.copy_records_to_table("ceiling", records=rows,
                                                 columns=["id", "embedding", "document", "metadata"])
        seconds = time.perf_counter() - began
        await conn.execute("DROP TABLE ceiling")
        return len(data) / seconds
    finally:
        await conn.close()


async def queries(dsn: str, table: str, col: Any, data: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    """Latency p50/p95 and recall@10 against an exact cosine search."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), n)
    qs = (data[picks] + 0.1 * rng.standard_normal((n, data.shape[1])).astype(np.float32)).astype(np.float32)
    norm = data / np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.array([f"id{i:07d}" for i in range(len(data))])
    exact = [set(ids[np.argsort(-(norm @ (q / np.linalg.norm(q))))[:10]]) for q in qs]
    out: dict[str, Any] = {}
    lat, rec = [], []
    for q, truth in zip(qs, exact, strict=True):
        began = time.perf_counter()
        got = col.query(query_embeddings=[q], n_results=10, include=[])["ids"][0]
        lat.append((time.perf_counter() - began) * 1000)
        rec.append(len(truth & set(got)) / 10)
    out["chroma"] = {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "recall_at_10": statistics.mean(rec)}
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        for ef in (40, 100):
            await conn.execute(f"SET hnsw.ef_search = {ef}")
            stmt = await conn.prepare(f'SELECT id FROM "{table}" ORDER BY embedding <=> $1 LIMIT 10')
            lat, rec = [], []
            for q, truth in zip(qs, exact, strict=True):
                began = time.perf_counter()
                got = [r["id"] for r in await stmt.fetch(q)]
                lat.append((time.perf_counter() - began) * 1000)
                rec.append(len(truth & set(got)) / 10)
            out[f"pgvector_ef{ef}"] = {"p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                                       "recall_at_10": statistics.mean(rec)}
    finally:
        await conn.close()
    return out


def start_daemon(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "syncd.cli", "--config", str(cfg), "run"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def streaming_lag(cfg: Path, dsn: str, table: str, col: Any, data: np.ndarray, rate: int,
                        seconds: float) -> dict[str, Any]:
    """Upserts of existing ids at *rate* per second while syncd streams; lag = visible in PostgreSQL
    minus acknowledged by Chroma, per upsert call of 25 ids."""
    daemon = start_daemon(cfg)
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(3)  # daemon start-up: imports, connections, catch-up check
        batch = 25
        interval = batch / rate
        written: list[tuple[int, list[str], float]] = []
        lock = threading.Lock()
        rng = np.random.default_rng(3)
        stop = threading.Event()

        def writer() -> None:
            k = 0
            next_at = time.perf_counter()
            deadline = next_at + seconds
            try:
                while time.perf_counter() < deadline:
                    picks = rng.choice(len(data), batch, replace=False)
                    ids = [f"id{i:07d}" for i in picks]
                    col.upsert(ids=ids, embeddings=data[picks], metadatas=[{"k": k}] * batch)
                    with lock:
                        written.append((k, ids, time.perf_counter()))
                    k += 1
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.perf_counter()))
            finally:
                stop.set()

        thread = threading.Thread(target=writer)
        began = time.perf_counter()
        thread.start()
        lags: list[float] = []
        seen = 0
        while not (stop.is_set() and seen >= len(written)):
            with lock:
                todo = written[seen:]
            if not todo:
                await asyncio.sleep(0.005)
                continue
            k, ids, at = todo[0]
            n = await conn.fetchval(f'SELECT count(*) FROM "{table}" WHERE id = ANY($1::text[]) '
                                    "AND (metadata->>'k')::int >= $2", ids, k)
            if n >= len(set(ids)):
                lags.append((time.perf_counter() - at) * 1000)
                seen += 1
            else:
                await asyncio.sleep(0.005)
        thread.join()
        achieved = len(written) * batch / (time.perf_counter() - began)
    finally:
        await conn.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return {"target_rate": rate, "achieved_upserts_per_s": achieved, "p50_ms": pct(lags, 50),
            "p99_ms": pct(lags, 99), "batches": len(lags)}


async def one_set(n: int, dim: int, server: bench_pg.Server, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_{n // 1000}k_{dim}{'_log' if args.after_init else ''}"
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = 18400 + dim % 100
    data = dataset(n, dim, seed=n + dim)
    result: dict[str, Any] = {"items": n, "dim": dim}
    chroma = start_chroma(work / "chroma", port)
    try:
        col = client(port).get_or_create_collection(name, embedding_function=None,
                                                    configuration={"hnsw": {"space": "cosine"}})
        database = name
        server.psql(bench_pg.ADMIN_DB, f"DROP DATABASE IF EXISTS {database}")
        server.psql(bench_pg.ADMIN_DB, f"CREATE DATABASE {database}")
        dsn = server.dsn(database)
        cfg = work / "syncd.toml"
        cfg.write_text(f'[source.chroma]\nurl = "http://127.0.0.1:{port}"\npath = "{work / "chroma"}"\n\n'
                       f'[target]\ndsn = "{dsn}"\ncommand_timeout = 3600\n\n'
                       f'[state]\ndir = "{work / "state"}"\n\n'
                       '[stream]\npoll_interval = 0.05\nbatch_size = 500\n\n'
                       '[health]\nlisten = "127.0.0.1:0"\n')
        if args.after_init:  # purging off from the start: the log holds every vector
            col.add(ids=["first"], embeddings=data[:1])
            syncd(cfg, "init")
            col.delete(ids=["first"])
        began = time.perf_counter()
        for start in range(0, n, 2000):
            end = min(start + 2000, n)
            col.add(ids=[f"id{i:07d}" for i in range(start, end)], embeddings=data[start:end],
                    documents=[f"document {i}" for i in range(start, end)],
                    metadatas=[{"i": i, "topic": i % 97} for i in range(start, end)])
        result["chroma_ingest_items_per_s"] = n / (time.perf_counter() - began)
        result["vectors_from"] = "log" if args.after_init else "server (log purged before init)"
        syncd(cfg, "init")
        began = time.perf_counter()
        proc = syncd(cfg, "run", "--until-caught-up")
        wall = time.perf_counter() - began
        ev = events(proc.stderr)
        snap = next(e for e in ev if e.get("event") == "snapshot done")
        index = next(e for e in ev if e.get("event") == "index built")
        result["snapshot"] = {"seconds": snap["seconds"], "vectors_per_s": n / snap["seconds"],
                              "end_to_end_seconds_incl_index_and_startup": round(wall, 2)}
        result["hnsw_build_seconds"] = index["seconds"]
        result["hnsw_maintenance_work_mem_mb"] = index["maintenance_work_mem_mb"]
        result["copy_ceiling_vectors_per_s"] = await copy_ceiling(dsn, data)
        result["snapshot"]["share_of_ceiling"] = result["snapshot"]["vectors_per_s"] / \
            result["copy_ceiling_vectors_per_s"]
        result["queries"] = await queries(dsn, name, col, data, args.queries, seed=dim)
        if args.lag_seconds > 0:
            result["streaming"] = await streaming_lag(cfg, dsn, name, col, data, args.rate, args.lag_seconds)
    finally:
        chroma.send_signal(signal.SIGTERM)
        chroma.wait(timeout=60)
    return result


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| set | snapshot vec/s | COPY ceiling vec/s | share | HNSW build s | lag p50 / p99 ms "
             "(upserts/s) | Chroma p50/p95 ms, recall | pgvector ef40 | pgvector ef100 |",
             "|---|---|---|---|---|---|---|---|---|"]
    def qf(q: dict[str, Any], k: str) -> str:
        return f"{q[k]['p50_ms']:.1f}/{q[k]['p95_ms']:.1f}, {q[k]['recall_at_10']:.3f}"

    for r in results:
        q = r["queries"]
        s = r.get("streaming", {})
        lag = (f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f} ({s['achieved_upserts_per_s']:.0f})" if s else "—")
        lines.append(f"| {r['items']:,} × {r['dim']} | {r['snapshot']['vectors_per_s']:,.0f} | "
                     f"{r['copy_ceiling_vectors_per_s']:,.0f} | {r['snapshot']['share_of_ceiling']:.0%} | "
                     f"{r['hnsw_build_seconds']:.1f} | {lag} | {qf(q, 'chroma')} | "
                     f"{qf(q, 'pgvector_ef40')} | {qf(q, 'pgvector_ef100')} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["100000x384", "20000x1536"])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    parser.add_argument("--after-init", action="store_true",
                        help="write the set after `syncd init` (its log kept): the snapshot reads vectors "
                             "from the log instead of the server")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    server = bench_pg.start(OUT / "pgdata")
    results = []
    for spec in args.sets:
        n, dim = (int(x) for x in spec.split("x"))
        print(f"chroma bench: {n:,} x {dim}-d ...", flush=True)
        results.append(await one_set(n, dim, server, args))
        out = OUT / ("results-after-init.json" if args.after_init else "results.json")
        out.write_text(json.dumps(results, indent=2))
    print(report(results))


if __name__ == "__main__":
    asyncio.run(main())
