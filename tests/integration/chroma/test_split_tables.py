"""One collection, two tables: Signal Hub's `documents` + `embeddings` (the seed's own DDL, run by
syncd from `create`), through the real command line — copied, streamed, checked by `verify`, and
back to Chroma after a cutover, every store read back by the test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    COSINE_ULPS,
    ChromaServer,
    chroma_items,
    collection,
    run_chroma,
    ulps,
    wait_until,
    write_config,
)
from tests.integration.cutover.test_reverse_chroma import app_conn, drained, forward, reverse_running

SEEDS = Path(__file__).resolve().parents[2] / "fixtures" / "seeds"
SCHEMA = (SEEDS / "signal-hub" / "schema.sql").read_text()
DIM = 1536
MAPPING = """
[[target.collections]]
name = "signal-hub"
table = "embeddings"
documents = "documents"
columns = {{ content = "document", file_path = "metadata.file_path", chunk_index = "metadata.chunk_index", \
start_line = "metadata.start_line", end_line = "metadata.end_line", language = "metadata.language", \
model = "metadata.model" }}
create = {ddl}
"""


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def chunk(i: int, path: str | None = None) -> dict[str, Any]:
    return {"file_path": path or f"src/mod{i // 4}.py", "chunk_index": i % 4, "start_line": 1 + 20 * (i % 4),
            "end_line": 20 + 20 * (i % 4), "language": "python", "model": "text-embedding-3-small",
            "repo": "signal-hub"}


def key_of(item_id: str) -> uuid.UUID:
    """The documents key the test expects for a Chroma id (its own statement of the rule)."""
    try:
        if str(uuid.UUID(item_id)) == item_id:
            return uuid.UUID(item_id)
    except ValueError:
        pass
    return uuid.uuid5(uuid.UUID("6f0b5c2e-9a57-5d3c-8e41-73796e636430"), item_id)


async def pg_items(pg: asyncpg.Connection) -> dict[uuid.UUID, dict[str, Any]]:
    rows = await pg.fetch(
        """SELECT d.id, d.file_path, d.content, d.chunk_index, d.start_line, d.end_line, d.language,
                  d.metadata::text AS metadata, d.created_at, e.id AS eid, e.embedding::text AS embedding,
                  e.model FROM documents d JOIN embeddings e ON e.document_id = d.id""")
    return {r["id"]: dict(r) for r in rows}


def vector_of(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32)


def check_row(row: dict[str, Any], doc: str | None, meta: dict[str, Any], vector: np.ndarray) -> None:
    assert row["content"] == doc
    assert (row["file_path"], row["chunk_index"], row["start_line"], row["end_line"], row["language"],
            row["model"]) == (meta["file_path"], meta["chunk_index"], meta["start_line"], meta["end_line"],
                              meta["language"], meta["model"])
    assert json.loads(row["metadata"]) == {"repo": meta["repo"]}
    assert np.array_equal(vector_of(row["embedding"]).view(np.int32), vector.view(np.int32))
    assert row["created_at"] is not None


async def test_a_collection_split_over_signal_hubs_two_tables(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(3)
    col = collection(chroma.client(), "signal-hub", "cosine")
    n = 24
    ids = [f"src/mod{i // 4}.py#{i % 4}" for i in range(n)]
    ids[5] = str(uuid.UUID(int=5))  # an id that is a UUID already: the key itself
    vectors = rng.standard_normal((n + 1, DIM)).astype(np.float32)
    col.add(ids=ids, embeddings=vectors[:n], documents=[f"def f{i}(): pass" for i in range(n)],
            metadatas=[chunk(i) for i in range(n)])
    # a chunk whose (file_path, chunk_index) another item has: UNIQUE refuses it, quarantined
    col.add(ids=["zz-dup"], embeddings=vectors[n:], documents=["dup"], metadatas=[chunk(0)])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                       extra=MAPPING.format(ddl=json.dumps(SCHEMA)))
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    rows = await pg_items(pg)
    assert set(rows) == {key_of(i) for i in ids}
    for i, item_id in enumerate(ids):
        row = rows[key_of(item_id)]
        check_row(row, f"def f{i}(): pass", chunk(i), vectors[i])
        assert row["eid"] == row["id"]
    rejects = await pg.fetch("SELECT key::text, error FROM syncd.rejects")
    assert [json.loads(r["key"]) for r in rejects] == [["zz-dup"]], rejects
    assert "file_path" in rejects[0]["error"] or "unique" in rejects[0]["error"].lower()
    # the seed's own search function, through the ivfflat index the seed's DDL made
    hit = await pg.fetchrow("SELECT * FROM search_similar($1::vector, 1, 0.0)",
                            "[" + ",".join(repr(float(x)) for x in vectors[7]) + "]")
    assert hit["document_id"] == key_of(ids[7]) and hit["content"] == "def f7(): pass"
    assert await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'embeddings' "
                             "AND indexdef LIKE '%ivfflat%'") == 1

    verify = run_syncd("--config", str(cfg), "verify", check=False)
    assert verify.returncode == 5, verify.stdout + verify.stderr  # equal but for the one quarantined item
    assert "1 row" in verify.stdout or "quarantined" in verify.stdout, verify.stdout

    # a change in the stored row that Chroma does not have: verify sees it
    await pg.execute("UPDATE documents SET content = 'changed' WHERE id = $1", key_of(ids[3]))
    differs = run_syncd("--config", str(cfg), "verify", check=False)
    assert differs.returncode not in (0, 5), differs.stdout
    assert ids[3] in differs.stdout, differs.stdout
    await pg.execute("UPDATE documents SET content = $2 WHERE id = $1", key_of(ids[3]), "def f3(): pass")

    # streamed: an update of metadata and document, a delete, an upsert of a new id
    col.update(ids=[ids[1]], embeddings=vectors[1:2], documents=["def g(): return 1"],
               metadatas=[{**chunk(1), "language": "py3"}])
    col.delete(ids=[ids[2]])
    col.upsert(ids=["notes.md#0"], embeddings=vectors[n:], documents=["# notes"],
               metadatas=[chunk(0, path="notes.md")])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    rows = await pg_items(pg)
    assert key_of(ids[2]) not in rows
    assert await pg.fetchval("SELECT count(*) FROM embeddings WHERE document_id = $1", key_of(ids[2])) == 0
    check_row(rows[key_of(ids[1])], "def g(): return 1", {**chunk(1), "language": "py3"}, vectors[1])
    check_row(rows[key_of("notes.md#0")], "# notes", chunk(0, path="notes.md"), vectors[n])
    items = chroma_items(col)
    assert len(rows) == len(items) - 1  # all but "zz-dup"
    verify = run_syncd("--config", str(cfg), "verify", check=False)
    assert verify.returncode == 5, verify.stdout + verify.stderr

    # a document without its embedding row is in no Chroma item: verify says so
    await pg.execute("INSERT INTO documents (file_path, content, chunk_index) VALUES ('lone.py', 'x', 0)")
    lone = run_syncd("--config", str(cfg), "verify", check=False)
    assert lone.returncode not in (0, 5), lone.stdout
    assert "public.documents: 1 rows have no embeddings row" in lone.stdout, lone.stdout


async def test_the_apps_writes_to_both_tables_reach_chroma(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                           pg: asyncpg.Connection) -> None:
    """After the cutover Signal Hub writes its two tables itself; each item reaches Chroma whole,
    under its Chroma id (the original one for copied items, the UUID's text for new ones)."""
    rng = np.random.default_rng(4)
    col = collection(chroma.client(), "signal-hub", "cosine")
    n = 8
    ids = [f"src/mod{i // 4}.py#{i % 4}" for i in range(n)]
    vectors = rng.standard_normal((n + 4, DIM)).astype(np.float32)
    col.add(ids=ids, embeddings=vectors[:n], documents=[f"chunk {i}" for i in range(n)],
            metadatas=[chunk(i) for i in range(n)])
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                           extra=MAPPING.format(ddl=json.dumps(SCHEMA)))
    app = await app_conn(pg_dsn)
    try:
        # a new chunk as Signal Hub writes one: the document, then its embedding
        async with app.transaction():
            new = await app.fetchval(
                "INSERT INTO documents (file_path, content, chunk_index, start_line, end_line, language, "
                "metadata) VALUES ('new.py', 'def new(): pass', 0, 1, 3, 'python', $1::jsonb) RETURNING id",
                '{"repo": "signal-hub"}')
            await app.execute("INSERT INTO embeddings (document_id, embedding, model) VALUES ($1, $2, $3)",
                              new, vectors[n], "text-embedding-3-small")
        # a document with no embedding yet is no Chroma item
        lone = await app.fetchval("INSERT INTO documents (file_path, content, chunk_index) "
                                  "VALUES ('lone.py', 'x', 0) RETURNING id")
        await app.execute("UPDATE documents SET content = 'edited', metadata = $2::jsonb WHERE id = $1",
                          key_of(ids[1]), '{"repo": "r2"}')
        await app.execute("UPDATE embeddings SET embedding = $2 WHERE document_id = $1", key_of(ids[2]),
                          vectors[n + 1])
        await app.execute("DELETE FROM documents WHERE id = $1", key_of(ids[3]))  # cascades to its embedding
    finally:
        await app.close()
    async with reverse_running(config, pg_dsn):
        await wait_until(lambda: drained(config, pg))
    stored = await pg.fetchval("SELECT embedding::text FROM embeddings WHERE document_id = $1", new)
    assert np.array_equal(vector_of(stored).view(np.int32), vectors[n].view(np.int32)), "stored"
    logged = await pg.fetchval("SELECT row->>'embedding' FROM syncd.changelog WHERE row->>'id' = $1",
                               str(new))
    assert np.array_equal(vector_of(logged).view(np.int32), vectors[n].view(np.int32)), "logged"
    assert (await pg.fetchval("SELECT pk::text FROM syncd.changelog WHERE row->>'id' = $1",
                              str(key_of(ids[1])))) == json.dumps([ids[1]])  # under its Chroma id
    items = chroma_items(col)
    assert set(items) == (set(ids) - {ids[3]}) | {str(new)}
    assert str(lone) not in items
    vec, doc, meta = items[str(new)]
    # Chroma's get() of a cosine collection returns vectors within a few ulps of what was written
    # (tests/integration/chroma_support.py, COSINE_ULPS); PostgreSQL's side is checked bit for bit above
    assert doc == "def new(): pass" and ulps(vec, vectors[n]) <= COSINE_ULPS
    assert meta == {"file_path": "new.py", "chunk_index": 0, "start_line": 1, "end_line": 3,
                    "language": "python", "model": "text-embedding-3-small", "repo": "signal-hub"}
    assert items[ids[1]][1] == "edited" and items[ids[1]][2] == {**chunk(1), "repo": "r2"}
    assert ulps(items[ids[2]][0], vectors[n + 1]) <= COSINE_ULPS
    assert items[ids[0]][1] == "chunk 0" and items[ids[0]][2] == chunk(0)


