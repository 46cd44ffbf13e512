"""SIGKILL during the snapshot and during streaming: after a restart the tables equal the
collections (exact float32 against collection.get()), nothing lost, nothing doubled, and
the snapshot resumed from its last committed chunk."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import REPO, run_syncd, syncd_cmd
from tests.integration.chroma_support import (
    ChromaServer,
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

SPACES = {"crash_l2": ("l2", 16), "crash_ip": ("ip", 8)}


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def mixed_ops(rng: np.random.Generator, col: Any, dim: int, rounds: int, tag: str) -> None:
    ids = col.get(include=[])["ids"]
    for r in range(rounds):
        pick = list(dict.fromkeys(rng.choice(ids, 5))) if ids else []
        kind = r % 6
        if kind == 0:
            new = [f"{tag}-{r}-{k}" for k in range(5)]
            col.add(ids=new, embeddings=rng.standard_normal((5, dim)).astype(np.float32),
                    metadatas=[{"r": r}] * 5, documents=[f"doc {r}"] * 5)
            ids += new
        elif kind == 1 and pick:
            col.update(ids=pick, metadatas=[{"r": None, "u": r}] * len(pick))
        elif kind == 2 and pick:
            col.upsert(ids=pick, embeddings=rng.standard_normal((len(pick), dim)).astype(np.float32))
        elif kind == 3 and pick:
            col.delete(ids=pick[:2])
            ids = [i for i in ids if i not in pick[:2]]
        elif kind == 4 and pick:
            col.add(ids=pick[:1], embeddings=rng.standard_normal((1, dim)).astype(np.float32))  # no effect
        elif kind == 5 and pick:
            col.update(ids=pick, embeddings=rng.standard_normal((len(pick), dim)).astype(np.float32))


def run_killed(cfg: Path, at: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(syncd_cmd("--config", str(cfg), "run", "--until-caught-up"), cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "SYNCD_KILL_AT": at})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    return proc


async def same(pg: asyncpg.Connection, cols: dict[str, Any]) -> None:
    for name, col in cols.items():
        assert_same(await table_items(pg, name), chroma_items(col), space=SPACES[name][0])
        assert await pg.fetchval(f'SELECT count(*) FROM "{name}"') == len(col.get(include=[])["ids"])


async def test_sigkill_in_snapshot_and_in_streaming(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                    pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(int(os.environ.get("SYNCD_TEST_SEED") or random.randrange(2**32)))
    client = chroma.client()
    cols = {name: collection(client, name, space) for name, (space, _) in SPACES.items()}
    for name, (_, dim) in SPACES.items():
        n = 1400 if name == "crash_l2" else 300
        cols[name].add(ids=[f"p{i:05d}" for i in range(n)],
                       embeddings=rng.standard_normal((n, dim)).astype(np.float32),
                       metadatas=[{"i": i} for i in range(n)])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, chunk_rows=200, batch_size=20)
    run_syncd("--config", str(cfg), "init")

    # killed right after the 3rd committed snapshot chunk
    run_killed(cfg, "chunk:3")
    rows = await pg.fetch("SELECT stream, position, snapshot FROM syncd.checkpoints")
    copied = 0
    assert not all(json.loads(r["snapshot"])["complete"] for r in rows)
    for r in rows:
        state = json.loads(r["snapshot"])
        name = (await pg.fetchval("SELECT name FROM syncd.chroma_collections WHERE stream = $1", r["stream"]))
        n = sum(state["copied"].values())
        assert await pg.fetchval(f'SELECT count(*) FROM "{name}"') == n  # checkpoint == committed rows
        copied += n
    assert 0 < copied < 1700  # three chunks committed across the two streams, then killed
    for name, (_, dim) in SPACES.items():
        mixed_ops(rng, cols[name], dim, 30, "a")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "snapshot resume" in proc.stderr
    await same(pg, cols)

    # killed right after the 3rd committed batch of streamed changes
    for name, (_, dim) in SPACES.items():
        mixed_ops(rng, cols[name], dim, 60, "b")
    run_killed(cfg, "batch:3")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    await same(pg, cols)

    # killed from outside at a random moment while the app writes
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            for name, (_, dim) in SPACES.items():
                mixed_ops(rng, cols[name], dim, 6, f"w{i}")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        daemon = start_daemon(cfg)
        await asyncio.sleep(1.5 + rng.random() * 2)
        daemon.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait)
        daemon = start_daemon(cfg)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    try:
        await wait_until(lambda: same(pg, cols), timeout=60)
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0
