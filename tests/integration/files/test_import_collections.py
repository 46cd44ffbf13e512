"""Collections through `syncd export` / `syncd import`: a SIGKILL mid-collection then resume,
`--update-existing` over stale items, and the Chroma stream continuing from the bundle's log
position with the changes the app made after the export.

What PostgreSQL holds is read back as IEEE bits (``vector_send``), text and JSON, and compared
with what the app wrote and what Chroma itself returns (``collection.get``) — no syncd code
decides what "equal" means.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import REPO, run_syncd
from tests.integration.files.test_export_import import (
    DIM,
    config,
    do_import,
    export,
    killed,
    make_app,
    make_chroma,
)

MUTATE_CHROMA = """
import json, sys
import numpy as np
import chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_collection("docs", embedding_function=None)
rng = np.random.default_rng(11)
late = [f"late-{i:03d}" for i in range(40)]
late_vecs = rng.standard_normal((40, {dim})).astype(np.float32)
col.add(ids=late, embeddings=late_vecs, metadatas=[{"late": i} for i in range(40)],
        documents=[f"late {i}" for i in range(40)])
moved = [f"item-{i:04d}" for i in range(10, 20)]
moved_vecs = rng.standard_normal((10, {dim})).astype(np.float32)
col.update(ids=moved, embeddings=moved_vecs)
col.update(ids=["item-0021"], metadatas=[{"n": 21, "edited": "yes"}])
gone = [f"item-{i:04d}" for i in range(30, 40)]
col.delete(ids=gone)
got = col.get(include=["documents", "metadatas"])
bits = {i: v.view(np.uint32).tolist() for i, v in [*zip(late, late_vecs), *zip(moved, moved_vecs)]}
print(json.dumps({"bits": bits, "gone": gone,
                  "rest": {i: {"document": d, "metadata": m}
                           for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}}))
