"""The app writes while syncd copies: during the snapshot, and during a reconciliation after
Chroma purged its log. Chroma's operations are not idempotent (an UPDATE of a missing id does
nothing, then an ADD creates it), so log rows the copied image already holds must be skipped,
not replayed; the tables must still equal the collections exactly."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
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

DIM = 8


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


class Writer(threading.Thread):
    """Ops on a small pool of ids, present or not: every order of add / update / upsert / delete."""

    def __init__(self, col: Any, seed: int) -> None:
        super().__init__()
        self.col = col
        self.rng = np.random.default_rng(seed)
        self.stop = threading.Event()
        self.ops = 0

    def run(self) -> None:
        pool = [f"p{i}" for i in range(60)] + [f"s{i:05d}" for i in range(0, 3000, 37)]
        while not self.stop.is_set():
            ids = list(dict.fromkeys(self.rng.choice(pool, 4)))
            v = self.rng.standard_normal((len(ids), DIM)).astype(np.float32)
            kind = self.ops % 6
            if kind == 0:
                self.col.update(ids=ids, embeddings=v, metadatas=[{"u": self.ops}] * len(ids))
            elif kind == 1:
                self.col.add(ids=ids, embeddings=v, documents=[f"a{self.ops}"] * len(ids))
            elif kind == 2:
                self.col.update(ids=ids, metadatas=[{"m": self.ops, "u": None}] * len(ids))
            elif kind == 3:
                self.col.delete(ids=ids[:2])
            elif kind == 4:
                self.col.upsert(ids=ids, embeddings=v, metadatas=[{"x": self.ops}] * len(ids))
            else:
                self.col.add(ids=ids, embeddings=v)
            self.ops += 1


def seed_collection(col: Any, rng: np.random.Generator) -> None:
    for start in range(0, 3000, 1000):
        ids = [f"s{i:05d}" for i in range(start, start + 1000)]
        col.add(ids=ids, embeddings=rng.standard_normal((1000, DIM)).astype(np.float32),
                metadatas=[{"i": i} for i in range(start, start + 1000)])


async def test_writes_during_snapshot(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                      pg: asyncpg.Connection) -> None:
    # Chroma saves its index every 50 rows (not 1,000): ids whose vector its index holds from
    # an UPDATE of a missing id get settled while the writer runs (docs/chroma.md)
    col = chroma.client().create_collection("busy", embedding_function=None, configuration={
        "hnsw": {"space": "l2", "sync_threshold": 50, "batch_size": 50}})
    seed_collection(col, np.random.default_rng(1))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, chunk_rows=100, batch_size=50)
    run_syncd("--config", str(cfg), "init")
    writer = Writer(collection(chroma.client(), "busy", "l2"), seed=2)
    writer.start()
    daemon = start_daemon(cfg)
    try:
        async def snapshot_done() -> None:
            assert await pg.fetchval("SELECT count(*) FROM syncd.checkpoints WHERE snapshot IS NULL "
                                     "OR (snapshot->>'complete')::boolean") == 1

        await wait_until(snapshot_done)
        writer.stop.set()
        writer.join()
        assert writer.ops > 20
        await wait_until(lambda: caught_up(pg, chroma.path))
        seen = await pg.fetchval("SELECT count(*) FROM syncd.chroma_seen")
        assert seen == 0  # catch-up is past every skipped row: the table is emptied
        await wait_until(lambda: settled(pg, chroma.path))
    finally:
        writer.stop.set()
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    # Compared with Chroma restarted: for an id first UPDATEd while missing and then ADDed,
    # Chroma 1.5.9's index can hold the UPDATE's vector against its own log, and a restarted
    # Chroma returns it once the index was saved past the ADD (docs/chroma.md, "A live Chroma
    # can disagree with its own log"). syncd copies what a restarted Chroma returns.
    chroma.stop()
    chroma.start()
    await same(pg, collection(chroma.client(), "busy", "l2"), chroma.path)


async def caught_up(pg: asyncpg.Connection, chroma_dir: Path) -> None:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        head = db.execute("SELECT max(seq_id) FROM embeddings_queue").fetchone()[0]
    finally:
        db.close()
    assert await pg.fetchval("SELECT position FROM syncd.checkpoints") >= head


def hnsw_saved(chroma_dir: Path) -> int:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT m.seq_id FROM max_seq_id m JOIN segments s ON s.id = m.segment_id "
                         "WHERE s.scope = 'VECTOR'").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


async def settled(pg: asyncpg.Connection, chroma_dir: Path) -> None:
    """No id left whose vector syncd must still take from Chroma's saved index (it checks after
    every batch and at its idle ping)."""
    due = await pg.fetchval("SELECT count(*) FROM syncd.chroma_vector_doubt WHERE add_seq <= $1",
                            hnsw_saved(chroma_dir))
    assert due == 0, f"{due} vector doubts due"


async def same(pg: asyncpg.Connection, col: Any, chroma_dir: Path) -> None:
    table, chroma = await table_items(pg, col.name), chroma_items(col)
    try:
        assert_same(table, chroma, space="l2")
    except AssertionError:
        print(await evidence(pg, table, chroma, chroma_dir))  # kept in the test's output
        raise


async def evidence(pg: asyncpg.Connection, table: dict[str, Any], chroma: dict[str, Any],
                   chroma_dir: Path) -> str:
    """For the ids whose vectors differ: both vectors, Chroma's log rows of the id, syncd's record."""
    ids = sorted(k for k in set(table) & set(chroma)
                 if not np.array_equal(table[k][0].view(np.int32), chroma[k][0].view(np.int32)))[:5]
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    lines = [f"HNSW segment saved at seq_id {hnsw_saved(chroma_dir)}"]
    try:
        for k in ids:
            lines.append(f"id {k}: table {table[k][0].tolist()} chroma (restarted) {chroma[k][0].tolist()}")
            for seq, op, vec, meta in db.execute(
                    "SELECT seq_id, operation, vector, metadata FROM embeddings_queue WHERE id = ? "
                    "ORDER BY seq_id", (k,)):
                v = np.frombuffer(vec, dtype="<f4").tolist() if vec else None
                lines.append(f"  log seq {seq} op {op} vector {v} metadata {meta}")
            record = await pg.fetchrow("SELECT update_seq, add_seq FROM syncd.chroma_vector_doubt "
                                       "WHERE id = $1", k)
            lines.append(f"  syncd.chroma_vector_doubt: {dict(record) if record else None}")
    finally:
        db.close()
    return "\n".join(lines)


async def test_writes_during_reconciliation(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                            pg: asyncpg.Connection) -> None:
    col = collection(chroma.client(), "busy", "l2")
    rng = np.random.default_rng(3)
    seed_collection(col, rng)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, chunk_rows=100, batch_size=50)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    db = sqlite3.connect(chroma.path / "chroma.sqlite3", timeout=10)
    db.execute("UPDATE embeddings_queue_config SET config_json_str = ?",
               (json.dumps({"automatically_purge": True, "_type": "EmbeddingsQueueConfigurationInternal"}),))
    db.commit()
    db.close()
    seed = [f"s{i:05d}" for i in range(3000)]
    col.update(ids=seed[:1500], metadatas=[{"purged": True}] * 1500)  # past 1,000: Chroma purges
    col.delete(ids=seed[1500:1600])
    writer = Writer(collection(chroma.client(), "busy", "l2"), seed=4)
    writer.start()
    daemon = start_daemon(cfg)
    try:
        await wait_until(lambda: reconciled(pg))
        writer.stop.set()
        writer.join()
        await wait_until(lambda: caught_up(pg, chroma.path))
        await wait_until(lambda: settled(pg, chroma.path))
    finally:
        writer.stop.set()
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    assert "reconciled" in log
    chroma.stop()  # compared with Chroma restarted, as above
    chroma.start()
    await same(pg, collection(chroma.client(), "busy", "l2"), chroma.path)


async def reconciled(pg: asyncpg.Connection) -> None:
    """Past the purged rows: the reconciliation committed (the writer is still writing)."""
    assert await pg.fetchval("SELECT position FROM syncd.checkpoints") > 4500
