"""Every Chroma operation, snapshotted and streamed, read back from PostgreSQL and compared
with collection.get(): ids, documents, metadata, float32 vectors bit for bit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    ChromaServer,
    Mirror,
    assert_same,
    chroma_items,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    table_items,
    wait_until,
    write_config,
)


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def vecs(rng: np.random.Generator, n: int, dim: int = 4) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype(np.float32)


async def test_every_operation_snapshot_and_stream(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                   pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(7)
    client = chroma.client()
    l2 = collection(client, "ops_l2", "l2")
    cos = collection(client, "ops_cos", "cosine")
    mirror = Mirror()
    # before syncd: plenty of items, so that Chroma purges their log rows (vectors then come
    # from the server), with every kind of metadata value
    for col in (l2, cos):
        ids = [f"pre{i:04d}" for i in range(1200)]
        v = vecs(rng, 1200)
        col.add(ids=ids, embeddings=v, documents=[f"doc {i}" if i % 5 else None for i in range(1200)],
                metadatas=[{"n": i, "s": f"s{i}", "f": i / 7, "b": i % 2 == 0, "arr": [i, i + 1],
                            "sa": ["x", "y"]} if i % 4 else None for i in range(1200)])
        col.update(ids=ids[:50], metadatas=[{"n": None, "patched": True}] * 50)
        col.delete(ids=ids[50:60])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, chunk_rows=300)
    out = run_syncd("--config", str(cfg), "init").stdout
    assert "automatic purging turned off" in out and "created public.ops_l2" in out
    daemon = start_daemon(cfg)
    try:
        async def same() -> None:
            for col, space in ((l2, "l2"), (cos, "cosine")):
                assert_same(await table_items(pg, col.name), chroma_items(col), space=space,
                            written=mirror.vectors if space == "cosine" else None)

        await wait_until(same)
        for col in (l2, cos):
            raw = col._client  # a document-only update needs the raw API (no embedding function here)
            ids = [f"new{i}" for i in range(20)]
            v = vecs(rng, 20)
            col.add(ids=ids, embeddings=v, documents=[f"new doc {i}" for i in range(20)],
                    metadatas=[{"k": i, "grp": "a" if i < 10 else "b"} for i in range(20)])
            if col is cos:
                mirror.add(ids, v)
            # ADD of an existing id: no effect
            col.add(ids=["new0"], embeddings=vecs(rng, 1), documents=["ignored"], metadatas=[{"k": -1}])
            # UPDATE of a missing id: no effect
            col.update(ids=["ghost"], embeddings=vecs(rng, 1), metadatas=[{"k": 1}])
            # UPDATE with only metadata: vector kept, keys patched, null removes a key
            col.update(ids=["new1", "pre0100"], metadatas=[{"k": None, "extra": "e"}, {"s": None, "t": 2.5}])
            # UPDATE of the document only
            raw._update(collection_id=col.id, ids=["new2"], documents=["changed doc"])
            # UPDATE of the vector
            v3 = vecs(rng, 1)
            col.update(ids=["new3"], embeddings=v3)
            # UPSERT: new id, and existing ids (metadata patched, document kept when not given)
            v4 = vecs(rng, 3)
            col.upsert(ids=["new4", "brand-new", "pre0200"], embeddings=v4,
                       metadatas=[{"k": None, "u": 1}, {"u": 2, "gone": None}, {"n": 999}])
            # DELETE by ids (one missing), and by where: one log row per matching id
            col.delete(ids=["new5", "not-there"])
            col.delete(where={"grp": "b"})
            if col is cos:
                mirror.update(["new3"], v3)
                mirror.upsert(["new4", "brand-new", "pre0200"], v4)
                mirror.delete(["new5", *[f"new{i}" for i in range(10, 20)]])
        await wait_until(same)
        got = {r["name"]: r for r in await pg.fetch(
            "SELECT name, table_name, created, space, dimension FROM syncd.chroma_collections")}
        assert got["ops_cos"]["space"] == "cosine" and got["ops_l2"]["dimension"] == 4
        index = await pg.fetchval("SELECT indexdef FROM pg_indexes WHERE tablename = 'ops_cos' "
                                  "AND indexdef LIKE '%hnsw%'")
        assert "vector_cosine_ops" in index
        index = await pg.fetchval("SELECT indexdef FROM pg_indexes WHERE tablename = 'ops_l2' "
                                  "AND indexdef LIKE '%hnsw%'")
        assert "vector_l2_ops" in index
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    # while syncd is stopped: more changes, applied on the next run (catch-up)
    v = vecs(rng, 5)
    l2.upsert(ids=[f"late{i}" for i in range(5)], embeddings=v, documents=["late"] * 5)
    l2.update(ids=["pre0300"], metadatas=[{"b": None}])
    l2.delete(ids=["pre0400"])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert_same(await table_items(pg, "ops_l2"), chroma_items(l2), space="l2")
    status = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)["streams"]
    by_name = {s["collection"]: s for s in status}
    assert by_name["ops_l2"]["phase"] == "streaming" and by_name["ops_l2"]["rejects"] == 0
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0


async def test_mapped_columns_into_the_apps_table(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                  pg: asyncpg.Connection) -> None:
    """The seed's vector_embeddings table, made by the app's migrations: metadata keys lifted into
    typed columns, the document into `content`; items that do not fit go to the reject table."""
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute("""CREATE TABLE vector_embeddings (
        id VARCHAR(255) PRIMARY KEY, user_id VARCHAR(255) NOT NULL, document_id VARCHAR(255) NOT NULL,
        embedding vector(4) NOT NULL, content TEXT NOT NULL, created_at TIMESTAMP DEFAULT NOW())""")
    await pg.execute("CREATE INDEX idx_embedding_hnsw ON vector_embeddings "
                     "USING hnsw (embedding vector_cosine_ops)")
    rng = np.random.default_rng(3)
    client = chroma.client()
    col = collection(client, "qckstrt-embeddings", "cosine")
    mirror = Mirror()
    ids = [f"c{i}" for i in range(30)]
    v = vecs(rng, 30)
    meta: list[Any] = [{"userId": f"u{i % 3}", "documentId": f"d{i}", "chunk": i} for i in range(30)]
    meta[5] = {"documentId": "d5"}  # no userId: NOT NULL
    meta[6] = {"userId": "x" * 300, "documentId": "d6"}  # longer than varchar(255)
    col.add(ids=ids, embeddings=v, documents=[f"text {i}" for i in range(30)], metadatas=meta)
    mirror.add(ids, v)
    extra = """