async def test_a_column_filled_with_a_constant(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                               pg: asyncpg.Connection) -> None:
    """`constants = { model = … }`: every item's row holds the value, verify expects it, and the
    way back gives Chroma no such metadata key."""
    rng = np.random.default_rng(5)
    col = collection(chroma.client(), "signal-hub", "cosine")
    ids = [f"src/mod0.py#{i}" for i in range(4)]
    vectors = rng.standard_normal((5, DIM)).astype(np.float32)
    metas = [{k: v for k, v in chunk(i).items() if k != "model"} for i in range(4)]
    col.add(ids=ids, embeddings=vectors[:4], documents=[f"chunk {i}" for i in range(4)], metadatas=metas)
    mapping = MAPPING.replace(', model = "metadata.model" }}', ' }}\nconstants = {{ model = "ada-002" }}')
    assert 'constants = {{ model = "ada-002" }}' in mapping
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                           extra=mapping.format(ddl=json.dumps(SCHEMA)))
    assert [r["model"] for r in await pg.fetch("SELECT model FROM embeddings")] == ["ada-002"] * 4
    cfg = tmp_path / "syncd.toml"
    assert run_syncd("--config", str(cfg), "verify", check=False).returncode == 0
    await pg.execute("UPDATE embeddings SET model = 'other' WHERE document_id = $1", key_of(ids[2]))
    differs = run_syncd("--config", str(cfg), "verify", check=False)
    assert differs.returncode not in (0, 5) and ids[2] in differs.stdout, differs.stdout
    app = await app_conn(pg_dsn)
    try:
        await app.execute("UPDATE documents SET content = 'edited' WHERE id = $1", key_of(ids[1]))
    finally:
        await app.close()
    async with reverse_running(config, pg_dsn):
        await wait_until(lambda: drained(config, pg))
    items = chroma_items(col)
    assert items[ids[1]][1] == "edited" and items[ids[1]][2] == metas[1]  # no "model" key added


