"""Chroma -> pgvector benchmark: snapshot rate against a raw binary COPY, HNSW build time,
streaming lag under a steady upsert load, and query latency / recall@10 of Chroma, pgvector
and an exact search.

    python -m bench.chroma_bench                         # 100k x 384-d and 20k x 1536-d
    python -m bench.chroma_bench --sets 20000x384 --lag-seconds 10
    python -m bench.chroma_bench --after-init --rate 500 --batch-items 20   # vectors from the log

Streaming load: --rate upserts/s offered as --rate / --batch-items client calls per second of
--batch-items ids each (an app that embeds in batches); lag = visible in PostgreSQL minus the
moment Chroma acknowledged the call, per call. The HNSW floor is PostgreSQL alone applying
the same kind of upserts (new vectors for existing ids) to the indexed table, no syncd.

Each set is written to a fresh `chroma run` server *before* `syncd init` (Chroma purges
its log as it indexes, as for an app that has been running: most vectors then come from
the server; with --after-init, after it: the log holds them), then copied by
`syncd run --until-caught-up` into the embedded PostgreSQL.
Results: bench/out/chroma/results.json (results-after-init.json with --after-init) and a table
on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from bench import pg as bench_pg
from syncd.stores.pgvector.plan import VectorTable

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


async def copy_ceiling(dsn: str, data: np.ndarray, chunk: int = 5000) -> dict[str, float]:
    """Vectors per second of a plain binary COPY of the same vectors and the same documents and
    metadata: through asyncpg's record encoder (pgvector's codec), and as a binary COPY stream
    built beforehand (only PostgreSQL's side is timed: the strictest ceiling)."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        dim = data.shape[1]
        columns = ["id", "embedding", "document", "metadata"]

        async def fresh() -> None:
            await conn.execute(f"DROP TABLE IF EXISTS ceiling; CREATE TABLE ceiling (id text COLLATE \"C\" "
                               f"PRIMARY KEY, embedding vector({dim}) NOT NULL, document text, "
                               "metadata jsonb) WITH (fillfactor = 90)")

        def rows(start: int) -> list[tuple[Any, ...]]:
            return [(f"id{i:07d}", data[i], f"document {i}", json.dumps({"i": i, "topic": i % 97}))
                    for i in range(start, min(start + chunk, len(data)))]

        await fresh()
        began = time.perf_counter()
        for start in range(0, len(data), chunk):
            async with conn.transaction():
                await conn.copy_records_to_table("ceiling", records=rows(start), columns=columns)
        records_rate = len(data) / (time.perf_counter() - began)
        payloads = [binary_copy(rows(start)) for start in range(0, len(data), chunk)]
        await fresh()
        began = time.perf_counter()
        for payload in payloads:
            async with conn.transaction():
                await conn.copy_to_table("ceiling", source=messages(payload), columns=columns,
                                         format="binary")
        payload_rate = len(data) / (time.perf_counter() - began)
        await conn.execute("DROP TABLE ceiling")
        return {"records": records_rate, "payload": payload_rate}
    finally:
        await conn.close()


async def messages(payload: bytes, size: int = 1 << 19) -> AsyncIterator[memoryview]:
    """CopyData messages of 512 kB, as syncd sends them (PostgreSQL parses one once it has it whole)."""
    view = memoryview(payload)
    for at in range(0, len(view), size):
        yield view[at:at + size]


def binary_copy(rows: list[tuple[Any, ...]]) -> bytes:
    """A binary COPY stream of (text, vector, text, jsonb) rows."""
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    for item_id, vector, document, metadata in rows:
        i, d, m = item_id.encode(), document.encode(), b"\x01" + metadata.encode()
        v = struct.pack(">hh", len(vector), 0) + np.asarray(vector, dtype=">f4").tobytes()
        parts += [struct.pack(">hi", 4, len(i)), i, struct.pack(">i", len(v)), v,
                  struct.pack(">i", len(d)), d, struct.pack(">i", len(m)), m]
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


async def hnsw_floor(dsn: str, table: str, data: np.ndarray, *, rows: int, batch: int,
                     statement: str | None = None) -> dict[str, Any]:
    """Rows per second PostgreSQL alone applies upserts of new vectors to existing ids of the
    indexed *table* (one transaction of *batch* rows each, executemany, as syncd writes a
    batch); and metadata-only updates, with how many were HOT (no index insert)."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        rng = np.random.default_rng(11)
        out: dict[str, Any] = {"rows": rows, "batch": batch}
        plain = (f'INSERT INTO "{table}" (id, embedding, metadata) VALUES ($1, $2, $3::jsonb) ON CONFLICT '
                 "(id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata")
        runs = [("upsert_on_conflict", plain, False)]
        if statement is not None:  # syncd's UPSERT: id, vector, has document, document, metadata, removed
            runs.append(("syncd_upsert_statement", statement, True))
        for name, sql, syncd_args in runs:
            began = time.perf_counter()
            for _ in range(rows // batch):
                picks = rng.choice(len(data), batch, replace=False)
                noise = 0.05 * rng.standard_normal((batch, data.shape[1]))
                vectors = (data[picks] + noise).astype(np.float32)
                ids = [f"id{i:07d}" for i in picks]
                args: list[tuple[Any, ...]] = [
                    (i, v, False, None, '{"floor": 2}', []) if syncd_args else (i, v, '{"floor": 1}')
                    for i, v in zip(ids, vectors, strict=True)]
                async with conn.transaction():
                    await conn.executemany(sql, args)
            out[f"{name}_rows_per_s"] = (rows // batch) * batch / (time.perf_counter() - began)
        hot_sql = f"SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '{table}'"
        await conn.execute("SELECT pg_stat_force_next_flush()")
        before = await conn.fetchrow(hot_sql)
        began = time.perf_counter()
        for _ in range(rows // batch):
            picks = rng.choice(len(data), batch, replace=False)
            async with conn.transaction():
                await conn.executemany(f'UPDATE "{table}" SET metadata = $2::jsonb WHERE id = $1',
                                       [(f"id{i:07d}", '{"meta_only": 1}') for i in picks])
        out["metadata_only_update_rows_per_s"] = (rows // batch) * batch / (time.perf_counter() - began)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await asyncio.sleep(0.6)
        after = await conn.fetchrow(hot_sql)
        updated = after["n_tup_upd"] - before["n_tup_upd"]
        out["metadata_only_hot_share"] = (after["n_tup_hot_upd"] - before["n_tup_hot_upd"]) / updated \
            if updated else None
        return out
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


async def default_build(dsn: str, table: str, col: Any, data: np.ndarray, n: int,
                        seed: int, work_mem_mb: int) -> dict[str, Any]:
    """The same queries after rebuilding the index with pgvector's own defaults (m 16,
    ef_construction 64) instead of the collection's (Chroma's 16 / 100)."""
    conn = await asyncpg.connect(dsn)
    try:
        index = await conn.fetchval("SELECT indexname FROM pg_indexes WHERE tablename = $1 "
                                    "AND indexdef LIKE '%hnsw%'", table)
        await conn.execute(f'DROP INDEX "{index}"')
        await conn.execute(f"SET maintenance_work_mem = '{int(work_mem_mb)}MB'")  # as syncd's build had
        began = time.perf_counter()
        await conn.execute(f'CREATE INDEX "{index}" ON "{table}" USING hnsw (embedding vector_cosine_ops)')
        built = time.perf_counter() - began
    finally:
        await conn.close()
    out = await queries(dsn, table, col, data, n, seed)
    out["build_seconds"] = built
    return out


def start_daemon(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "syncd.cli", "--config", str(cfg), "run"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def streaming_lag(cfg: Path, dsn: str, table: str, col: Any, data: np.ndarray, rate: int,
                        seconds: float, batch: int) -> dict[str, Any]:
    """Upserts of existing ids with new vectors at *rate* per second, *batch* ids per Chroma call,
    while syncd streams; lag = visible in PostgreSQL minus acknowledged by Chroma, per call."""
    daemon = start_daemon(cfg)
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(3)  # daemon start-up: imports, connections, catch-up check
        interval = batch / rate
        written: list[tuple[int, list[str], float]] = []
        lock = threading.Lock()
        rng = np.random.default_rng(3)
        stop = threading.Event()
        late = [0]

        def writer() -> None:
            k = 0
            next_at = time.perf_counter()
            deadline = next_at + seconds
            try:
                while time.perf_counter() < deadline:
                    picks = rng.choice(len(data), batch, replace=False)
                    ids = [f"id{i:07d}" for i in picks]
                    noise = 0.05 * rng.standard_normal((batch, data.shape[1]))
                    col.upsert(ids=ids, embeddings=(data[picks] + noise).astype(np.float32),
                               metadatas=[{"k": k}] * batch)
                    with lock:
                        written.append((k, ids, time.perf_counter()))
                    k += 1
                    next_at += interval
                    pause = next_at - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        late[0] += 1
            finally:
                stop.set()

        thread = threading.Thread(target=writer)
        began = time.perf_counter()
        thread.start()
        lags: list[float] = []
        seen = 0
        last_visible = began
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
                last_visible = time.perf_counter()
                lags.append((last_visible - at) * 1000)
                seen += 1
            else:
                await asyncio.sleep(0.005)
        thread.join()
        offered_for = written[-1][2] - began if written else float("nan")
        achieved = len(written) * batch / offered_for
    finally:
        await conn.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return {"target_rate": rate, "items_per_call": batch, "calls": len(written),
            "calls_behind_schedule": late[0], "achieved_upserts_per_s": achieved,
            "visible_upserts_per_s": len(written) * batch / (last_visible - began),
            "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99), "max_ms": max(lags, default=float("nan"))}


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
                       f'[stream]\npoll_interval = 0.05\nbatch_size = 500\nchunk_rows = {args.chunk_rows}\n\n'
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
        ceiling = await copy_ceiling(dsn, data, args.chunk_rows)
        result["copy_ceiling_vectors_per_s"] = ceiling["records"]
        result["copy_ceiling_prebuilt_vectors_per_s"] = ceiling["payload"]
        result["snapshot"]["share_of_ceiling"] = result["snapshot"]["vectors_per_s"] / ceiling["records"]
        result["snapshot"]["share_of_prebuilt_ceiling"] = \
            result["snapshot"]["vectors_per_s"] / ceiling["payload"]
        result["queries"] = await queries(dsn, name, col, data, args.queries, seed=dim)
        if args.compare_default_build:
            result["queries_pgvector_default_build"] = await default_build(
                dsn, name, col, data, args.queries, seed=dim, work_mem_mb=index["maintenance_work_mem_mb"])
        if args.lag_seconds > 0:
            result["streaming"] = [await streaming_lag(cfg, dsn, name, col, data, rate, args.lag_seconds,
                                                       args.batch_items) for rate in args.rate]
        if args.floor_rows > 0:
            statement = VectorTable(collection_id="", collection=name, space="cosine", schema="public",
                                    name=name, dim=dim, vector_type=f"vector({dim})", created=True).upsert_sql
            result["hnsw_floor"] = await hnsw_floor(dsn, name, data, rows=args.floor_rows,
                                                    batch=args.batch_items, statement=statement)
    finally:
        chroma.send_signal(signal.SIGTERM)
        chroma.wait(timeout=60)
    return result


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| set | vectors from | snapshot vec/s | COPY ceiling vec/s: records / prebuilt | share | "
             "HNSW build s | lag p50 / p99 ms (upserts/s offered → accepted → visible) | "
             "HNSW floor rows/s (plain / syncd statement) | Chroma p50/p95 ms, recall | pgvector ef40 | "
             "pgvector ef100 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def qf(q: dict[str, Any], k: str) -> str:
        return f"{q[k]['p50_ms']:.1f}/{q[k]['p95_ms']:.1f}, {q[k]['recall_at_10']:.3f}"

    for r in results:
        q = r["queries"]
        f = r.get("hnsw_floor", {})
        lag = "; ".join(f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f} ({s['target_rate']} → "
                        f"{s['achieved_upserts_per_s']:.0f} → {s['visible_upserts_per_s']:.0f})"
                        for s in r.get("streaming", [])) or "—"
        floor = (f"{f['upsert_on_conflict_rows_per_s']:.0f} / "
                 f"{f.get('syncd_upsert_statement_rows_per_s', 0):.0f}" if f else "—")
        snap = r["snapshot"]
        lines.append(f"| {r['items']:,} × {r['dim']} | {r['vectors_from'].split(' ')[0]} | "
                     f"{snap['vectors_per_s']:,.0f} | {r['copy_ceiling_vectors_per_s']:,.0f} / "
                     f"{r['copy_ceiling_prebuilt_vectors_per_s']:,.0f} | {snap['share_of_ceiling']:.0%} / "
                     f"{snap['share_of_prebuilt_ceiling']:.0%} | {r['hnsw_build_seconds']:.1f} | {lag} | "
                     f"{floor} | "
                     f"{qf(q, 'chroma')} | {qf(q, 'pgvector_ef40')} | {qf(q, 'pgvector_ef100')} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["100000x384", "20000x1536"])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rate", type=int, nargs="+", default=[500],
                        help="upserts/s offered while streaming; several rates run one after another")
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    parser.add_argument("--batch-items", type=int, default=20,
                        help="ids per Chroma upsert call in the streaming load (rate / batch-items calls/s)")
    parser.add_argument("--floor-rows", type=int, default=2000,
                        help="upserts PostgreSQL applies alone to measure the HNSW floor (0: skip)")
    parser.add_argument("--chunk-rows", type=int, default=5000, help="syncd's stream.chunk_rows")
    parser.add_argument("--compare-default-build", action="store_true",
                        help="then rebuild the index with pgvector's defaults and query again")
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
