"""`syncd export --format parquet` and `syncd import` of a parquet bundle, through the real command
line on real SQLite, Chroma and PostgreSQL + pgvector.

PostgreSQL's rows are read back as text, bytes and IEEE bits and compared with SQLite's and
Chroma's own values (the helpers of test_export_import); the parquet files are read with
pyarrow itself, not with syncd's reader.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import REPO
from tests.integration.files.test_export_import import (
    check_docs,
    check_kinds,
    check_plain,
    config,
    do_import,
    export,
    killed,
    make_app,
    make_chroma,
    sqlite_table,
)

MIXED: list[tuple[int, Any]] = [(1, 5), (2, 2.5), (3, "five"), (4, b"AB"), (5, None), (6, 2**62),
                                (7, float("-inf"))]


def add_mixed(db: Path) -> None:
    """A column without declared type whose storage class varies per row."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mixed (id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO mixed VALUES (?, ?)", MIXED)
    conn.commit()
    conn.close()


def hashes(bundle: Path) -> list[tuple[str, int, int, str]]:
    m = json.loads((bundle / "manifest.json").read_text())
    return [(o["name"], c["rows"], c["hashed"], c["row_xor"])
            for o in [*m["tables"], *m["collections"]] for c in o["chunks"]]


def read_parquet(bundle: Path, obj: dict[str, Any]) -> pa.Table:
    return pa.concat_tables([pq.read_table(bundle / c["file"]) for c in obj["chunks"]])


async def test_parquet_round_trip_of_every_storage_class_and_a_collection(tmp_path: Path, pg_dsn: str,
                                                                          pg: asyncpg.Connection) -> None:
    db, persist = tmp_path / "app.sqlite", tmp_path / "chroma"
    make_app(db)
    add_mixed(db)
    written = make_chroma(persist)
    cfg = config(tmp_path, pg_dsn, chroma=persist)
    export(cfg, tmp_path / "jsonl", "--chunk-rows", "40")
    out = export(cfg, tmp_path / "pq", "--chunk-rows", "40", "--format", "parquet")
    assert "parquet chunks" in out.stdout, out.stdout
    bundle = tmp_path / "pq"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["version"], manifest["chunk_format"]) == (2, "parquet")
    # the row hashes are verify's canonical encoding of the source rows: the same in either format
    assert hashes(bundle) == hashes(tmp_path / "jsonl")
    tables = {t["name"]: t for t in manifest["tables"]}

    kinds = read_parquet(bundle, tables["kinds"])
    assert [str(f.type) for f in kinds.schema] == ["int64", "int64", "double", "string", "binary"]
    # TEXT that is not UTF-8 (row 7) makes its chunk's column the JSON value encoding, TEXT kept
    assert kinds.schema.field("t").metadata == {b"syncd.encoding": b"json"}
    texts = kinds.column("t").to_pylist()
    assert texts[0] == '"héllo ✓ 🎉"' and texts[6] == '{"$text_hex": "c3ff41"}' and texts[3] is None
    raw = sqlite_table(db, "SELECT id, i, r, b FROM kinds ORDER BY id")
    got = kinds.to_pydict()
    assert [(r[0], r[1], struct.pack(">d", r[2]) if r[2] is not None else None, r[3]) for r in raw] == [
        (a, b, struct.pack(">d", c) if c is not None else None, d)
        for a, b, c, d in zip(got["id"], got["i"], got["r"], got["b"], strict=True)]

    mixed = read_parquet(bundle, tables["mixed"])
    field = mixed.schema.field("v")
    assert field.type == pa.string() and field.metadata == {b"syncd.encoding": b"json"}
    classes = dict(sqlite_table(db, "SELECT id, typeof(v) FROM mixed"))
    values = dict(zip(mixed.column("id").to_pylist(), mixed.column("v").to_pylist(), strict=True))
    assert values[1] == "5" and values[2] == "2.5" and values[3] == '"five"' and values[5] is None
    assert values[4] == '{"$blob": "QUI="}' and values[7] == '{"$real": "-inf"}'
    assert classes[1] == b"integer" and classes[2] == b"real" and classes[4] == b"blob"

    docs = manifest["collections"][0]
    items = read_parquet(bundle, docs)
    assert items.schema.field("embedding").type == pa.list_(pa.float32(), 6)
    emb = items.column("embedding").combine_chunks()
    bits = emb.values.to_numpy().view("uint32").reshape(-1, 6)
    for k, item_id in enumerate(items.column("id").to_pylist()):
        assert bits[k].tolist() == written[item_id]["bits"], item_id
        meta = items.column("metadata")[k].as_py()
        assert json.loads(meta) == written[item_id]["metadata"], item_id

    proc = do_import(cfg, bundle, "--batch-size", "25")
    assert proc.returncode == 5, proc.stdout + proc.stderr  # equal except the quarantined row
    assert "sha256 ok" in proc.stdout and "differ" not in proc.stdout, proc.stdout
    assert "search recall@10" in proc.stdout, proc.stdout
    await check_kinds(pg, db)
    await check_plain(pg, db)
    await check_docs(pg, written)
    held = {r[0]: r[1] for r in await pg.fetch("SELECT id, v::text FROM mixed")}
    assert held.keys() == {i for i, _ in MIXED}