async def test_the_apps_migration_after_the_cutover(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                    pg: asyncpg.Connection) -> None:
    """PostgreSQL refuses to drop a column syncd's view shows; the migration drops the view in its own
    transaction (docs/mapping.md). The app's writes are captured meanwhile, and the reverse stream
    makes the view again from the new columns."""
    rng = np.random.default_rng(6)
    col = collection(chroma.client(), "signal-hub", "cosine")
    ids = [f"src/mod0.py#{i}" for i in range(3)]
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    col.add(ids=ids, embeddings=vectors[:3], documents=[f"chunk {i}" for i in range(3)],
            metadatas=[chunk(i) for i in range(3)])
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                           extra=MAPPING.format(ddl=json.dumps(SCHEMA)))
    app = await app_conn(pg_dsn)
    try:
        with pytest.raises(asyncpg.exceptions.DependentObjectsStillExistError, match="items_embeddings"):
            await app.execute("ALTER TABLE documents DROP COLUMN updated_at")
        async with app.transaction():
            await app.execute("DROP VIEW syncd.items_embeddings")
            await app.execute("ALTER TABLE documents DROP COLUMN updated_at")
            await app.execute("ALTER TABLE documents ADD COLUMN author text")
        await app.execute("UPDATE documents SET content = 'after', author = 'ann' WHERE id = $1",
                          key_of(ids[0]))
        async with app.transaction():
            new = await app.fetchval("INSERT INTO documents (file_path, content, chunk_index) "
                                     "VALUES ('n.py', 'new', 0) RETURNING id")
            await app.execute("INSERT INTO embeddings (document_id, embedding) VALUES ($1, $2)", new,
                              vectors[3])
    finally:
        await app.close()
    async with reverse_running(config, pg_dsn):
        await wait_until(lambda: drained(config, pg))
    assert await pg.fetchval("SELECT to_regclass('syncd.items_embeddings') IS NOT NULL")
    items = chroma_items(col)
    assert set(items) == {*ids, str(new)}
    assert items[ids[0]][1] == "after"
    assert items[ids[0]][2] == chunk(0)  # a column no mapping names is not the item's
    assert items[str(new)][1] == "new" and ulps(items[str(new)][0], vectors[3]) <= COSINE_ULPS


