"""Chroma 1.5.9's HNSW index can hold the vector of an UPDATE its log says had no effect.

The sequence, deterministic (docs/chroma.md, "A live Chroma can disagree with its own log"):
UPDATE of a missing id with a vector (no effect), then ADD of that id; then the first read
of the collection in that Chroma process (its backfill finds nothing new and resets the
HNSW writer's ``last_seen_seq_id`` to 0), then any write: Chroma applies again every log row
above its saved index, and this time the UPDATE finds the id. Saved past the ADD (here
``sync_threshold`` is small), a restarted Chroma returns the UPDATE's vector; not saved yet,
a restarted Chroma replays its log and returns the ADD's. syncd copies what a restarted
Chroma returns: the tables are compared with Chroma read back after a restart, bit for bit.
"""

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
    COSINE_ULPS,
    ChromaServer,
    assert_same,
    chroma_items,
    run_chroma,
    table_items,
    ulps,
    write_config,
)

DIM = 4
SYNC_THRESHOLD = 20


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def open_collection(server: ChromaServer, space: str) -> Any:
    return server.client().get_or_create_collection(
        "drift", embedding_function=None,
        configuration={"hnsw": {"space": space, "sync_threshold": SYNC_THRESHOLD, "batch_size": 10}})


def hnsw_saved(server: ChromaServer) -> int:
    """The HNSW segment's max_seq_id (0: the index was never saved)."""
    db = sqlite3.connect(f"file:{server.path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT m.seq_id FROM max_seq_id m JOIN segments s ON s.id = m.segment_id "
                         "WHERE s.scope = 'VECTOR'").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def last_seq(server: ChromaServer) -> int:
    db = sqlite3.connect(f"file:{server.path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT max(seq_id) FROM embeddings_queue").fetchone()[0])
    finally:
        db.close()


def update_then_add(col: Any, ids: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """UPDATE of missing ids (no effect, by Chroma's rules), then ADD of them; the first read of
    this Chroma process, then one more write. Returns (UPDATE vectors, ADD vectors)."""
    updated = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    added = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    col.update(ids=ids, embeddings=updated, metadatas=[{"u": 1}] * len(ids))
    col.add(ids=ids, embeddings=added, documents=[f"doc {i}" for i in ids])
    col.get(ids=ids[:1], include=["embeddings"])  # first read of the process: resets the index writer
    col.add(ids=[f"after-{ids[0]}"], embeddings=rng.standard_normal((1, DIM)).astype(np.float32))
    return updated, added


def live_vectors(col: Any, ids: list[str]) -> np.ndarray:
    got = col.get(ids=ids, include=["embeddings"])
    order = {k: i for i, k in enumerate(got["ids"])}
    return np.asarray([got["embeddings"][order[k]] for k in ids], dtype=np.float32)


def close(a: np.ndarray, b: np.ndarray, space: str) -> bool:
    if space == "cosine":
        return all(ulps(x, y) <= COSINE_ULPS for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(a.view(np.int32), b.view(np.int32)))


@pytest.mark.parametrize("space", ["l2", "cosine"])
@pytest.mark.parametrize("syncd_first", [False, True], ids=["snapshot", "stream"])
async def test_copies_what_a_restarted_chroma_returns(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                      pg: asyncpg.Connection, space: str,
                                                      syncd_first: bool) -> None:
    rng = np.random.default_rng(7)
    col = open_collection(chroma, space)
    seed = [f"seed{i}" for i in range(5)]
    written: dict[str, np.ndarray] = {}
    vecs = rng.standard_normal((5, DIM)).astype(np.float32)
    col.add(ids=seed, embeddings=vecs)
    written.update(zip(seed, vecs, strict=True))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    if syncd_first:  # the changes below are streamed; else the snapshot reads them
        run_syncd("--config", str(cfg), "run", "--until-caught-up")
        chroma.stop()
        chroma.start()  # a Chroma process whose collection nothing has read yet
        col = open_collection(chroma, space)

    # saved past the ADD: the UPDATE's vector for good
    saved_ids = ["x0", "x1", "x2"]
    updated, added = update_then_add(col, saved_ids, rng)
    col.add(ids=[f"fill{i}" for i in range(SYNC_THRESHOLD)],
            embeddings=rng.standard_normal((SYNC_THRESHOLD, DIM)).astype(np.float32))
    assert close(live_vectors(col, saved_ids), updated, space), \
        "Chroma no longer re-applies the UPDATE: re-check docs/chroma.md for this Chroma version"
    assert hnsw_saved(chroma) == last_seq(chroma)
    written.update(zip(saved_ids, updated, strict=True))

    # not saved yet: the live server returns the UPDATE's vector, a restarted one the ADD's
    chroma.stop()
    chroma.start()
    col = open_collection(chroma, space)
    unsaved_ids = ["y0", "y1", "y2"]
    updated, added = update_then_add(col, unsaved_ids, rng)
    assert close(live_vectors(col, unsaved_ids), updated, space)
    assert hnsw_saved(chroma) < last_seq(chroma)
    written.update(zip(unsaved_ids, added, strict=True))

    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    chroma.stop()
    chroma.start()
    col = open_collection(chroma, space)
    items = chroma_items(col)
    # the test's expectation of what a restarted Chroma returns holds
    for item_id in saved_ids + unsaved_ids:
        assert close(items[item_id][0][None], written[item_id][None], space), item_id
    assert_same(await table_items(pg, "drift"), items, space=space,
                written={k: written.get(k) for k in items} if space == "cosine" else None)
    assert await pg.fetchval("SELECT count(*) FROM syncd.chroma_vector_doubt") == 3  # y0..y2: not saved yet