async def test_corrupted_parquet_chunk_is_refused_naming_it(tmp_path: Path, pg_dsn: str,
                                                            pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db)
    cfg = config(tmp_path, pg_dsn)
    bundle = tmp_path / "bundle"
    export(cfg, bundle, "--chunk-rows", "50", "--format", "parquet")
    manifest = json.loads((bundle / "manifest.json").read_text())
    victim = manifest["tables"][1]["chunks"][1]["file"]
    original = (bundle / victim).read_bytes()
    table = pq.read_table(bundle / victim)
    body = table.column("body").to_pylist()
    body[3] = body[3] + "!"
    pq.write_table(table.set_column(table.schema.get_field_index("body"), "body", pa.array(body)),
                   bundle / victim)  # a valid parquet file with one value changed
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x40
    for damaged in ((bundle / victim).read_bytes(), bytes(flipped)):
        (bundle / victim).write_bytes(damaged)
        proc = do_import(cfg, bundle)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert victim in lines[0] and "sha256" in lines[0], lines
        assert await pg.fetchval("SELECT to_regclass('public.notes')") is None  # nothing loaded at all
    (bundle / victim).write_bytes(original)
    proc = do_import(cfg, bundle)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    await check_plain(pg, db)


async def test_parquet_sigkill_mid_export_and_mid_import_then_resume(tmp_path: Path, pg_dsn: str,
                                                                     pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db, notes=500)
    cfg = config(tmp_path, pg_dsn)
    bundle = tmp_path / "bundle"
    args = ["--config", str(cfg), "export", "--to", str(bundle), "--chunk-rows", "30", "--format", "parquet"]
    killed(args, "export:6")
    assert not (bundle / "manifest.json").exists()
    progress = json.loads((bundle / "progress.json").read_text())
    recorded = [bundle / c["file"] for t in progress["tables"] for c in t["chunks"]]
    assert len(recorded) == 6 and all(p.suffix == ".parquet" for p in recorded)
    kept = {p: p.stat().st_mtime_ns for p in recorded}
    proc = export(cfg, bundle, "--chunk-rows", "30", check=False)  # resumed in another format: refused
    assert proc.returncode == 1 and "--format parquet" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    out = export(cfg, bundle, "--chunk-rows", "30", "--format", "parquet")
    assert "table notes: 500 rows" in out.stdout, out.stdout
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # kept, not written again
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [t["rows"] for t in manifest["tables"]] == [7, 500, 50]

    killed(["--config", str(cfg), "import", str(bundle), "--batch-size", "30"], "import:9")
    loaded = await pg.fetchval("SELECT count(*) FROM notes")
    assert 0 < loaded < 500
    proc = do_import(cfg, bundle, "--batch-size", "30")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "resuming the import" in proc.stdout, proc.stdout
    await check_kinds(pg, db)
    await check_plain(pg, db)


HIDDEN = """
import runpy, sys
sys.modules["pyarrow"] = None  # this syncd as installed without the parquet extra
sys.argv = ["syncd", *sys.argv[1:]]
runpy.run_module("syncd.cli", run_name="__main__")
"""


def without_pyarrow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HIDDEN, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_without_pyarrow_parquet_is_refused_in_one_line(tmp_path: Path, pg_dsn: str) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db, notes=10)
    cfg = config(tmp_path, pg_dsn)
    proc = without_pyarrow("--config", str(cfg), "export", "--to", str(tmp_path / "pq"), "--format",
                           "parquet")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "pyarrow" in lines[0], proc.stderr
    assert not (tmp_path / "pq").exists()
    export(cfg, tmp_path / "bundle", "--format", "parquet")
    proc = without_pyarrow("--config", str(cfg), "import", str(tmp_path / "bundle"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "pyarrow" in lines[0], proc.stderr
    proc = without_pyarrow("--config", str(cfg), "export", "--to", str(tmp_path / "jsonl"))
    assert proc.returncode == 0, proc.stderr  # JSONL needs no pyarrow
