"""`syncd verify` for Chroma collections: a real Chroma server on a temp persist directory, a
real pgvector, the target brought into sync by `syncd run --until-caught-up`, then single
differences made behind syncd's back (in PostgreSQL, with SQL) and found by id."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from syncd import config as config_mod
from syncd.verify.report import Report, render
from syncd.verify.run import CollectionOptions, verify
from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    ChromaServer,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    wait_streaming,
    write_config,
)

MAPPED = """
[[target.collections]]
name = "docs"
table = "doc_vectors"
[target.collections.columns]
id = "id"
embedding = "embedding"
content = "document"
meta = "metadata"
user_id = "metadata.userId"
rank = "metadata.rank"
"""


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def vecs(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype(np.float32)


def fill(col: Any, rng: np.random.Generator, n: int, dim: int, prefix: str = "id") -> None:
    for start in range(0, n, 500):
        ids = [f"{prefix}{i:05d}" for i in range(start, min(n, start + 500))]
        col.add(ids=ids, embeddings=vecs(rng, len(ids), dim),
                documents=[f"document {i}" if i % 7 else None for i in range(len(ids))],
                metadatas=[{"userId": f"u{i % 13}", "rank": i, "color": ["red", "blue"][i % 2],
                            "score": i / 3} if i % 5 else None for i in range(len(ids))])


def found(report: Report, name: str) -> list[tuple[list[Any], str, list[str]]]:
    return [(d.key, d.kind, d.columns) for c in report.checks if c.name == name and c.kind == "collection"
            for d in c.differences]


def check(report: Report, kind: str, name: str) -> Any:
    return next(c for c in report.checks if c.kind == kind and c.name == name)


async def test_equal_then_each_single_difference(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                 pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(5)
    client = chroma.client()
    docs, notes, wrong = (collection(client, "docs", "cosine"), collection(client, "notes", "l2"),
                          collection(client, "wrongdim", "l2"))
    fill(docs, rng, 1200, 16)
    fill(notes, rng, 300, 8)
    fill(wrong, rng, 20, 4)
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute("CREATE TABLE wrongdim (id text PRIMARY KEY, embedding vector(3) NOT NULL, "
                     "document text, metadata jsonb)")
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=MAPPED, chunk_rows=400)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=180)
    config = config_mod.load(cfg)

    # equal: the command line, both collections, a search parity line with recall numbers
    proc = run_syncd("--config", str(cfg), "verify", "--collection", "docs", "--collection", "notes",
                     check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("✓ collection docs") and "1,200 items" in lines[0], lines
    assert lines[1].startswith("✓ search     docs") and "recall@10 pgvector vs exact" in lines[1], lines
    assert lines[2].startswith("✓ collection notes") and "300 items" in lines[2], lines
    assert lines[-1].startswith("everything matches (full verify")
    as_json = json.loads(run_syncd("--config", str(cfg), "verify", "--json", "--collection", "docs",
                                   "--sample-size", "5", "--k", "5").stdout)
    search = next(c for c in as_json["checks"] if c["kind"] == "search")["search"]
    assert search["queries"] == 5 and search["k"] == 5 and search["operator"] == "<=>"
    assert search["recall_pgvector_vs_exact"] >= 0.9 and 0 <= search["recall_chroma_vs_exact"] <= 1
    assert search["chroma_ms_p95"] >= search["chroma_ms_p50"] > 0

    # counts mode (the cutover preflight) includes the collections
    counts = await verify(config, pg_dsn, mode="counts", collections=["docs", "notes"])
    assert counts.ok and [(c.kind, c.source_rows, c.target_rows) for c in counts.checks] == [
        ("collection", 1200, 1200), ("collection", 300, 300)]

    # wrong dimension: a clear ✗ naming both dimensions, items listed as rejected
    bad = await verify(config, pg_dsn, collections=["wrongdim"], collection_options=CollectionOptions(
        sample_size=0))
    wd = check(bad, "collection", "wrongdim")
    assert not bad.ok and wd.status == "differ", render(bad)
    assert "4-dimensional" in wd.problems[0] and "vector(3)" in wd.problems[0]
    assert len(wd.rejected) == 20 and all(r.recorded for r in wd.rejected)

    opts = CollectionOptions(sample_size=0, settle_seconds=10)
    damage = [
        ("notes", "DELETE FROM notes WHERE id = 'id00007'", "id00007", "missing", []),
        ("notes", "INSERT INTO notes VALUES ('zz-extra', '[1,2,3,4,5,6,7,8]', 'x', NULL)", "zz-extra",
         "extra", []),
        ("notes", "UPDATE notes SET embedding = (SELECT array_agg(CASE WHEN i = 3 THEN x + 0.001 ELSE x END "
         "ORDER BY i)::real[]::vector FROM unnest(embedding::real[]) WITH ORDINALITY u(x, i)) "
         "WHERE id = 'id00042'", "id00042", "changed", ["embedding"]),
        ("notes", "UPDATE notes SET document = document || '!' WHERE id = 'id00043'", "id00043", "changed",
         ["document"]),
        ("notes", "UPDATE notes SET metadata = jsonb_set(metadata, '{color}', '\"green\"') "
         "WHERE id = 'id00044'", "id00044", "changed", ["metadata.color"]),
        ("notes", "UPDATE notes SET metadata = metadata - 'score' WHERE id = 'id00046'", "id00046", "changed",
         ["metadata.score"]),
        ("doc_vectors", "UPDATE doc_vectors SET user_id = 'someone' WHERE id = 'id00001'", "id00001",
         "changed", ["metadata.userId"]),
        ("doc_vectors", "UPDATE doc_vectors SET rank = NULL WHERE id = 'id00002'", "id00002", "changed",
         ["metadata.rank"]),
    ]
    for table, harm, key, kind, columns in damage:
        name = "docs" if table == "doc_vectors" else table
        await pg.execute(f"CREATE TEMP TABLE saved AS SELECT * FROM {table} WHERE id = $1", key)
        await pg.execute(harm)
        report = await verify(config, pg_dsn, collections=[name], collection_options=opts)
        assert found(report, name) == [([key], kind, columns)], (harm, render(report))
        assert not report.ok and check(report, "collection", name).status == "differ"
        if kind == "changed" and columns == ["embedding"]:
            note = check(report, "collection", name).differences[0].detail
            assert "1 of 8 components differ: [2] " in note and "in Chroma" in note, note
        await pg.execute(f"DELETE FROM {table} WHERE id = $1; INSERT INTO {table} SELECT * FROM saved; "
                         "DROP TABLE saved".replace("$1", f"'{key}'"))
    again = await verify(config, pg_dsn, collections=["docs", "notes"], collection_options=opts)
    assert again.ok, "\n".join(render(again))


def writer(col: Any, dim: int, stop: threading.Event, counter: list[int]) -> None:
    rng = np.random.default_rng(11)
    n = 0
    while not stop.is_set():
        i = int(rng.integers(0, 400))
        kind = n % 4
        if kind == 0:
            col.upsert(ids=[f"live{n:06d}"], embeddings=vecs(rng, 1, dim), documents=[f"live {n}"],
                       metadatas=[{"n": n}])
        elif kind == 1:
            col.update(ids=[f"id{i:05d}"], embeddings=vecs(rng, 1, dim), metadatas=[{"touched": n}])
        elif kind == 2:
            col.update(ids=[f"id{i:05d}"], metadatas=[{"touched": n, "color": None}])
        else:
            col.delete(ids=[f"live{n - 3:06d}"])
        n += 1
        counter[0] = n
        time.sleep(0.005)


async def test_verify_during_a_live_chroma_workload_reports_no_false_difference(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(9)
    col = collection(chroma.client(), "live", "l2")
    fill(col, rng, 800, 8)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, batch_size=200)
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=writer, args=(col, 8, stop, counter), daemon=True)
    try:
        await wait_streaming(pg, 1)
        thread.start()
        while counter[0] < 100:
            await asyncio.sleep(0.1)
        await pg.execute("UPDATE live SET document = 'tampered' WHERE id = 'id00500'")  # one real difference
        started = counter[0]
        proc = await asyncio.to_thread(run_syncd, "--config", str(cfg), "verify", "--json",
                                       "--sample-size", "5", timeout=180, check=False)
        counts = await asyncio.to_thread(run_syncd, "--config", str(cfg), "verify", "--json", "--counts",
                                         timeout=180, check=False)
        during = counter[0] - started
        # small pages: a scan that lasts while hundreds of writes land, all of them settled
        before = counter[0]
        paged = await verify(config_mod.load(cfg), pg_dsn, collection_options=CollectionOptions(
            page_rows=10, sample_size=0))
        paged_during = counter[0] - before
        assert daemon.poll() is None, "the daemon stopped"
    finally:
        stop.set()
        thread.join(timeout=30)
        stop_daemon(daemon)
    report = json.loads(proc.stdout)
    assert during > 30, "the writer should have kept writing while verify ran"
    live = next(c for c in report["checks"] if c["kind"] == "collection")
    assert [(d["key"], d["kind"], d["columns"]) for d in live["differences"]] == [
        (["id00500"], "changed", ["document"])], json.dumps(live)[:3000]
    assert live["status"] == "differ" and not live["rejected"] and proc.returncode == 1
    search = next(c for c in report["checks"] if c["kind"] == "search")
    assert search["status"] == "match", search
    assert paged_during > 20, paged_during
    assert found(paged, "live") == [(["id00500"], "changed", ["document"])], "\n".join(render(paged))
    assert not check(paged, "collection", "live").rejected
    counted = json.loads(counts.stdout)
    assert counts.returncode == 0 and counted["ok"], json.dumps(counted)[:3000]