[[target.collections]]
name = "qckstrt-embeddings"
table = "vector_embeddings"
columns = { user_id = "metadata.userId", document_id = "metadata.documentId", content = "document" }
"""
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=extra)
    assert "adopted public.vector_embeddings" in run_syncd("--config", str(cfg), "init").stdout
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot: c5 and c6 rejected
    col.add(ids=["c30"], embeddings=vecs(rng, 1), documents=[None],
            metadatas=[{"userId": "u", "documentId": "d"}])
    col.update(ids=["c1"], metadatas=[{"userId": "moved"}])
    col.update(ids=["c2"], metadatas=[{"documentId": None}])  # removing a NOT NULL key
    col.update(ids=["c6"], metadatas=[{"userId": "short"}])  # now it fits: copied whole, reject resolved
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    rows = {r["id"]: r for r in await pg.fetch(
        "SELECT id, user_id, document_id, content FROM vector_embeddings")}
    expect = chroma_items(col)
    assert set(rows) == set(expect) - {"c5", "c30"}
    assert rows["c6"]["user_id"] == "short"
    assert rows["c1"]["user_id"] == "moved"
    for item_id, row in rows.items():
        _, doc, found = expect[item_id]
        m: dict[str, Any] = found or {}
        assert row["content"] == doc
        assert row["user_id"] == m["userId"]
        if item_id == "c2":  # its update was rejected: the row keeps what it had
            assert row["document_id"] == "d2" and "documentId" not in m
        else:
            assert row["document_id"] == m["documentId"]
    table = await table_items(pg, "vector_embeddings", document="content", metadata=None)
    for item_id, (vec, _, _) in table.items():
        assert np.array_equal(vec.view(np.int32), mirror.vectors[item_id].view(np.int32))
    rejects = {json.loads(r["key"])[0]: r["error"] for r in await pg.fetch(
        "SELECT key::text, error FROM syncd.rejects WHERE resolved_at IS NULL")}
    assert set(rejects) == {"c5", "c30", "c2"}, rejects
    assert "user_id" in rejects["c5"] and "NOT NULL" in rejects["c5"]
    resolved = await pg.fetchval(
        "SELECT error FROM syncd.rejects WHERE key->>0 = 'c6' AND resolved_at IS NOT NULL")
    assert "longer than 255" in resolved
    assert "content" in rejects["c30"]
    assert "document_id" in rejects["c2"]
    assert await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'vector_embeddings' "
                             "AND indexdef LIKE '%hnsw%'") == 1  # the app's index is kept, no second one


async def test_dimension_mismatch_and_strict_mode(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                  pg: asyncpg.Connection) -> None:
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute("CREATE TABLE small (id text PRIMARY KEY, embedding vector(3) NOT NULL, document text, "
                     "metadata jsonb)")
    client = chroma.client()
    col = collection(client, "small", "l2")
    col.add(ids=["a", "b"], embeddings=[[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    col.add(ids=["c"], embeddings=[[1.0, 1.0, 1.0, 1.0]])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    errors = [r["error"] for r in await pg.fetch("SELECT error FROM syncd.rejects ORDER BY id")]
    assert len(errors) == 3
    assert all("4 dimensions" in e and "vector(3)" in e for e in errors), errors
    status = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)["streams"]
    assert status[0]["rejects"] == 3
    # strict mode: the stream stops at the first item it cannot write, and says which
    strict = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                          extra="").read_text().replace("[target]\n", "[target]\nstrict = true\n")
    (tmp_path / "strict.toml").write_text(strict)
    col.add(ids=["d"], embeddings=[[2.0, 2.0, 2.0, 2.0]])
    proc = run_syncd("--config", str(tmp_path / "strict.toml"), "run", "--until-caught-up", check=False)
    assert proc.returncode == 1
    assert "strict mode" in proc.stdout + proc.stderr and "'d'" in proc.stdout + proc.stderr


async def test_index_above_the_vector_limit(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                            pg: asyncpg.Connection) -> None:
    """Above 2,000 dimensions the index is on a halfvec expression (the data stays float32);
    above 4,000 there is none, and the data is still copied bit for bit. The index is built
    with the collection's own HNSW settings (Chroma's defaults when it names none)."""
    rng = np.random.default_rng(9)
    client = chroma.client()
    tuned = client.create_collection("tuned", embedding_function=None, configuration={
        "hnsw": {"space": "cosine", "ef_construction": 150, "max_neighbors": 24, "ef_search": 120}})
    tuned.add(ids=["a", "b", "c"], embeddings=rng.standard_normal((3, 8)).astype(np.float32))
    wide = collection(client, "wide", "ip")
    wide.add(ids=["a", "b", "c"], embeddings=rng.standard_normal((3, 2048)).astype(np.float32))
    huge = collection(client, "huge", "l2")
    huge.add(ids=["a", "b"], embeddings=rng.standard_normal((2, 4500)).astype(np.float32))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "pgvector indexes at most 4,000 dimensions" in proc.stderr
    for col, space in ((wide, "ip"), (huge, "l2")):
        assert_same(await table_items(pg, col.name), chroma_items(col), space=space)
    index = await pg.fetchval("SELECT indexdef FROM pg_indexes WHERE tablename = 'wide' "
                              "AND indexdef LIKE '%hnsw%'")
    assert "halfvec(2048)" in index and "halfvec_ip_ops" in index
    assert "m='16', ef_construction='100'" in index, index
    index = await pg.fetchval("SELECT indexdef FROM pg_indexes WHERE tablename = 'tuned' "
                              "AND indexdef LIKE '%hnsw%'")
    assert "vector_cosine_ops" in index and "m='24', ef_construction='150'" in index, index
    assert not await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'huge' "
                                 "AND indexdef LIKE '%hnsw%'")
