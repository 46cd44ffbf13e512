"""The seed apps' own vector tables: qckstrt's `vector_embeddings` created by syncd from the seed's
DDL exactly, and a vector index the operator made (ivfflat or HNSW, any operator class) adopted
instead of a second one — through the real command line, compared as PostgreSQL reports it."""

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
    chroma_items,
    collection,
    run_chroma,
    table_items,
    write_config,
)

SEEDS = Path(__file__).resolve().parents[2] / "fixtures" / "seeds"
QCKSTRT_DDL = (SEEDS / "qckstrt" / "vector_embeddings.sql").read_text()
# Signal Hub's vector index statement, verbatim from seed 003 (line 113), on a table of one collection
SIGNAL_HUB_INDEX = ("CREATE INDEX idx_embeddings_vector ON embeddings "
                    "USING ivfflat (embedding vector_cosine_ops);")


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def toml_string(text: str) -> str:
    return json.dumps(text)


async def shape(pg: asyncpg.Connection, schema: str, table: str) -> dict[str, Any]:
    """The table as PostgreSQL reports it: columns, constraints, indexes, storage parameters."""
    columns = [dict(r) for r in await pg.fetch(
        """SELECT column_name, data_type, udt_name, character_maximum_length, is_nullable,
                  column_default, collation_name,
                  (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                   WHERE a.attrelid = format('%I.%I', c.table_schema, c.table_name)::regclass
                   AND a.attname = c.column_name) AS full_type
           FROM information_schema.columns c WHERE table_schema = $1 AND table_name = $2
           ORDER BY ordinal_position""", schema, table)]
    constraints = sorted((r["constraint_type"], r["column_name"]) for r in await pg.fetch(
        """SELECT t.constraint_type, k.column_name FROM information_schema.table_constraints t
           JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)
           WHERE t.table_schema = $1 AND t.table_name = $2""", schema, table))
    indexes = sorted(r["indexdef"].replace(f"{schema}.", "SCHEMA.") for r in await pg.fetch(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 AND indexname NOT LIKE "
        "'%_pkey'", schema, table))
    options = await pg.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = format('%I.%I', $1::text, $2::text)::regclass",
        schema, table)
    return {"columns": columns, "constraints": constraints, "indexes": indexes, "reloptions": options}


async def vector_indexes(pg: asyncpg.Connection, table: str) -> list[str]:
    return [r["indexname"] for r in await pg.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = $1 AND "
        "(indexdef LIKE '%USING hnsw%' OR indexdef LIKE '%USING ivfflat%')", table)]


QCKSTRT_MAPPING = """
[[target.collections]]
name = "qckstrt-embeddings"
table = "vector_embeddings"
columns = {{ user_id = "metadata.userId", document_id = "metadata.documentId", content = "document" }}
create = {ddl}
"""


async def test_qckstrt_table_is_created_as_the_seed_ddl(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                        pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(15)
    col = collection(chroma.client(), "qckstrt-embeddings", "cosine")
    n = 60
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    ids = [f"chunk-{i}" for i in range(n)]
    col.add(ids=ids, embeddings=vectors, documents=[f"chunk text {i}" for i in range(n)],
            metadatas=[{"userId": f"user-{i % 4}", "documentId": f"doc-{i // 6}"} for i in range(n)])
    extra = QCKSTRT_MAPPING.format(ddl=toml_string(QCKSTRT_DDL))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=extra)
    assert "created public.vector_embeddings" in run_syncd("--config", str(cfg), "init").stdout
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    # the seed's DDL itself, run by the test in a schema of its own, is the reference
    await pg.execute("CREATE SCHEMA seed")
    async with pg.transaction():
        await pg.execute("SET LOCAL search_path = seed, public")
        await pg.execute(QCKSTRT_DDL)
    made, seed = await shape(pg, "public", "vector_embeddings"), await shape(pg, "seed", "vector_embeddings")
    assert made == seed
    assert seed["indexes"] == ["CREATE INDEX idx_embedding_hnsw ON SCHEMA.vector_embeddings USING hnsw "
                               "(embedding vector_cosine_ops)"]
    assert await vector_indexes(pg, "vector_embeddings") == ["idx_embedding_hnsw"] * 2  # public and seed

    # the rows, read back and compared with Chroma; created_at filled by the table's default
    table = await table_items(pg, "vector_embeddings", document="content", metadata=None)
    items = chroma_items(col)
    assert set(table) == set(items)
    for item_id, (_, doc, meta) in items.items():
        assert table[item_id][1] == doc
        assert np.array_equal(table[item_id][0].view(np.int32),
                              vectors[ids.index(item_id)].view(np.int32))
        row = await pg.fetchrow(
            "SELECT user_id, document_id, created_at FROM vector_embeddings WHERE id = $1", item_id)
        assert meta is not None
        assert (row["user_id"], row["document_id"]) == (meta["userId"], meta["documentId"])
        assert row["created_at"] is not None
    # the seed's "Step 6: Verify" similarity query, through the table's own HNSW index
    query = "[" + ", ".join(repr(float(x)) for x in vectors[7]) + "]"
    async with pg.transaction():
        await pg.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await pg.fetch(
            f"EXPLAIN SELECT id, content, embedding <=> '{query}'::vector AS distance FROM vector_embeddings "
            f"ORDER BY embedding <=> '{query}'::vector LIMIT 5"))
        top = await pg.fetch(f"SELECT id, content, embedding <=> '{query}'::vector AS distance "
                             f"FROM vector_embeddings ORDER BY embedding <=> '{query}'::vector LIMIT 5")
    assert "idx_embedding_hnsw" in plan, plan
    assert top[0]["id"] == "chunk-7" and top[0]["content"] == "chunk text 7" and len(top) == 5


