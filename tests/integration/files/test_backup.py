"""`syncd backup` and `syncd restore` through the real command line, on real SQLite files and a real
Chroma (`chroma run` while the app writes; Chroma's own PersistentClient reopens the copies).

Neither command touches PostgreSQL: the configs point the target at a server that is never asked.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import REPO, run_syncd
from tests.integration.chroma_support import collection, run_chroma

DIM = 8


def write_config(tmp_path: Path, *, chroma: Path | None = None, backup: str = "") -> Path:
    lines = ["[source.sqlite]", f'path = "{tmp_path / "app.sqlite"}"']
    if chroma is not None:
        lines += ["[source.chroma]", f'path = "{chroma}"']
    lines += ["[target]", 'dsn = "postgresql://nobody@127.0.0.1:1/none"',
              "[state]", f'dir = "{tmp_path / "state"}"', "[backup]", backup]
    cfg = tmp_path / "syncd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def make_app(tmp_path: Path, rows: int = 50) -> Path:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return db


def note_ids(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id")]
    finally:
        conn.close()


def backups(cfg_dir: Path) -> list[Path]:
    root = cfg_dir / "state" / "backups"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def vec(i: int) -> list[float]:
    return [float(np.float32(np.sin(i * 7.3 + k))) for k in range(DIM)]


class SqliteWriter(threading.Thread):
    """The app: one row per transaction, ids 1, 2, 3, ...; `committed` counts what has committed."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.committed = db, threading.Event(), len(note_ids(db))

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        while not self.stop.is_set():
            conn.execute("INSERT INTO notes (body) VALUES (?)", (f"note {self.committed}",))
            conn.commit()
            self.committed += 1
        conn.close()


class ChromaWriter(threading.Thread):
    """The app's vector writes: batches of 10 items, ids i0000, i0001, ... in order."""

    def __init__(self, col: Any, start: int) -> None:
        super().__init__(daemon=True)
        self.col, self.stop, self.committed = col, threading.Event(), start

    def run(self) -> None:
        while not self.stop.is_set():
            ids = range(self.committed, self.committed + 10)
            self.col.add(ids=[f"i{i:04d}" for i in ids], embeddings=[vec(i) for i in ids],
                         documents=[f"doc {i}" for i in ids], metadatas=[{"n": i} for i in ids])
            self.committed += 10


PROBE = """
import json, sys
import chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_collection("docs", embedding_function=None)
got = col.get(include=["embeddings", "documents", "metadatas"])
probe = json.loads(sys.argv[2])
res = col.query(query_embeddings=[probe], n_results=1, include=["documents"])
print(json.dumps({"count": col.count(), "ids": got["ids"], "documents": got["documents"],
                  "metadatas": got["metadatas"],
                  "embeddings": [[float(x) for x in e] for e in got["embeddings"]],
                  "nearest": res["ids"][0]}))
"""