""".replace("{dim}", str(DIM))


def mutate_chroma(persist: Path, before: dict[str, Any]) -> dict[str, Any]:
    """What the app writes after the export, and the items Chroma then holds: the vectors as the
    app wrote them (Chroma's own `get` of a cosine collection returns them normalised by its index,
    a bit off), documents and metadata as Chroma returns them."""
    out = subprocess.run([sys.executable, "-c", MUTATE_CHROMA, str(persist)],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    bits = {i: v["bits"] for i, v in before.items() if i not in data["gone"]} | data["bits"]
    assert bits.keys() == data["rest"].keys()
    return {i: {"bits": bits[i], **data["rest"][i]} for i in bits}


async def held_items(pg: asyncpg.Connection) -> dict[str, Any]:
    rows = await pg.fetch("SELECT id, vector_send(embedding) AS v, document, metadata::text AS m FROM docs")
    held = {}
    for r in rows:
        raw = bytes(r["v"])
        dim = struct.unpack(">H", raw[:2])[0]
        held[r["id"]] = {"bits": list(struct.unpack(f">{dim}I", raw[4:4 + 4 * dim])),
                         "document": r["document"], "metadata": json.loads(r["m"]) if r["m"] else None}
    return held


def assert_same(held: dict[str, Any], want: dict[str, Any]) -> None:
    extra, lacking = sorted(held.keys() - want.keys()), sorted(want.keys() - held.keys())
    assert not extra and not lacking, (extra[:5], lacking[:5])
    wrong = [i for i in want if held[i] != want[i]]
    assert not wrong, [(i, k, held[i][k], want[i][k]) for i in wrong[:3] for k in want[i]
                       if held[i][k] != want[i][k]]


async def test_collection_import_killed_then_resumed_then_the_stream_continues(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    await killed_resumed_continued(tmp_path, pg_dsn, pg)


async def test_verify_after_an_import_and_metadata_only_updates(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    cfg = await killed_resumed_continued(tmp_path, pg_dsn, pg)
    verify = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    assert verify.returncode == 0, verify.stdout[:4000]


async def killed_resumed_continued(tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> Path:
    """Export, the app writes on, SIGKILL inside the collection's import, resume, `run`: the
    bundle's moment after the import, the app's latest writes after the run; the config."""
    db, persist = tmp_path / "app.sqlite", tmp_path / "chroma"
    make_app(db, invalid_utf8=False)
    at_export = make_chroma(persist)
    cfg = config(tmp_path, pg_dsn, chroma=persist)
    run_syncd("--config", str(cfg), "init")  # keeps Chroma's log for the stream that continues
    bundle = tmp_path / "bundle"
    export(cfg, bundle, "--chunk-rows", "40")
    after = mutate_chroma(persist, at_export)
    assert after != at_export

    # tables load first (kinds 1 chunk, notes 3, tags 2): the 9th chunk is inside the collection
    killed(["--config", str(cfg), "import", str(bundle), "--batch-size", "40"], "import:9")
    loaded = await pg.fetchval("SELECT count(*) FROM docs")
    assert 0 < loaded < 250, loaded
    proc = do_import(cfg, bundle, "--batch-size", "40")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming the import" in proc.stdout and "already loaded" in proc.stdout, proc.stdout
    assert_same(await held_items(pg), at_export)  # the bundle's moment, not the app's later writes

    run_syncd("--config", str(cfg), "run", "--until-caught-up", "--timeout", "120", timeout=180)
    assert_same(await held_items(pg), after)
    return cfg


async def test_update_existing_overwrites_stale_items_and_keeps_the_others(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    db, persist = tmp_path / "app.sqlite", tmp_path / "chroma"
    make_app(db, invalid_utf8=False)
    want = make_chroma(persist)
    cfg = config(tmp_path, pg_dsn, chroma=persist)
    bundle = tmp_path / "bundle"
    export(cfg, bundle, "--chunk-rows", "40", "--collection", "docs")
    proc = do_import(cfg, bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the target drifts: an item changed, one deleted, one that Chroma never had
    await pg.execute("UPDATE docs SET document = 'stale', metadata = '{\"stale\": true}', "
                     "embedding = array_fill(0.5::real, ARRAY[$1::int])::vector WHERE id = 'item-0005'", DIM)
    await pg.execute("DELETE FROM docs WHERE id = 'item-0006'")
    await pg.execute("INSERT INTO docs (id, embedding, document) SELECT 'only-here', embedding, 'x' "
                     "FROM docs WHERE id = 'item-0007'")

    proc = do_import(cfg, bundle)
    assert proc.returncode == 1 and "--update-existing" in proc.stderr, proc.stdout + proc.stderr
    proc = do_import(cfg, bundle, "--update-existing")
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    held = await held_items(pg)
    assert held.pop("only-here")["document"] == "x"  # upserts: rows the bundle lacks stay
    assert_same(held, want)

    # the target drifts again: the same bundle, imported over it once more, mends it again
    await pg.execute("UPDATE docs SET document = 'stale again' WHERE id IN ('item-0001', 'item-0249')")
    proc = do_import(cfg, bundle, "--update-existing")
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    held = await held_items(pg)
    held.pop("only-here")
    assert_same(held, want)


async def test_an_unfinished_import_of_another_bundle_is_named_not_mixed(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db, notes=300, invalid_utf8=False)
    cfg = config(tmp_path, pg_dsn)
    first, second = tmp_path / "first", tmp_path / "second"
    export(cfg, first, "--chunk-rows", "30")
    export(cfg, second, "--chunk-rows", "50")
    killed(["--config", str(cfg), "import", str(first), "--batch-size", "30"], "import:4")
    loaded = await pg.fetchval("SELECT count(*) FROM notes")

    proc = do_import(cfg, second)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert str(first) in lines[0] and f"syncd import {first}" in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert await pg.fetchval("SELECT count(*) FROM notes") == loaded  # nothing of the second loaded

    proc = do_import(cfg, first, "--batch-size", "30")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert await pg.fetchval("SELECT count(*) FROM notes") == 300
    assert await pg.fetchval("SELECT count(*) FROM syncd.imports") == 0  # finished: no record left