@pytest.mark.parametrize(("ddl", "said"), [
    ("CREATE TABLE embeddings (id uuid PRIMARY KEY, embedding vector(1536));",
     "target.collections[0]: there is no table public.documents; create it"),
    ("CREATE TABLE documents (id uuid PRIMARY KEY, content text); "
     "CREATE TABLE embeddings (id uuid PRIMARY KEY, document_id uuid, embedding vector(1536));",
     "target.collections[0]: public.embeddings needs exactly one foreign key column referencing "
     "public.documents(id); it has 0"),
])
async def test_tables_that_cannot_hold_the_split_are_one_line(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection, ddl: str,
        said: str) -> None:
    col = collection(chroma.client(), "signal-hub", "cosine")
    col.add(ids=["a"], embeddings=np.ones((1, DIM), dtype=np.float32), documents=["a"])
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pg.execute(ddl)
    extra = '[[target.collections]]\nname = "signal-hub"\ntable = "embeddings"\ndocuments = "documents"\n'
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra="\n" + extra)
    proc = run_syncd("--config", str(cfg), "init", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


async def test_export_and_import_into_the_two_tables(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                     pg: asyncpg.Connection) -> None:
    """`syncd export` of the collection, `syncd import` of the bundle into Signal Hub's two tables:
    the rows, and the import's own verification (exit 0), read back."""
    rng = np.random.default_rng(7)
    col = collection(chroma.client(), "signal-hub", "cosine")
    ids = [f"src/mod{i // 4}.py#{i % 4}" for i in range(12)]
    vectors = rng.standard_normal((12, DIM)).astype(np.float32)
    col.add(ids=ids, embeddings=vectors, documents=[f"chunk {i}" for i in range(12)],
            metadatas=[chunk(i) for i in range(12)])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url,
                       extra=MAPPING.format(ddl=json.dumps(SCHEMA)))
    bundle = tmp_path / "bundle"
    run_syncd("--config", str(cfg), "export", "--to", str(bundle), "--collection", "signal-hub")
    imported = run_syncd("--config", str(cfg), "import", str(bundle), check=False, timeout=300)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    rows = await pg_items(pg)
    assert set(rows) == {key_of(i) for i in ids}
    for i, item_id in enumerate(ids):
        check_row(rows[key_of(item_id)], f"chunk {i}", chunk(i), vectors[i])
    assert await pg.fetchval("SELECT count(*) FROM syncd.item_ids") == len(ids)
