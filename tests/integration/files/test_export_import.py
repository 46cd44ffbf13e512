"""`syncd export` and `syncd import` through the real command line, on real SQLite files, a real
Chroma persist directory and PostgreSQL + pgvector.

What PostgreSQL holds is read back as text, bytes and IEEE bits (``float8send``, ``vector_send``)
and compared with what SQLite / Chroma hold, read with sqlite3 and ``typeof`` — no syncd code
decides what "equal" means.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import REPO, run_syncd, syncd_cmd

DIM = 6
KINDS = """
CREATE TABLE kinds (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB);
CREATE TABLE notes (body TEXT, n INTEGER);
CREATE TABLE tags (a TEXT, b INTEGER, label TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE INDEX notes_n ON notes (n);
"""
KIND_ROWS: list[tuple[Any, ...]] = [
    (1, 2**63 - 1, -0.0, "héllo ✓ 🎉", b"\x00\xff\x10"),
    (2, -(2**63), 5e-324, "", b""),
    (3, 2**53 + 1, 0.1, "a|b\nc", None),
    (4, None, 1.7976931348623157e308, None, b"\x80" * 100),
    (5, 0, float("inf"), "x" * 3000, b"z"),
    (6, 7, float("-inf"), "text 6", b"\x01"),
]
INVALID_UTF8_ID = 7  # TEXT holding bytes that are not UTF-8: PostgreSQL text cannot hold it


def make_app(db: Path, notes: int = 120, *, invalid_utf8: bool = True) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(KINDS)
    conn.executemany("INSERT INTO kinds VALUES (?, ?, ?, ?, ?)", KIND_ROWS)
    if invalid_utf8:  # syncd's own snapshot and verify cannot read such a row (they stop): not here
        conn.execute("INSERT INTO kinds VALUES (?, 1, 1.5, CAST(X'C3FF41' AS TEXT), NULL)",
                     (INVALID_UTF8_ID,))
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"note {i}", i * 3) for i in range(notes)])
    conn.executemany("INSERT INTO tags VALUES (?, ?, ?)", [(f"k{i % 7}", i, f"label {i}") for i in range(50)])
    conn.commit()
    conn.close()


MAKE_CHROMA = """
import json, sys
import numpy as np
import chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("docs", embedding_function=None,
                                     configuration={"hnsw": {"space": "cosine"}})
n, dim = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(7)
vecs = rng.standard_normal((n, dim)).astype(np.float32)
vecs[0, 0], vecs[1, 1], vecs[2, 2] = np.float32(-0.0), np.float32(1e-45), np.float32(3.4028235e38)
ids = [f"item-{i:04d}" for i in range(n)]
metas = [{"n": i, "tag": f"t{i % 3}", "score": i / 7, "ok": i % 2 == 0} for i in range(n)]
docs = [None if i % 5 == 0 else f"document {i} ✓" for i in range(n)]
for s in range(0, n, 100):
    col.add(ids=ids[s:s+100], embeddings=vecs[s:s+100], metadatas=metas[s:s+100], documents=docs[s:s+100])
col.update(ids=["item-0003"], metadatas=[{"n": 3, "changed": True}])
got = col.get(include=["embeddings", "documents", "metadatas"])
written = {i: vecs[k].view(np.uint32).tolist() for k, i in enumerate(ids)}  # the bits the app wrote
out = {i: {"bits": written[i], "document": d, "metadata": m}
       for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}
print(json.dumps(out))
"""


def make_chroma(persist: Path, n: int = 250) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", MAKE_CHROMA, str(persist), str(n), str(DIM)],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def config(tmp_path: Path, pg_dsn: str, *, chroma: Path | None = None, name: str = "syncd.toml") -> Path:
    lines = ["[source.sqlite]", f'path = "{tmp_path / "app.sqlite"}"']
    if chroma is not None:
        lines += ["[source.chroma]", f'path = "{chroma}"']
    lines += ["[target]", f'dsn = "{pg_dsn}"', "[state]", f'dir = "{tmp_path / "state"}"',
              "[health]", 'listen = "127.0.0.1:0"', "[stream]", "poll_interval = 0.2", "prune_interval = 0.5"]
    cfg = tmp_path / name
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def sqlite_table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def text_of(v: Any) -> str | None:
    return None if v is None else bytes(v).decode("utf-8")


async def check_kinds(pg: asyncpg.Connection, db: Path, *, invalid_utf8: bool = True) -> None:
    """Every storage class of `kinds` as PostgreSQL holds it, against SQLite's own values."""
    held = {r[0]: tuple(r[1:]) for r in await pg.fetch(
        "SELECT id, i::text, encode(float8send(r), 'hex'), t, encode(b, 'hex') FROM kinds")}
    want = {}
    for rid, i, r, t, b, tt in sqlite_table(db, "SELECT id, i, r, t, b, typeof(t) FROM kinds"):
        if rid == INVALID_UTF8_ID:
            assert tt == b"text"
            continue
        want[rid] = (None if i is None else str(i), None if r is None else struct.pack(">d", r).hex(),
                     text_of(t), None if b is None else bytes(b).hex())
    assert held == want
    assert held[5][1] == struct.pack(">d", float("inf")).hex() and held[2][1] == "0000000000000001"
    rejected = await pg.fetch("SELECT object, key::text, error FROM syncd.rejects WHERE resolved_at IS NULL")
    want_rejected = [("kinds", [INVALID_UTF8_ID])] if invalid_utf8 else []
    assert [(r[0], json.loads(r[1])) for r in rejected] == want_rejected, rejected


async def check_plain(pg: asyncpg.Connection, db: Path) -> None:
    held = sorted((r[0], r[1]) for r in await pg.fetch("SELECT body, n FROM notes"))
    assert held == sorted((text_of(b), n) for b, n in sqlite_table(db, "SELECT body, n FROM notes"))
    held_tags = sorted(tuple(r) for r in await pg.fetch("SELECT a, b, label FROM tags"))
    assert held_tags == sorted((text_of(a), b, text_of(c)) for a, b, c in
                               sqlite_table(db, "SELECT a, b, label FROM tags"))
    assert await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'notes_n'") == 1


async def check_docs(pg: asyncpg.Connection, written: dict[str, Any]) -> None:
    rows = await pg.fetch("SELECT id, vector_send(embedding) AS v, document, metadata::text AS m FROM docs")
    held = {}
    for r in rows:
        raw = bytes(r["v"])
        dim = struct.unpack(">H", raw[:2])[0]
        bits = list(struct.unpack(f">{dim}I", raw[4:4 + 4 * dim]))
        held[r["id"]] = {"bits": bits, "document": r["document"],
                         "metadata": json.loads(r["m"]) if r["m"] else None}
    assert held.keys() == written.keys()
    for item_id, w in written.items():
        assert held[item_id]["bits"] == w["bits"], item_id
        assert held[item_id]["document"] == w["document"], item_id
        assert held[item_id]["metadata"] == w["metadata"], item_id
    assert await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'docs' "
                             "AND indexdef LIKE '%hnsw%'")


