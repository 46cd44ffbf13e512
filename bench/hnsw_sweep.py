"""Recall@10 / latency of pgvector's HNSW over build settings and ``hnsw.ef_search``, on the
100k × 384-d table that ``bench.chroma_bench --after-init`` leaves in ``bench/out/chroma``.

    python -m bench.chroma_bench --sets 100000x384 --after-init --lag-seconds 0 --floor-rows 0
    python -m bench.hnsw_sweep                     # results: bench/out/chroma/hnsw_sweep.json

The same 200 queries (items plus noise) and exact top 10 as ``chroma_bench.queries``; the
index is rebuilt for each build setting with the ``maintenance_work_mem`` syncd gave it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from bench import pg as bench_pg
from bench.chroma_bench import OUT, dataset

TABLE = "bench_100k_384_log"
BUILDS = ((16, 100), (16, 64))  # Chroma's defaults (what syncd builds) / pgvector's defaults
EF_SEARCH = (40, 100, 200, 400)


async def main() -> None:
    server = bench_pg.start(OUT / "pgdata", fresh=False)
    n, dim = 100_000, 384
    data = dataset(n, dim, seed=n + dim)
    rng = np.random.default_rng(dim)
    queries = (data[rng.integers(0, n, 200)] + 0.1 * rng.standard_normal((200, dim))).astype(np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.array([f"id{i:07d}" for i in range(n)])
    exact = [set(ids[np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10]]) for q in queries]
    conn = await asyncpg.connect(server.dsn(TABLE))
    out: dict[str, dict[str, float]] = {}
    try:
        await register_vector(conn)
        for m, efc in BUILDS:
            index = await conn.fetchval("SELECT indexname FROM pg_indexes WHERE tablename = $1 "
                                        "AND indexdef LIKE '%hnsw%'", TABLE)
            await conn.execute(f'DROP INDEX "{index}"')
            await conn.execute("SET maintenance_work_mem = '222MB'")
            began = time.perf_counter()
            await conn.execute(f'CREATE INDEX "{index}" ON {TABLE} USING hnsw (embedding vector_cosine_ops) '
                               f"WITH (m = {m}, ef_construction = {efc})")
            built = time.perf_counter() - began
            for ef in EF_SEARCH:
                await conn.execute(f"SET hnsw.ef_search = {ef}")
                stmt = await conn.prepare(f"SELECT id FROM {TABLE} ORDER BY embedding <=> $1 LIMIT 10")
                lat, rec = [], []
                for q, truth in zip(queries, exact, strict=True):
                    t = time.perf_counter()
                    got = {r["id"] for r in await stmt.fetch(q)}
                    lat.append((time.perf_counter() - t) * 1000)
                    rec.append(len(truth & got) / 10)
                key = f"m{m}_efc{efc}_ef{ef}"
                out[key] = {"recall_at_10": statistics.mean(rec), "p50_ms": statistics.median(lat),
                            "p95_ms": float(np.percentile(lat, 95)), "build_seconds": built}
                print(key, json.dumps(out[key]), flush=True)
    finally:
        await conn.close()
    (OUT / "hnsw_sweep.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
