"""A randomized workload on two collections with different spaces and dimensions (384-d cosine,
1536-d inner product), written while syncd streams; then the tables equal the collections."""

from __future__ import annotations

import sqlite3
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
    wait_streaming,
    wait_until,
    write_config,
)


def queue_rows(chroma_dir: Path, collection_id: str) -> int:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM embeddings_queue WHERE topic LIKE ?",
                              (f"%/{collection_id}",)).fetchone()[0])
    finally:
        db.close()


def logged_ids(chroma_dir: Path, collection_id: str) -> set[str]:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT id FROM embeddings_queue WHERE topic LIKE ?",
                                         (f"%/{collection_id}",))}
    finally:
        db.close()


def prunable(chroma_dir: Path, collection_id: str, checkpoint: int) -> int:
    """Rows of the collection at or below *checkpoint* that Chroma no longer needs."""
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        floor = db.execute("SELECT min(m.seq_id), count(*) FROM max_seq_id m "
                           "JOIN segments s ON s.id = m.segment_id WHERE s.collection = ?",
                           (collection_id,)).fetchone()
        assert floor[1] == 2, "Chroma has not saved its index yet"
        return int(db.execute("SELECT count(*) FROM embeddings_queue WHERE topic LIKE ? AND seq_id <= ? "
                              "AND seq_id < ?", (f"%/{collection_id}", checkpoint, floor[0])).fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def random_ops(rng: np.random.Generator, col: Any, mirror: Mirror, dim: int, rounds: int,
               prefix: str) -> None:
    live: list[str] = list(mirror.vectors)
    next_id = 0
    for _ in range(rounds):
        kind = rng.choice(["add", "upsert", "update_meta", "update_vec", "delete", "delete_where", "add_dup"],
                          p=[0.25, 0.2, 0.2, 0.1, 0.1, 0.05, 0.1])
        n = int(rng.integers(1, 40))
        if kind in ("add", "upsert"):
            new = [f"{prefix}{next_id + i}" for i in range(n)]
            next_id += n
            ids = new if kind == "add" or not live else new[: n // 2] + list(rng.choice(live, n - n // 2))
            ids = list(dict.fromkeys(ids))
            v = rng.standard_normal((len(ids), dim)).astype(np.float32)
            meta = [{"g": int(rng.integers(0, 5)), "w": float(rng.random()), "tag": str(rng.integers(0, 3))}
                    for _ in ids]
            if kind == "add":
                col.add(ids=ids, embeddings=v, metadatas=meta, documents=[f"d {i}" for i in ids])
                mirror.add(ids, v)
            else:
                col.upsert(ids=ids, embeddings=v, metadatas=meta)
                mirror.upsert(ids, v)
        elif kind == "add_dup" and live:
            ids = list(dict.fromkeys(rng.choice(live, min(n, len(live)))))
            col.add(ids=ids, embeddings=rng.standard_normal((len(ids), dim)).astype(np.float32))
        elif kind == "update_meta" and live:
            ids = list(dict.fromkeys(rng.choice(live, min(n, len(live)))))
            col.update(ids=ids, metadatas=[{"g": None, "seen": True} if rng.random() < 0.3 else {"w": 0.5}
                                           for _ in ids])
        elif kind == "update_vec" and live:
            ids = list(dict.fromkeys(rng.choice(live, min(n, len(live)))))
            v = rng.standard_normal((len(ids), dim)).astype(np.float32)
            col.update(ids=ids, embeddings=v, documents=[f"u {i}" for i in ids])
            mirror.update(ids, v)
        elif kind == "delete" and live:
            ids = list(dict.fromkeys(rng.choice(live, min(n, len(live)))))
            col.delete(ids=ids)
            mirror.delete(ids)
        elif kind == "delete_where":
            tag = str(rng.integers(0, 3))
            gone = col.get(where={"tag": tag}, include=[])["ids"]
            col.delete(where={"tag": tag})
            mirror.delete(gone)
        live = list(mirror.vectors)


async def test_randomized_workload_two_collections(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                   pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(2024)
    client = chroma.client()
    specs = [("wl_cos", "cosine", 384), ("wl_ip", "ip", 1536)]
    cols = {name: collection(client, name, space) for name, space, _ in specs}
    mirrors = {name: Mirror() for name, _, _ in specs}
    for name, _, dim in specs:
        n = 1100 if dim == 384 else 300  # past 1,000 Chroma saves its index: rows become prunable
        ids = [f"seed{i}" for i in range(n)]
        v = rng.standard_normal((n, dim)).astype(np.float32)
        cols[name].add(ids=ids, embeddings=v, metadatas=[{"tag": str(i % 3), "g": i % 5} for i in range(n)])
        mirrors[name].add(ids, v)
    for name in cols:  # what Chroma purged before syncd started is copied with Chroma's bits
        mirrors[name].forget(set(mirrors[name].vectors) - logged_ids(chroma.path, str(cols[name].id)))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, chunk_rows=100, batch_size=100)
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    try:
        # the snapshot copies vectors of items last changed by a metadata-only update from the
        # server (Chroma's bits, a step off for cosine); the workload runs once it is done
        await wait_streaming(pg, 2)
        for _ in range(3):
            for name, _, dim in specs:
                prefix = f"{name}-{rng.integers(10**9)}-"
                random_ops(rng, cols[name], mirrors[name], dim, rounds=15, prefix=prefix)

        async def same() -> None:
            for name, space, _ in specs:
                assert_same(await table_items(pg, name), chroma_items(cols[name]), space=space,
                            written=mirrors[name].vectors)

        await wait_until(same, timeout=90)

        async def pruned() -> None:  # syncd removed the log rows it is past, as far as Chroma allows
            cid = str(cols["wl_cos"].id)
            position = await pg.fetchval("SELECT position FROM syncd.checkpoints WHERE stream = $1",
                                         f"chroma:{cid}")
            assert prunable(chroma.path, cid, position) == 0

        await wait_until(pruned)
        assert queue_rows(chroma.path, str(cols["wl_cos"].id)) < 1100
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    # Chroma, restarted, replays what its index had not saved from the log syncd pruned: nothing lost
    chroma.stop()
    chroma.start()
    cols = {name: collection(chroma.client(), name, space) for name, space, _ in specs}
    for name, space, _ in specs:
        assert_same(await table_items(pg, name), chroma_items(cols[name]), space=space,
                    written=mirrors[name].vectors)
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0
    for name, _, _ in specs:
        assert await pg.fetchval(f'SELECT count(*) FROM "{name}"') == len(mirrors[name].vectors)