def probe(persist: Path, query: list[float]) -> dict[str, Any]:
    """Open *persist* with Chroma's own PersistentClient in a separate process: get and query."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(persist), json.dumps(query)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def assert_chroma_prefix(data: dict[str, Any], low: int, high: int) -> int:
    """The collection holds items 0 .. n-1 (a prefix of the writes) with low <= n <= high, intact."""
    n = data["count"]
    assert low <= n <= high, (low, n, high)
    assert sorted(data["ids"]) == [f"i{i:04d}" for i in range(n)]
    for item_id, doc, meta, emb in zip(data["ids"], data["documents"], data["metadatas"], data["embeddings"],
                                       strict=True):
        i = int(item_id[1:])
        assert doc == f"doc {i}" and meta == {"n": i}, (item_id, doc, meta)
        want = np.asarray(vec(i), dtype=np.float32)
        assert np.array_equal(np.asarray(emb, dtype=np.float32), want), item_id
    return int(n)


def test_backup_while_the_app_writes_then_restore(tmp_path: Path) -> None:
    db = make_app(tmp_path)
    persist = tmp_path / "chroma"
    cfg = write_config(tmp_path, chroma=persist)
    with run_chroma(persist) as server:
        col = collection(server.client(), "docs")
        for start in range(0, 1500, 100):  # past Chroma's first write of its HNSW files
            ids = range(start, start + 100)
            col.add(ids=[f"i{i:04d}" for i in ids], embeddings=[vec(i) for i in ids],
                    documents=[f"doc {i}" for i in ids], metadatas=[{"n": i} for i in ids])
        writers = [SqliteWriter(db), ChromaWriter(col, 1500)]
        for w in writers:
            w.start()
        while writers[0].committed < 200:
            threading.Event().wait(0.01)
        low = [w.committed for w in writers]
        out = run_syncd("--config", str(cfg), "backup")
        high = [w.committed for w in writers]
        for w in writers:
            w.stop.set()
            w.join(timeout=60)
        # the app goes on after the backup: later rows, a deleted row, a deleted item
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM notes WHERE id = 1")
        conn.execute("INSERT INTO notes (body) VALUES ('after the backup')")
        conn.commit()
        conn.close()
        col.delete(ids=["i0000"])
        [backup] = backups(tmp_path)
        refused = run_syncd("--config", str(cfg), "restore", str(backup), check=False)
        assert refused.returncode == 1, refused
        assert f"{persist / 'chroma.sqlite3'} is open in process" in refused.stderr, refused.stderr
    assert "integrity_check ok" in out.stdout, out.stdout
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["sqlite"]["integrity_check"] == "ok"
    listed = sorted(f["path"] for f in manifest["files"])
    assert "sqlite/app.sqlite" in listed and "chroma/chroma.sqlite3" in listed, listed
    assert not [p for p in listed if p.endswith(("-wal", "-shm", "-journal"))], listed

    # the copy itself: Chroma reopens it and answers get and query (opening writes: on a copy of it)
    shutil.copytree(backup / "chroma", tmp_path / "probe")
    copied = assert_chroma_prefix(probe(tmp_path / "probe", vec(7)), low[1], high[1])
    assert manifest["chroma"]["collections"] == {"docs": copied}

    dry = run_syncd("--config", str(cfg), "restore", str(backup), "--dry-run")
    assert "will overwrite" in dry.stdout and "nothing was changed" in dry.stdout, dry.stdout
    assert 1 not in note_ids(db)

    run_syncd("--config", str(cfg), "restore", str(backup))
    ids = note_ids(db)
    assert low[0] <= len(ids) <= high[0], (low[0], len(ids), high[0])
    assert ids == list(range(1, len(ids) + 1))
    assert manifest["sqlite"]["tables"] == {"notes": len(ids)}
    restored = probe(persist, vec(7))
    assert assert_chroma_prefix(restored, low[1], high[1]) == copied
    assert restored["nearest"] == ["i0007"]


def test_restore_refuses_while_the_app_holds_the_file(tmp_path: Path) -> None:
    db = make_app(tmp_path)
    cfg = write_config(tmp_path)
    run_syncd("--config", str(cfg), "backup")
    [backup] = backups(tmp_path)
    app = sqlite3.connect(db)
    try:
        app.execute("INSERT INTO notes (body) VALUES ('kept')")
        app.commit()
        proc = run_syncd("--config", str(cfg), "restore", str(backup), check=False)
    finally:
        app.close()
    assert proc.returncode == 1, proc
    err = proc.stderr.strip()
    assert err.startswith("syncd: restore: ") and "nothing was changed" in err and "\n" not in err, err
    assert str(db) in err and "is open in process" in err, err
    assert note_ids(db) == list(range(1, 52))


def test_restore_refuses_a_corrupted_backup(tmp_path: Path) -> None:
    db = make_app(tmp_path)
    cfg = write_config(tmp_path)
    run_syncd("--config", str(cfg), "backup")
    [backup] = backups(tmp_path)
    copy = backup / "sqlite" / "app.sqlite"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO notes (body) VALUES ('after')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    proc = run_syncd("--config", str(cfg), "restore", str(backup), check=False)
    assert proc.returncode == 1
    assert "sqlite/app.sqlite does not match its sha256" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and db.read_bytes() == before


def test_restore_refuses_a_newer_format_version(tmp_path: Path) -> None:
    make_app(tmp_path)
    cfg = write_config(tmp_path)
    run_syncd("--config", str(cfg), "backup")
    [backup] = backups(tmp_path)
    path = backup / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = 99
    path.write_text(json.dumps(manifest))
    proc = run_syncd("--config", str(cfg), "restore", str(backup), "--dry-run", check=False)
    assert proc.returncode == 1
    assert "format version 99 is newer than this syncd reads (1)" in proc.stderr, proc.stderr


def test_backup_refuses_when_the_disk_would_fill(tmp_path: Path) -> None:
    make_app(tmp_path)
    cfg = write_config(tmp_path, backup="min_free_mb = 1000000000")
    proc = run_syncd("--config", str(cfg), "backup", check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert "not enough disk space" in err and "backup.min_free_mb" in err and "\n" not in err, err
    assert backups(tmp_path) == []


def test_backup_keeps_the_newest(tmp_path: Path) -> None:
    db = make_app(tmp_path)
    cfg = write_config(tmp_path, backup="keep = 2")
    for i in range(3):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO notes (body) VALUES (?)", (f"round {i}",))
        conn.commit()
        conn.close()
        run_syncd("--config", str(cfg), "backup")
    kept = backups(tmp_path)
    counts = [json.loads((b / "manifest.json").read_text())["sqlite"]["tables"]["notes"] for b in kept]
    assert counts == [52, 53]


def test_init_takes_a_backup_before_it_installs_capture(tmp_path: Path, make_config: Any) -> None:
    db = make_app(tmp_path)
    cfg = make_config(db)
    out = run_syncd("--config", str(cfg), "init").stdout
    [backup] = backups(tmp_path)
    assert backup.name.endswith("-init") and f"backup written: {backup}" in out, out

    def tables(path: Path) -> set[str]:
        conn = sqlite3.connect(path)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        finally:
            conn.close()

    assert "_syncd_changelog" in tables(db)
    assert "_syncd_changelog" not in tables(backup / "sqlite" / "app.sqlite")
    assert note_ids(backup / "sqlite" / "app.sqlite") == note_ids(db)
    shown = run_syncd("--config", str(cfg), "status").stdout
    assert f"backups: 1 in {backup.parent}, newest {backup.name}" in shown, shown

    cfg = make_config(db, extra="[backup]\nauto = false\n")
    run_syncd("--config", str(cfg), "init")
    assert backups(tmp_path) == [backup]


KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA wal_autocheckpoint=0")
for i in range(200):
    conn.execute("INSERT INTO notes (body) VALUES ('lost with the old file')")
    conn.commit()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_restore_over_a_crashed_app_leaves_no_old_wal_behind(tmp_path: Path) -> None:
    """The app died with committed pages only in its -wal: the restored file must not get them."""
    db = make_app(tmp_path)
    cfg = write_config(tmp_path)
    run_syncd("--config", str(cfg), "backup")
    [backup] = backups(tmp_path)
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(db)], timeout=60)
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    run_syncd("--config", str(cfg), "restore", str(backup))
    assert note_ids(db) == list(range(1, 51))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_a_backup_killed_part_way_is_not_a_backup_and_is_cleaned_up(tmp_path: Path) -> None:
    make_app(tmp_path)
    cfg = write_config(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = tmp_path / "state" / "backups"
    partial = root / f"syncd-backup-20260101T000000000000Z-manual.{gone.pid}.partial"
    (partial / "sqlite").mkdir(parents=True)
    (partial / "sqlite" / "app.sqlite").write_bytes(b"half a copy")
    proc = run_syncd("--config", str(cfg), "restore", str(partial), "--dry-run", check=False)
    assert proc.returncode == 1 and "not a syncd backup (no manifest.json)" in proc.stderr, proc.stderr
    run_syncd("--config", str(cfg), "backup")
    assert not partial.exists()
    [backup] = backups(tmp_path)
    assert backup.name.endswith("-manual") and (backup / "manifest.json").is_file()


def test_paths_with_uri_characters(tmp_path: Path) -> None:
    root = tmp_path / "my app #1 ?v=2 %20"
    root.mkdir()
    make_app(root)
    cfg = write_config(root)
    run_syncd("--config", str(cfg), "backup")
    [backup] = backups(root)
    assert note_ids(backup / "sqlite" / "app.sqlite") == list(range(1, 51))
    run_syncd("--config", str(cfg), "restore", str(backup))
    assert note_ids(root / "app.sqlite") == list(range(1, 51))


def test_restore_elsewhere_says_where_the_backup_came_from(tmp_path: Path) -> None:
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    other.mkdir()
    make_app(first)
    run_syncd("--config", str(write_config(first)), "backup")
    [backup] = backups(first)
    make_app(other, rows=3)
    out = run_syncd("--config", str(write_config(other)), "restore", str(backup), "--dry-run").stdout
    assert f"the backup was taken from {first / 'app.sqlite'}, not {other / 'app.sqlite'}" in out, out
    assert note_ids(other / "app.sqlite") == [1, 2, 3]
