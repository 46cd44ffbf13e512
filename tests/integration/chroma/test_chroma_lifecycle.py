"""Chroma's log purged behind syncd's back, collections deleted / re-created / renamed, and
uninstall: the tables still end up equal to the collections, and nothing is lost silently."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    CHROMA_BIN,
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


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def purge_setting(chroma_dir: Path) -> bool:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        text = db.execute("SELECT config_json_str FROM embeddings_queue_config").fetchone()[0]
        return bool(json.loads(text)["automatically_purge"])
    finally:
        db.close()


def set_purge(chroma_dir: Path, on: bool) -> None:
    db = sqlite3.connect(chroma_dir / "chroma.sqlite3", timeout=10)
    try:
        config = {"automatically_purge": on, "_type": "EmbeddingsQueueConfigurationInternal"}
        db.execute("UPDATE embeddings_queue_config SET config_json_str = ?", (json.dumps(config),))
        db.commit()
    finally:
        db.close()


def queue_rows(chroma_dir: Path, collection_id: str) -> tuple[int, int | None]:
    db = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT count(*), min(seq_id) FROM embeddings_queue WHERE topic LIKE ?",
                         (f"%/{collection_id}",)).fetchone()
        return int(row[0]), row[1]
    finally:
        db.close()


def vacuum(chroma_dir: Path) -> None:
    subprocess.run([str(CHROMA_BIN), "vacuum", "--path", str(chroma_dir), "--force"], check=True,
                   capture_output=True, timeout=120)


def churn(rng: np.random.Generator, col: Any, dim: int, start: int, new: int, old: list[str]) -> None:
    """Many new items (Chroma saves its index every 1,000 and purges behind it), and changes
    to old ones: metadata patches, deletes, new vectors."""
    for i in range(0, new, 500):
        ids = [f"n{start + i + k}" for k in range(500)]
        col.add(ids=ids, embeddings=rng.standard_normal((500, dim)).astype(np.float32),
                metadatas=[{"batch": start + i}] * 500)
    col.update(ids=old[:20], metadatas=[{"patched": start, "g": None}] * 20)
    col.delete(ids=old[20:30])
    col.upsert(ids=old[30:35], embeddings=rng.standard_normal((5, dim)).astype(np.float32))


async def test_purged_log_is_reconciled(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                        pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(11)
    col = collection(chroma.client(), "gappy", "l2")
    seeds = [f"s{i}" for i in range(300)]
    col.add(ids=seeds, embeddings=rng.standard_normal((300, 8)).astype(np.float32),
            metadatas=[{"g": i % 4} for i in range(300)])
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    assert purge_setting(chroma.path) is False
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    checkpoint = await pg.fetchval("SELECT position FROM syncd.checkpoints")

    # syncd stopped; purging turned back on by hand; writes: Chroma purges rows syncd never read
    set_purge(chroma.path, True)
    churn(rng, col, 8, 0, 1500, seeds)
    _, first = queue_rows(chroma.path, str(col.id))
    assert first is not None and first > checkpoint + 1, "Chroma did not purge: the test proves nothing"
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "reconciling" in proc.stderr and "reconciled" in proc.stderr
    assert purge_setting(chroma.path) is False  # syncd turned it off again
    assert_same(await table_items(pg, "gappy"), chroma_items(col), space="l2")

    # `chroma vacuum` (server stopped, as Chroma advises): turns purging on and purges
    churn(rng, col, 8, 2000, 1500, seeds[40:])
    chroma.stop()
    vacuum(chroma.path)
    chroma.start()
    checkpoint = await pg.fetchval("SELECT position FROM syncd.checkpoints")
    _, first = queue_rows(chroma.path, str(col.id))
    assert first is not None and first > checkpoint + 1
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "reconciled" in proc.stderr
    assert purge_setting(chroma.path) is False
    assert_same(await table_items(pg, "gappy"), chroma_items(col), space="l2")
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0

    # uninstall restores what init found (Chroma's default: purging on)
    run_syncd("--config", str(cfg), "init")  # now that the tables exist: reverse capture on them
    triggers = "SELECT count(*) FROM pg_trigger WHERE tgname = 'syncd_capture'"
    assert await pg.fetchval(triggers) > 0
    out = run_syncd("--config", str(cfg), "uninstall").stdout
    assert "purge setting restored" in out
    assert await pg.fetchval(triggers) == 0
    assert purge_setting(chroma.path) is True


async def test_collections_deleted_recreated_renamed(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                     pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(5)
    client = chroma.client()
    keep = collection(client, "keep", "ip")
    keep.add(ids=[f"k{i}" for i in range(50)], embeddings=rng.standard_normal((50, 4)).astype(np.float32))
    tmp = collection(client, "tmp", "l2")  # written last: its rows hold the highest seq_ids
    tmp.add(ids=[f"t{i}" for i in range(80)], embeddings=rng.standard_normal((80, 4)).astype(np.float32),
            documents=[f"old {i}" for i in range(80)])
    old_id = str(tmp.id)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    try:
        async def same(*cols: Any) -> None:
            for c in cols:
                space = "l2" if c.name == "tmp" else "ip"
                # between moving a deleted collection's table aside and creating the new one
                assert await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f'public."{c.name}"')
                assert_same(await table_items(pg, c.name), chroma_items(c), space=space)

        await wait_until(lambda: same(keep, tmp))
        _, old_first = queue_rows(chroma.path, old_id)
        # delete, re-create with the same name: the new collection takes the freed seq_ids again
        client.delete_collection("tmp")
        tmp = collection(client, "tmp", "l2")
        tmp.add(ids=[f"t{i}" for i in range(30)], embeddings=rng.standard_normal((30, 4)).astype(np.float32),
                documents=[f"new {i}" for i in range(30)])
        _, new_first = queue_rows(chroma.path, str(tmp.id))
        assert new_first is not None and old_first is not None and new_first <= old_first + 80
        await wait_until(lambda: same(keep, tmp))
        kept_old = f"tmp__deleted_{old_id[:8]}"
        assert await pg.fetchval(f'SELECT count(*) FROM "{kept_old}"') == 80
        assert "was deleted" in await pg.fetchval("SELECT obj_description($1::regclass)", kept_old)
        # rename: syncd's table follows, and streaming goes on
        keep.modify(name="kept")
        keep.upsert(ids=["k0", "k99"], embeddings=rng.standard_normal((2, 4)).astype(np.float32))

        async def renamed() -> None:
            assert await pg.fetchval("SELECT to_regclass('public.kept') IS NOT NULL")
            await same(keep)

        await wait_until(renamed)
        # a collection created while syncd runs gets a table and a snapshot
        late = collection(client, "late", "cosine")
        late.add(ids=["x", "y"], embeddings=[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])

        async def created() -> None:
            assert await pg.fetchval("SELECT to_regclass('public.late') IS NOT NULL")
            assert_same(await table_items(pg, "late"), chroma_items(late), space="cosine")

        await wait_until(created)
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
    # while syncd is stopped: delete and re-create again
    second_id = str(tmp.id)
    client.delete_collection("tmp")
    tmp = collection(client, "tmp", "l2")
    tmp.add(ids=["only"], embeddings=[[4.0, 3.0, 2.0, 1.0]], documents=["third"])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert_same(await table_items(pg, "tmp"), chroma_items(tmp), space="l2")
    assert await pg.fetchval(f'SELECT count(*) FROM "tmp__deleted_{second_id[:8]}"') == 30
    states = {r["collection_id"]: r["deleted_at"] is not None
              for r in await pg.fetch("SELECT collection_id, deleted_at FROM syncd.chroma_collections")}
    assert states[old_id] and states[second_id] and not states[str(tmp.id)]
    streams = {r["stream"] for r in await pg.fetch("SELECT stream FROM syncd.checkpoints")}
    assert f"chroma:{old_id}" not in streams and f"chroma:{tmp.id}" in streams


async def test_a_collection_renamed_while_syncd_is_stopped_takes_its_table_along(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    """Renamed while no daemon ran, then renamed again while one runs: the table syncd created
    follows each name, no table is left under an old one (found by the kill campaign's side
    collections: a rename during a daemon's downtime left the table under the first name for
    good, and every later rename too)."""
    rng = np.random.default_rng(9)
    client = chroma.client()
    col = collection(client, "first")
    col.add(ids=[f"f{i}" for i in range(10)], embeddings=rng.standard_normal((10, 4)).astype(np.float32))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await pg.fetchval("SELECT to_regclass('public.first') IS NOT NULL")

    col.modify(name="second")  # no daemon running
    col.add(ids=["s0"], embeddings=rng.standard_normal((1, 4)).astype(np.float32))
    daemon = start_daemon(cfg)
    try:
        async def followed(name: str, gone: tuple[str, ...]) -> None:
            assert await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{name}"), name
            for old in gone:
                assert await pg.fetchval("SELECT to_regclass($1) IS NULL", f"public.{old}"), old
            assert_same(await table_items(pg, name), chroma_items(col), space="l2")

        await wait_until(lambda: followed("second", ("first",)))
        col.modify(name="third")  # while it runs
        col.add(ids=["t0"], embeddings=rng.standard_normal((1, 4)).astype(np.float32))
        await wait_until(lambda: followed("third", ("first", "second")))
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]
