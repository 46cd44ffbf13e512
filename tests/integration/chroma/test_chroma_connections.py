"""Many collections, few PostgreSQL connections: a collection's stream that has had nothing to
apply for ``stream.release_idle_seconds`` closes its connection and opens one again at its
next change.

Found by the kill campaign with side collections (``python -m bench.chaos --chroma-lifecycle``):
with ~100 collections syncd held one connection per collection, PostgreSQL's default
``max_connections = 100`` was reached, and every new connection — the catalog follower's,
a restarted stream's — failed with "too many clients" until the run was stopped; nothing
more was copied. Apps that keep a collection per user or per tenant have that many.

Through the real command line; connections are counted in ``pg_stat_activity``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    ChromaServer,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    wait_streaming,
    wait_until,
    write_config,
)

COLLECTIONS = 12


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


async def syncd_connections(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name = 'syncd' AND pid <> pg_backend_pid()"))


async def test_idle_collections_give_their_connections_back(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(5)
    client = chroma.client()
    cols = [collection(client, f"tenant_{i:02d}") for i in range(COLLECTIONS)]
    for i, col in enumerate(cols):
        vectors = rng.standard_normal((5, 4)).astype(np.float32)
        col.add(ids=[f"t{i}-{k}" for k in range(5)], embeddings=vectors)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, release_idle_seconds=1.0)
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    try:
        await wait_streaming(pg, COLLECTIONS)

        async def few() -> None:
            held = await syncd_connections(pg)
            assert held <= 3, f"{held} connections held by syncd with {COLLECTIONS} idle collections"

        await wait_until(few, timeout=30)
        # a change in one collection: its stream connects again and applies it
        cols[3].add(ids=["late"], embeddings=rng.standard_normal((1, 4)).astype(np.float32))

        async def arrived() -> None:
            assert await pg.fetchval("SELECT count(*) FROM tenant_03 WHERE id = 'late'") == 1

        await wait_until(arrived, timeout=30)
        # ... and gives it back once idle again
        await wait_until(few, timeout=30)
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0
    for i in range(COLLECTIONS):
        assert await pg.fetchval(f"SELECT count(*) FROM tenant_{i:02d}") == (6 if i == 3 else 5)
