"""Which processes may touch a Chroma persist directory.

With only ``path`` configured, syncd refuses while another process (an app's
PersistentClient) has the directory open, and explains how to serve it instead;
once nothing else uses it, syncd serves it itself with a private ``chroma run``.
A ``url`` whose server does not serve ``path`` is refused too.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import numpy as np

from tests.conftest import run_syncd
from tests.integration.chroma_support import (
    assert_same,
    chroma_items,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    table_items,
    wait_streaming,
    write_config,
)

APP = textwrap.dedent("""
    import sys, numpy as np, chromadb
    from chromadb.config import Settings
    client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
    col = client.get_or_create_collection("local_docs", embedding_function=None,
                                          configuration={"hnsw": {"space": "l2"}})
    rng = np.random.default_rng(1)
    col.add(ids=[f"d{i}" for i in range(1100)], embeddings=rng.standard_normal((1100, 6)).astype(np.float32),
            documents=[f"text {i}" for i in range(1100)], metadatas=[{"i": i} for i in range(1100)])
    col.update(ids=["d1"], metadatas=[{"i": None, "edited": True}])
    print("ready", flush=True)
    sys.stdin.read()  # the app keeps its client open until told to stop
""")


def start_app(directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", APP, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


async def test_persist_dir_only(tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    directory = tmp_path / "chroma"
    app = start_app(directory)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        cfg = write_config(tmp_path, pg_dsn, path=directory, url=None)
        refused = run_syncd("--config", str(cfg), "init", check=False)
        assert refused.returncode == 1
        message = refused.stderr
        assert f"process {app.pid}" in message and f"chroma run --path {directory}" in message, message
        assert "source.chroma.url" in message
    finally:
        app.communicate("", timeout=30)
    # the app stopped: syncd may serve the directory itself
    run_syncd("--config", str(cfg), "init")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "started a private Chroma server" in proc.stderr
    with run_chroma(directory) as server:
        col = collection(server.client(), "local_docs")
        assert_same(await table_items(pg, "local_docs"), chroma_items(col), space="l2")


async def test_server_must_serve_the_path(tmp_path: Path, pg_dsn: str) -> None:
    with run_chroma(tmp_path / "one") as one, run_chroma(tmp_path / "two") as two:
        collection(one.client(), "first").add(ids=["a"], embeddings=[np.ones(3, dtype=np.float32)])
        collection(two.client(), "second").add(ids=["b"], embeddings=[np.ones(3, dtype=np.float32)])
        cfg = write_config(tmp_path, pg_dsn, path=one.path, url=two.url)
        proc = run_syncd("--config", str(cfg), "init", check=False)
        assert proc.returncode == 1
        assert "does not serve" in proc.stderr, proc.stderr


async def test_an_app_opening_the_directory_syncd_serves_stops_the_whole_daemon(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    """The Chroma streams stop on an error of their own (here: an app opened the directory
    syncd serves with its private server) while the SQLite stream could go on: the daemon must
    not live on with its Chroma side stopped and nothing but /readyz to say so — it exits 1 with
    the reason (systemd restarts it; the unit's Restart=on-failure), as for any stream failure."""
    directory = tmp_path / "chroma"
    app = start_app(directory)
    assert app.stdout is not None and app.stdout.readline().strip() == "ready"
    app.communicate("", timeout=30)
    db = tmp_path / "app.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"n{i}") for i in range(50)])
    conn.close()
    cfg = write_config(tmp_path, pg_dsn, path=directory, url=None)
    cfg.write_text(f'[source.sqlite]\npath = "{db}"\n\n' + cfg.read_text())
    run_syncd("--config", str(cfg), "init")
    daemon = start_daemon(cfg)
    try:
        await wait_streaming(pg, 1)
        app = start_app(directory)  # the app opens the directory syncd's private server serves
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("syncd ran on with its Chroma streams stopped") from None
        finally:
            app.communicate("", timeout=30)
    finally:
        log = stop_daemon(daemon)
    assert daemon.returncode == 1, log[-3000:]
    assert f"process {app.pid}" in log and "chroma streams stopped" in log, log[-3000:]
