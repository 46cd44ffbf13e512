"""Cutover and rollback with embeddings: the app writes users, documents and their embeddings
(to Chroma through `chroma run`, then to pgvector) while syncd switches it back and forth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from syncd.stores.chroma import fence as chroma_fence
from tests.app import records
from tests.integration.chroma_support import run_chroma
from tests.integration.cutover.test_cutover import TABLES, assert_none_lost, direction, written_on
from tests.integration.cutover_support import Migration

COLLECTION = "embeddings"

pytestmark = pytest.mark.slow


async def assert_all_converged(m: Migration, client: Any, *, timeout: float = 45) -> dict[str, Any]:
    """SQLite, PostgreSQL, Chroma and pgvector each hold exactly the acknowledged writes."""
    full = records.expected(m.records())
    tables = {t: full.get(t, {}) for t in TABLES}
    vectors = {COLLECTION: full.get(COLLECTION, {})}
    deadline = time.monotonic() + timeout
    while True:
        problems = {
            "sqlite": records.diff(tables, records.read_sqlite(m.db, TABLES)),
            "postgres": records.diff(tables, await records.read_postgres(m.pg_dsn, TABLES)),
            "chroma": records.diff(vectors, await asyncio.to_thread(records.read_chroma, client, COLLECTION)),
            "pgvector": records.diff(vectors, await records.read_pgvector(m.pg_dsn, COLLECTION, COLLECTION)),
        }
        if not any(problems.values()):
            return full
        if time.monotonic() > deadline:
            raise AssertionError(f"stores differ from the acknowledged writes: {problems}\n"
                                 f"{m.daemon_log.read_text()[-4000:]}")
        await asyncio.sleep(0.5)


async def test_cutover_and_rollback_with_embeddings(tmp_path: Path, pg_dsn: str) -> None:
    with run_chroma(tmp_path / "chroma") as server:
        m = Migration(tmp_path, pg_dsn, chroma_url=server.url, chroma_dir=server.path)
        try:
            m.init()
            m.start_app(rate=100)
            m.start_daemon()
            m.wait_ready()
            await asyncio.sleep(1.5)
            # no second `init`: the collection was empty at init, its table made by its stream, which
            # installs the reverse capture there too
            out = m.switch("cutover")
            assert out["ok"], out
            assert "VECTOR_DB_PROVIDER=pgvector" in m.env.read_text()
            assert chroma_fence.fence_installed(server.path)
            assert await direction(m.pg_dsn) == ("reverse", None)
            await asyncio.sleep(2.0)
            m.stop_app()
            assert written_on(m, "pgvector") > 20, "the app did not move to pgvector"
            m.wait_streaming("pgvector→chroma")
            m.wait_streaming("postgres→sqlite")
            await assert_all_converged(m, server.client())

            m.start_app(rate=100)
            await asyncio.sleep(1.0)
            out = m.switch("rollback")
            assert out["ok"], out
            assert not chroma_fence.fence_installed(server.path)
            assert "VECTOR_DB_PROVIDER=chromadb" in m.env.read_text()
            await asyncio.sleep(2.0)
            m.stop_app()
            m.wait_streaming("chroma:")
            m.wait_streaming("sqlite")
            await assert_all_converged(m, server.client())
            assert_none_lost(m)
            assert m.stop_daemon() == 0
        finally:
            m.close()
