"""verify of a cosine collection whose log syncd has pruned: Chroma's server no longer has the
bits the app wrote (its cosine index returns them a float32 step or two off, docs/chroma.md
"Which bits"), the table has them exactly (streamed from the log). Found by the kill campaign
with a cosine collection (``python -m bench.chaos --space cosine``): ``syncd verify`` said
"differences found" for hundreds of items whose rows were the app's own bits.

Through the real command line; the table is read back and compared with what the app wrote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma.test_chroma_workload import logged_ids, prunable
from tests.integration.chroma_support import (
    ChromaServer,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    table_items,
    ulps,
    wait_streaming,
    wait_until,
    write_config,
)

DIM = 24


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


async def test_a_cosine_collection_whose_log_syncd_pruned_verifies_equal(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(31)
    col = collection(chroma.client(), "pruned_cos", "cosine")
    first = rng.standard_normal((400, DIM)).astype(np.float32)
    ids = [f"a{i:04d}" for i in range(len(first))]
    col.add(ids=ids, embeddings=first)  # fewer than Chroma's 1,000 per index save: all still logged
    cid = str(col.id)
    assert set(ids) <= logged_ids(chroma.path, cid)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    try:
        await wait_streaming(pg, 1)
        # 1,000 more: Chroma saves its index past the first items, syncd prunes their log rows
        more = rng.standard_normal((1000, DIM)).astype(np.float32)
        for start in range(0, len(more), 250):
            col.add(ids=[f"b{i:04d}" for i in range(start, start + 250)], embeddings=more[start:start + 250])

        async def pruned() -> None:
            position = await pg.fetchval("SELECT position FROM syncd.checkpoints WHERE stream = $1",
                                         f"chroma:{cid}")
            assert position is not None and prunable(chroma.path, cid, int(position)) == 0
            assert not set(ids) & logged_ids(chroma.path, cid)

        await wait_until(pruned, timeout=90)
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 0, log[-3000:]

    # the table holds the bits the app wrote, exactly; the server returns some a step off
    table = await table_items(pg, "pruned_cos")
    assert len(table) == 1400
    assert all(np.array_equal(table[i][0].view(np.int32), first[n].view(np.int32)) for n, i in enumerate(ids))
    served = col.get(ids=ids, include=["embeddings"])
    off = [i for i, e in zip(served["ids"], served["embeddings"], strict=True)
           if ulps(np.asarray(e, dtype=np.float32), first[ids.index(i)]) > 0]
    assert off, "the server returned every vector bit for bit: nothing here to verify"

    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step" in proc.stdout and "cosine" in proc.stdout, proc.stdout  # said, not hidden

    # a table vector further off than Chroma's rendering is still a difference
    victim = off[0]
    bent = first[ids.index(victim)].copy()
    bent[0] = np.nextafter(np.nextafter(bent[0], np.float32(np.inf)), np.float32(np.inf))
    bent[0] = np.float32(bent[0] * np.float32(1.001))
    await pg.execute("UPDATE pruned_cos SET embedding = $1::text::vector WHERE id = $2",
                     "[" + ",".join(repr(float(x)) for x in bent) + "]", victim)
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 1 and victim in proc.stdout, proc.stdout + proc.stderr
