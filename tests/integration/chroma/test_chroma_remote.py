"""Topology "server only": syncd reaches Chroma through its HTTP API alone and finds changes by
re-scanning each collection (docs/chroma.md, "Server only").

A real ``chroma run`` serves a temp directory that syncd is not told about (``url`` only).
The tables must equal what the server returns — vectors float32-exact, documents, metadata —
after the snapshot, after adds / updates (vector, metadata only, document only) / upserts /
deletes made while ``syncd run`` scans, and after a SIGKILL in the middle of a scan.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from tests.conftest import REPO, run_syncd, syncd_cmd
from tests.integration.chroma_support import (
    assert_same,
    chroma_items,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    table_items,
    wait_streaming,
    wait_until,
    write_config,
)

SCAN = 10**9
DIM = 16


def vecs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype(np.float32)


def fill(col: Any, rng: np.random.Generator, n: int) -> None:
    ids = [f"d{i:05d}" for i in range(n)]
    for i in range(0, n, 500):
        part = ids[i:i + 500]
        col.add(ids=part, embeddings=vecs(rng, len(part)),
                documents=[f"doc {k}" if k % 7 else None for k in range(i, i + len(part))],
                metadatas=[{"n": k, "tag": "t" + str(k % 3), "ok": k % 2 == 0} if k % 11 else None
                           for k in range(i, i + len(part))])


async def wait_started(pg: asyncpg.Connection, collections: int) -> None:
    """Wait for the daemon's state tables (no `syncd init` here), then for its streams."""
    async def state() -> None:
        assert await pg.fetchval("SELECT to_regclass('syncd.checkpoints') IS NOT NULL")

    await wait_until(state, timeout=60)
    await wait_streaming(pg, collections, timeout=60)


async def assert_equal(pg: asyncpg.Connection, cols: dict[str, Any]) -> None:
    for name, col in cols.items():
        assert await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{name}"'), f"no table {name}"
        # syncd copies what the server returns: exact bits for every space, cosine included
        assert_same(await table_items(pg, name), chroma_items(col), space="l2")


def mutate(col: Any, rng: np.random.Generator, round_: int) -> None:
    raw = col._client  # a document-only update needs the raw API (no embedding function here)
    new = [f"r{round_}-{i}" for i in range(30)]
    col.add(ids=new, embeddings=vecs(rng, 30), documents=[f"new {i}" for i in range(30)],
            metadatas=[{"round": round_}] * 30)
    col.update(ids=["d00001", "d00002"], embeddings=vecs(rng, 2))                  # vector only
    col.update(ids=["d00003"], metadatas=[{"n": None, "edited": round_}])          # metadata only
    raw._update(collection_id=col.id, ids=["d00004"], documents=[f"changed {round_}"])  # document only
    col.upsert(ids=["d00005", f"u{round_}"], embeddings=vecs(rng, 2), metadatas=[{"up": 1}, {"up": 2}])
    col.delete(ids=[f"d{10 + round_ * 5 + k:05d}" for k in range(5)])
    col.delete(where={"$and": [{"tag": "t1"}, {"n": {"$gt": 1400 - round_ * 20}}]})


async def test_server_only(tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(7)
    with run_chroma(tmp_path / "chroma") as server:
        client = server.client()
        cols = {"remote_docs": collection(client, "remote_docs", "l2"),
                "remote_cos": collection(client, "remote_cos", "cosine")}
        for col in cols.values():
            fill(col, rng, 1500)
        cfg = write_config(tmp_path, pg_dsn, path=None, url=server.url, batch_size=100, chunk_rows=400)
        assert "server only" in run_syncd("--config", str(cfg), "init").stdout

        # snapshot, then changes while syncd scans
        daemon = start_daemon(cfg)
        try:
            await wait_started(pg, 2)
            await assert_equal(pg, cols)
            for col in cols.values():
                mutate(col, rng, 1)
            await wait_until(lambda: assert_equal(pg, cols), timeout=30)
            later = collection(client, "remote_late", "ip")  # a collection created while syncd runs
            later.add(ids=["a", "b"], embeddings=vecs(rng, 2), documents=["x", None])
            cols["remote_late"] = later
            await wait_until(lambda: assert_equal(pg, cols), timeout=30)
        finally:
            out = stop_daemon(daemon)
        assert "Traceback" not in out, out[-3000:]
        assert "stream stopped" not in out, out[-3000:]  # no stream may die (ping once asked a log)

        # changes while syncd is down, then SIGKILL in the middle of the scan that finds them. A
        # kill that lands when every stream has just finished its scan (the resumed scans of the
        # first daemon can take exactly that many pages) is tried again with other counts.
        positions: list[int] = []
        for attempt, kill_at in enumerate((9, 4, 14), start=2):
            for col in cols.values():
                if col.name != "remote_late":
                    mutate(col, rng, attempt)
            # blocking on purpose: nothing else runs until the daemon reaches its kill point
            killed = subprocess.run(syncd_cmd("--config", str(cfg), "run"), cwd=REPO,  # noqa: ASYNC221
                                    capture_output=True, text=True, timeout=120,
                                    env={**os.environ, "SYNCD_KILL_AT": f"batch:{kill_at}"})
            assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
            positions = [int(p) for p in await pg.fetchval(
                "SELECT array_agg(position) FROM syncd.checkpoints WHERE stream LIKE 'chroma:%'")]
            if any(p % SCAN != SCAN - 1 for p in positions):
                break
        assert any(p % SCAN != SCAN - 1 for p in positions), positions  # killed mid-scan

        daemon = start_daemon(cfg)
        try:
            await wait_until(lambda: assert_equal(pg, cols), timeout=120)  # a loaded machine: scans are slow
            for name, col in cols.items():
                assert await pg.fetchval(f'SELECT count(*) FROM "{name}"') == col.count()
            digests = await pg.fetchval("SELECT count(*) FROM syncd.chroma_digest")
            assert digests == sum(c.count() for c in cols.values())
        finally:
            out = stop_daemon(daemon)
        assert "Traceback" not in out, out[-3000:]
        assert "stream stopped" not in out, out[-3000:]  # no stream may die (ping once asked a log)
