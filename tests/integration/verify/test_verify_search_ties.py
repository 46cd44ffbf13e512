"""`syncd verify`'s search parity when items share a vector: rows as far as the exact k-th are
ties, not misses. A real Chroma server, a real pgvector, `syncd run --until-caught-up`, then
`syncd verify` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import run_syncd
from tests.integration.chroma_support import collection, run_chroma, write_config


def test_items_at_one_point_are_ties_not_a_low_recall(tmp_path: Path, pg_dsn: str) -> None:
    """Forty items share one vector (the same text embedded forty times): any ten of them are the
    exact top 10 of each, so the index's ten are as good as the exact scan's ten."""
    with run_chroma(tmp_path / "chroma") as chroma:
        col = collection(chroma.client(), "docs", "cosine")
        vecs = np.random.default_rng(3).standard_normal((60, 8)).astype(np.float32)
        vecs[:40] = vecs[0]
        col.add(ids=[f"item-{i:04d}" for i in range(60)], embeddings=vecs)
        cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
        run_syncd("--config", str(cfg), "init")
        run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=180)
        proc = run_syncd("--config", str(cfg), "verify", "--collection", "docs", "--sample-size", "60",
                         "--json", check=False)
    report = json.loads(proc.stdout)
    search = next(c for c in report["checks"] if c["kind"] == "search")
    assert search["search"]["queries"] >= 40, search
    assert search["search"]["recall_pgvector_vs_exact"] == 1.0, search
    assert proc.returncode == 0, proc.stdout + proc.stderr
