"""`syncd verify` and Chroma's vector doubt (docs/verify.md, "Vector doubts").

Ids whose UPDATE (made while the id was missing) Chroma's index applied after their ADD: saved
past the ADD, syncd holds the UPDATE's vector (what a restarted Chroma returns) while the log's
last image is the ADD's; not saved yet, syncd holds the ADD's with an open record. verify must
call neither a difference, and still find a vector one float32 step off either candidate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma.test_chroma_vector_doubt import (
    DIM,
    SYNC_THRESHOLD,
    hnsw_saved,
    last_seq,
    open_collection,
    update_then_add,
)
from tests.integration.chroma_support import ChromaServer, run_chroma, write_config


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def differences(cfg: Path) -> tuple[int, list[tuple[list[str], str, list[str]]]]:
    proc = run_syncd("--config", str(cfg), "verify", "--json", "--collection", "drift", "--sample-size", "0",
                     check=False, timeout=180)
    out = json.loads(proc.stdout)
    check = next(c for c in out["checks"] if c["kind"] == "collection")
    return proc.returncode, sorted((d["key"], d["kind"], d["columns"]) for d in check["differences"])


def one_step_off(v: np.ndarray) -> str:
    w = v.astype(np.float32).copy()
    w[1] = np.nextafter(w[1], np.float32(np.inf))
    return "[" + ",".join(np.format_float_positional(x, unique=True, trim="0") for x in w) + "]"


async def test_either_recorded_candidate_is_not_a_difference(tmp_path: Path, chroma: ChromaServer,
                                                             pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(7)
    col = open_collection(chroma, "l2")
    col.add(ids=[f"seed{i}" for i in range(5)], embeddings=rng.standard_normal((5, DIM)).astype(np.float32))
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    run_syncd("--config", str(cfg), "init")
    saved_ids = ["x0", "x1"]
    updated, _ = update_then_add(col, saved_ids, rng)       # saved past the ADD: the UPDATE's for good
    col.add(ids=[f"fill{i}" for i in range(SYNC_THRESHOLD)],
            embeddings=rng.standard_normal((SYNC_THRESHOLD, DIM)).astype(np.float32))
    assert hnsw_saved(chroma) == last_seq(chroma)
    chroma.stop()
    chroma.start()
    col = open_collection(chroma, "l2")
    update_then_add(col, ["y0", "y1"], rng)                    # not saved yet: the ADD's, recorded
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    held = await pg.fetchval("SELECT embedding::text FROM drift WHERE id = 'x0'")
    assert np.array_equal(np.array(json.loads(held), dtype=np.float32), updated[0])
    assert await pg.fetchval("SELECT count(*) FROM syncd.chroma_vector_doubt") == 2

    assert differences(cfg) == (0, [])

    y0 = await pg.fetchval("SELECT embedding::text FROM drift WHERE id = 'y0'")
    await pg.execute(f"UPDATE drift SET embedding = '{one_step_off(updated[0])}' WHERE id = 'x0'")
    await pg.execute(f"UPDATE drift SET embedding = '{one_step_off(np.array(json.loads(y0)))}' "
                     "WHERE id = 'y0'")
    assert differences(cfg) == (1, [(["x0"], "changed", ["embedding"]), (["y0"], "changed", ["embedding"])])