def chunks_ddl(dim: int, index: str) -> str:
    return (f"CREATE TABLE embeddings (id text PRIMARY KEY, embedding vector({dim}) NOT NULL, "
            f"document text, metadata jsonb);\n{index}")


CHUNKS_MAPPING = """
[[target.collections]]
name = "chunks"
table = "embeddings"
"""


async def test_an_ivfflat_index_of_the_app_is_adopted(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                      pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(16)
    col = collection(chroma.client(), "chunks", "cosine")
    col.add(ids=[f"c{i}" for i in range(300)], embeddings=rng.standard_normal((300, 16)).astype(np.float32),
            documents=[f"text {i}" for i in range(300)])
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute(chunks_ddl(16, SIGNAL_HUB_INDEX))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=CHUNKS_MAPPING)
    out = run_syncd("--config", str(cfg), "init").stdout
    assert ("adopted public.embeddings (vector(16), cosine); vector index idx_embeddings_vector (ivfflat, "
            "vector_cosine_ops: cosine distance) kept") in out, out
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await vector_indexes(pg, "embeddings") == ["idx_embeddings_vector"]
    assert len(await table_items(pg, "embeddings")) == 300

    proc = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    search = next(c for c in report["checks"] if c["kind"] == "search")
    assert search["status"] == "match", search
    numbers = search["search"]
    assert (numbers["index"], numbers["index_method"], numbers["operator"]) == (
        "idx_embeddings_vector", "ivfflat", "<=>")
    assert numbers["ivfflat_probes"] == 100 and numbers["recall_pgvector_vs_exact"] == 1.0
    text = run_syncd("--config", str(cfg), "verify", check=False).stdout
    assert "index idx_embeddings_vector: ivfflat <=>" in text, text


async def test_an_index_of_another_distance_is_kept_and_named(tmp_path: Path, chroma: ChromaServer,
                                                              pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(17)
    col = collection(chroma.client(), "chunks", "cosine")
    col.add(ids=[f"c{i}" for i in range(50)], embeddings=rng.standard_normal((50, 8)).astype(np.float32))
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute(chunks_ddl(8, "CREATE INDEX chunks_l2 ON embeddings "
                                   "USING hnsw (embedding vector_l2_ops)"))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=CHUNKS_MAPPING)
    proc = run_syncd("--config", str(cfg), "init")
    warnings = [line for line in proc.stderr.splitlines() if "does not rank" in line]
    assert len(warnings) == 1, proc.stderr
    assert "chunks_l2 (hnsw, vector_l2_ops: L2 distance)" in warnings[0]
    assert "vector_cosine_ops" in warnings[0] and "drop chunks_l2" in warnings[0]
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await vector_indexes(pg, "embeddings") == ["chunks_l2"]
    proc = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    search = next(c for c in json.loads(proc.stdout)["checks"] if c["kind"] == "search")
    assert search["search"]["operator"] == "<->" and search["search"]["recall_pgvector_vs_exact"] >= 0.9
    assert "ranks by L2 distance, the collection by cosine" in search["detail"], search


@pytest.mark.parametrize("ddl, needle", [
    ("CREATE TABLE other (id text PRIMARY KEY)", "created no table public.embeddings"),
    ("CREATE TABLE embeddings (id text PRIMARY KEY, embedding vector(4) NOT NULL,", "refused the DDL"),
])
async def test_a_create_that_does_not_make_the_table_is_one_line(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection, ddl: str,
        needle: str) -> None:
    col = collection(chroma.client(), "chunks", "cosine")
    col.add(ids=["a"], embeddings=[[1.0, 0.0, 0.0, 0.0]])
    extra = CHUNKS_MAPPING + f"create = {toml_string(ddl)}\n"
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=extra)
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "target.collections[0].create" in lines[0], lines
    assert await pg.fetchval("SELECT to_regclass('public.other')") is None  # nothing of it kept
