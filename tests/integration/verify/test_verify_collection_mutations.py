"""verify's own expectation of a collection's rows, proven by mutations through `syncd verify`.

A real Chroma server and pgvector are brought into sync by `syncd run --until-caught-up`; then
one cell per item is corrupted in PostgreSQL the way a buggy loader would (a vector component
one float32 step off, a metadata value changed, a key added or removed, a document changed or
NULL instead of empty, a mapped column changed). The command line must first say the equal
stores are equal, then name every corrupted item with its id and field, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.integration.chroma_support import ChromaServer, collection, run_chroma, write_config

MAPPED = """
[[target.collections]]
name = "docs"
table = "doc_vectors"
[target.collections.columns]
id = "id"
embedding = "embedding"
content = "document"
meta = "metadata"
user_id = "metadata.userId"
rank = "metadata.rank"
flag = "metadata.flag"
tags = "metadata.tags"
mixed = "metadata.mixed"
"""
DIM = 8


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def fill(col: Any, n: int) -> None:
    rng = np.random.default_rng(17)
    ids = [f"id{i:03d}" for i in range(n)]
    docs: list[str | None] = [f"document {i}" for i in range(n)]
    docs[1] = None
    docs[2] = ""
    metas: list[dict[str, Any] | None] = [
        {"userId": f"u{i % 5}", "rank": i, "color": ["red", "blue"][i % 2], "score": i / 3,
         "flag": i % 3 == 0, "tags": [f"t{i}", f"t{i + 1}"], "mixed": bool(i % 2) if i % 4 else f"m{i}"}
        for i in range(n)]
    metas[3] = {"userId": "u3", "rank": 3}   # no unmapped key: metadata column NULL
    col.add(ids=ids, embeddings=rng.standard_normal((n, DIM)).astype(np.float32), documents=docs,
            metadatas=metas)


def one_step_off(text: str, at: int) -> str:
    """pgvector's text of the vector with component *at* one float32 step up."""
    v = np.array(json.loads(text), dtype=np.float32)
    v[at] = np.nextafter(v[at], np.float32(np.inf))
    return "[" + ",".join(np.format_float_positional(x, unique=True, trim="0") for x in v) + "]"


def differences(cfg: Path) -> tuple[int, list[tuple[list[Any], str, list[str]]]]:
    proc = run_syncd("--config", str(cfg), "verify", "--json", "--collection", "docs", "--sample-size", "0",
                     check=False, timeout=180)
    out = json.loads(proc.stdout)
    check = next(c for c in out["checks"] if c["kind"] == "collection")
    return proc.returncode, sorted((d["key"], d["kind"], d["columns"]) for d in check["differences"])


async def test_each_corrupted_cell_is_found_with_its_id_and_field(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    fill(collection(chroma.client(), "docs", "l2"), 40)
    cfg = write_config(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=MAPPED)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=180)

    code, found = differences(cfg)
    assert (code, found) == (0, []), found

    vec = await pg.fetchval("SELECT embedding::text FROM doc_vectors WHERE id = 'id010'")
    harm = [
        (f"UPDATE doc_vectors SET embedding = '{one_step_off(vec, 5)}' WHERE id = 'id010'",
         "id010", ["embedding"]),
        ("UPDATE doc_vectors SET meta = jsonb_set(meta, '{color}', '\"green\"') WHERE id = 'id011'",
         "id011", ["metadata.color"]),
        ("UPDATE doc_vectors SET meta = jsonb_set(meta, '{score}', '4.0000001') WHERE id = 'id012'",
         "id012", ["metadata.score"]),
        ("UPDATE doc_vectors SET meta = meta || '{\"extra\": 1}' WHERE id = 'id013'",
         "id013", ["metadata.extra"]),
        ("UPDATE doc_vectors SET meta = meta - 'color' WHERE id = 'id014'", "id014", ["metadata.color"]),
        ("UPDATE doc_vectors SET meta = '{}' WHERE id = 'id003'", "id003", ["metadata"]),
        ("UPDATE doc_vectors SET content = content || ' ' WHERE id = 'id015'", "id015", ["content"]),
        ("UPDATE doc_vectors SET content = '' WHERE id = 'id001'", "id001", ["content"]),
        ("UPDATE doc_vectors SET content = NULL WHERE id = 'id002'", "id002", ["content"]),
        ("UPDATE doc_vectors SET rank = rank + 1 WHERE id = 'id016'", "id016", ["metadata.rank"]),
        ("UPDATE doc_vectors SET user_id = NULL WHERE id = 'id017'", "id017", ["metadata.userId"]),
        ("UPDATE doc_vectors SET flag = NOT flag WHERE id = 'id018'", "id018", ["metadata.flag"]),
        ("UPDATE doc_vectors SET tags = '[\"t19\", \"t21\"]' WHERE id = 'id019'", "id019", ["metadata.tags"]),
        ("UPDATE doc_vectors SET mixed = 'true' WHERE id = 'id021'", "id021", ["metadata.mixed"]),
    ]
    for sql, _, _ in harm:
        assert await pg.execute(sql) == "UPDATE 1", sql
    code, found = differences(cfg)
    assert code == 1
    assert found == sorted(([key], "changed", cols) for _, key, cols in harm), found