def export(cfg: Path, to: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_syncd("--config", str(cfg), "export", "--to", str(to), *args, check=check)


def do_import(cfg: Path, bundle: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return run_syncd("--config", str(cfg), "import", str(bundle), *args, check=check, timeout=300)


def killed(args: list[str], point: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(syncd_cmd(*args), capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "SYNCD_KILL_AT": point})
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    return proc


async def test_round_trip_every_storage_class_and_a_collection(tmp_path: Path, pg_dsn: str,
                                                                pg: asyncpg.Connection) -> None:
    db, persist = tmp_path / "app.sqlite", tmp_path / "chroma"
    make_app(db)
    written = make_chroma(persist)
    cfg = config(tmp_path, pg_dsn, chroma=persist)
    before = db.stat().st_mtime_ns, (persist / "chroma.sqlite3").stat().st_mtime_ns
    out = export(cfg, tmp_path / "bundle", "--chunk-rows", "40")
    assert "table kinds: 7 rows" in out.stdout and "collection docs: 250 items" in out.stdout, out.stdout
    assert (db.stat().st_mtime_ns, (persist / "chroma.sqlite3").stat().st_mtime_ns) == before
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["format"] == "syncd-export" and manifest["version"] == 1
    docs = manifest["collections"][0]
    assert (docs["dimension"], docs["space"], docs["rows"], len(docs["chunks"])) == (DIM, "cosine", 250, 7)
    kinds = manifest["tables"][0]
    assert kinds["name"] == "kinds"
    chunk = (tmp_path / "bundle" / kinds["chunks"][0]["file"]).read_text()
    lines = [json.loads(x) for x in chunk.splitlines()]
    assert lines[INVALID_UTF8_ID - 1]["t"] == {"$text_hex": "c3ff41"}  # TEXT stays TEXT, not a blob
    assert lines[0]["b"] == {"$blob": "AP8Q"} and lines[0]["i"] == {"$int": str(2**63 - 1)}
    first = json.loads((tmp_path / "bundle" / docs["chunks"][0]["file"]).read_text().splitlines()[0])
    assert {"id", "embedding", "document", "metadata"} <= first.keys()

    proc = do_import(cfg, tmp_path / "bundle", "--no-skip-errors")  # the first bad row stops it
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "--skip-errors" in lines[0], proc.stderr
    assert await pg.fetchval("SELECT count(*) FROM kinds") == 0  # its chunk rolled back whole

    proc = do_import(cfg, tmp_path / "bundle", "--batch-size", "25")
    assert proc.returncode == 5, proc.stdout + proc.stderr  # equal except the quarantined row
    assert "sha256 ok" in proc.stdout and "differ" not in proc.stdout, proc.stdout
    await check_kinds(pg, db)
    await check_plain(pg, db)
    await check_docs(pg, written)


async def test_sigkill_mid_export_and_mid_import_then_resume(tmp_path: Path, pg_dsn: str,
                                                             pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db, notes=500)
    cfg = config(tmp_path, pg_dsn)
    bundle = tmp_path / "bundle"
    killed(["--config", str(cfg), "export", "--to", str(bundle), "--chunk-rows", "30"], "export:6")
    assert not (bundle / "manifest.json").exists()
    progress = json.loads((bundle / "progress.json").read_text())
    recorded = [bundle / c["file"] for t in progress["tables"] for c in t["chunks"]]
    assert len(recorded) == 6  # chunks written ahead but not recorded are written again
    kept = {p: p.stat().st_mtime_ns for p in recorded}
    out = export(cfg, bundle, "--chunk-rows", "30")
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


async def test_corrupted_chunk_newer_version_and_full_target_are_refused(tmp_path: Path, pg_dsn: str,
                                                                         pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db)
    cfg = config(tmp_path, pg_dsn)
    bundle = tmp_path / "bundle"
    export(cfg, bundle, "--chunk-rows", "50")
    manifest = json.loads((bundle / "manifest.json").read_text())
    victim = manifest["tables"][1]["chunks"][1]["file"]
    original = (bundle / victim).read_bytes()
    (bundle / victim).write_bytes(original.replace(b"note 7", b"note 8", 1))
    proc = do_import(cfg, bundle)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert victim in lines[0] and "sha256" in lines[0], lines
    assert await pg.fetchval("SELECT to_regclass('public.notes')") is None  # nothing loaded at all
    (bundle / victim).write_bytes(original)

    newer = {**manifest, "version": 3}
    (bundle / "manifest.json").write_text(json.dumps(newer))
    proc = do_import(cfg, bundle)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "format version 3 is newer" in lines[0], proc.stderr
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    await pg.execute("CREATE TABLE notes (_syncd_rowid bigint PRIMARY KEY, body text, n bigint)")
    await pg.execute("INSERT INTO notes VALUES (1, 'already here', 1)")
    proc = do_import(cfg, bundle)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "already has rows" in lines[0] and "--update-existing" in lines[0], lines
    assert await pg.fetchval("SELECT count(*) FROM notes") == 1

    proc = do_import(cfg, bundle, "--update-existing")
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    assert await pg.fetchval("SELECT count(*) FROM notes") == 120



class Writer(threading.Thread):
    """The app: inserts, updates and deletes, one transaction each, until stopped."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.done = db, threading.Event(), 0

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        i = 0
        while not self.stop.is_set():
            i += 1
            conn.execute("INSERT INTO notes VALUES (?, ?)", (f"live {i}", i))
            conn.execute("UPDATE kinds SET i = ? WHERE id = 3", (i,))
            if i % 5 == 0:
                conn.execute("DELETE FROM notes WHERE rowid = (SELECT min(rowid) FROM notes)")
            conn.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (f"k{i % 7}", i % 60, f"v{i}"))
            conn.commit()
            self.done = i
        conn.close()


async def test_export_while_the_app_writes_then_import_then_run_continues(tmp_path: Path, pg_dsn: str,
                                                                          pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db, notes=2000, invalid_utf8=False)
    cfg = config(tmp_path, pg_dsn)
    run_syncd("--config", str(cfg), "init")
    writer = Writer(db)
    writer.start()
    try:
        while writer.done < 20:
            threading.Event().wait(0.01)
        out = export(cfg, tmp_path / "bundle", "--chunk-rows", "100")
        at_export = writer.done
        while writer.done < at_export + 30:
            threading.Event().wait(0.01)
    finally:
        writer.stop.set()
        writer.join()
    assert "capture position" in out.stdout, out.stdout
    proc = do_import(cfg, tmp_path / "bundle")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "continues from there" in proc.stdout
    at = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["sqlite"]["capture"]["position"]
    head = sqlite_table(db, "SELECT max(id) FROM _syncd_changelog")[0][0]
    assert 0 < at < head  # the app wrote before and after the export
    assert await pg.fetchval("SELECT position FROM syncd.checkpoints WHERE stream = 'sqlite'") == at
    run_syncd("--config", str(cfg), "run", "--until-caught-up", "--timeout", "120", timeout=180)
    verify = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    bad = [c for c in json.loads(verify.stdout)["checks"] if not c["ok"]]
    assert verify.returncode == 0, [(c["name"], c["detail"]) for c in bad]
    await check_kinds(pg, db, invalid_utf8=False)
    await check_plain(pg, db)
