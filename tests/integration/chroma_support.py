"""Real Chroma for the Chroma -> pgvector tests: a `chroma run` server on a free port over a
temp persist directory, configs for syncd, and the comparison of a collection with its table.

Vectors are compared as float32, exactly: against collection.get() for l2 / ip
collections; for cosine collections against the bits the test wrote (what syncd
copies from the log), and within a few float32 steps of collection.get() for
items whose log rows Chroma purged before syncd started (docs/chroma.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from tests.conftest import REPO, syncd_cmd

CHROMA_BIN = Path(sys.executable).parent / "chroma"
COSINE_ULPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChromaServer:
    path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f"chroma-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen([str(CHROMA_BIN), "run", "--path", str(self.path), "--host",
                                             "127.0.0.1", "--port", str(self.port)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"chroma run did not answer on {self.url}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        return chromadb.HttpClient(host="127.0.0.1", port=self.port,
                                   settings=Settings(anonymized_telemetry=False))


@contextlib.contextmanager
def run_chroma(path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def collection(client: Any, name: str, space: str = "l2") -> Any:
    return client.get_or_create_collection(name, embedding_function=None,
                                           configuration={"hnsw": {"space": space}})


def write_config(tmp_path: Path, pg_dsn: str, *, path: Path | None, url: str | None, extra: str = "",
                 chroma_extra: str = "", **stream: Any) -> Path:
    lines = ["[source.chroma]"]
    if url:
        lines.append(f'url = "{url}"')
    if path:
        lines.append(f'path = "{path}"')
    lines += [chroma_extra, "", "[target]", f'dsn = "{pg_dsn}"', "", "[state]",
              f'dir = "{tmp_path / "state"}"', "", "[stream]", "poll_interval = 0.2", "prune_interval = 0.5"]
    lines += [f"{k} = {v!r}" for k, v in stream.items()]
    lines += ["", "[health]", 'listen = "127.0.0.1:0"', ""]
    cfg = tmp_path / "syncd.toml"
    cfg.write_text("\n".join(lines) + extra)
    return cfg


def start_daemon(cfg: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`syncd run` in the background, its output in a file next to the config (a pipe nobody
    reads would fill up and stall the daemon)."""
    with open(cfg.parent / "daemon.log", "a") as out:
        return subprocess.Popen(syncd_cmd("--config", str(cfg), "run"), cwd=REPO, text=True,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """SIGTERM, wait, and return the output of every daemon started with this config directory."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    args = proc.args if isinstance(proc.args, list) else []
    cfg = Path(str(args[args.index("--config") + 1])) if "--config" in args else None
    return (cfg.parent / "daemon.log").read_text() if cfg else ""


# --- comparing ------------------------------------------------------------------------------

Item = tuple[np.ndarray, str | None, dict[str, Any] | None]


def chroma_items(col: Any) -> dict[str, Item]:
    got = col.get(include=["embeddings", "documents", "metadatas"])
    rows = zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True)
    return {i: (np.asarray(e, dtype=np.float32), d, m or None) for i, e, d, m in rows}


async def table_items(pg: asyncpg.Connection, table: str, *, id_col: str = "id",
                      embedding: str = "embedding", document: str | None = "document",
                      metadata: str | None = "metadata") -> dict[str, Item]:
    await register_vector(pg)
    cols = [f'"{id_col}"', f'"{embedding}"', f'"{document}"' if document else "NULL",
            f'"{metadata}"::text' if metadata else "NULL"]
    rows = await pg.fetch(f'SELECT {", ".join(cols)} FROM "{table}"')
    return {r[0]: (r[1].to_numpy(), r[2], json.loads(r[3]) if r[3] else None) for r in rows}


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    return int(np.abs(ia - ib).max()) if len(a) else 0


def assert_same(table: Mapping[str, Item], chroma: Mapping[str, Item], *, space: str,
                written: Mapping[str, np.ndarray | None] | None = None) -> None:
    """The table holds exactly the collection: ids, documents, metadata, float32 vectors."""
    missing = sorted(set(chroma) - set(table))
    extra = sorted(set(table) - set(chroma))
    assert not missing and not extra, f"missing in table: {missing[:10]}, extra in table: {extra[:10]}"
    for item_id, (vec, doc, meta) in chroma.items():
        t_vec, t_doc, t_meta = table[item_id]
        assert t_doc == doc, (item_id, t_doc, doc)
        assert (t_meta or None) == (meta or None), (item_id, t_meta, meta)
        assert t_vec.dtype == np.float32 and len(t_vec) == len(vec), item_id
        if space != "cosine":
            assert np.array_equal(t_vec.view(np.int32), vec.view(np.int32)), (item_id, t_vec, vec)
        elif written is not None and written.get(item_id) is not None:
            want = np.asarray(written[item_id], dtype=np.float32)
            assert np.array_equal(t_vec.view(np.int32), want.view(np.int32)), (item_id, t_vec, want)
        else:
            assert ulps(t_vec, vec) <= COSINE_ULPS, (item_id, t_vec, vec)


async def wait_streaming(pg: asyncpg.Connection, collections: int, timeout: float = 60.0) -> None:
    """Wait until *collections* streams have finished their snapshot and built their index."""
    async def check() -> None:
        done = await pg.fetchval(
            "SELECT count(*) FROM syncd.checkpoints WHERE stream LIKE 'chroma:%' "
            "AND (snapshot IS NULL OR (snapshot->>'complete')::boolean)")
        indexed = await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'")
        assert done == collections and indexed >= collections, (done, indexed)

    await wait_until(check, timeout)


async def wait_until(check: Any, timeout: float = 60.0, interval: float = 0.2) -> None:
    """Wait until the async *check* returns without AssertionError; re-raise the last one."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


class Mirror:
    """The vector bits each id holds under Chroma's semantics, as the test wrote them."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray | None] = {}
        """None: the bits are Chroma's (its log row was purged before syncd read it)."""

    def forget(self, ids: Any) -> None:
        for i in ids:
            if i in self.vectors:
                self.vectors[i] = None

    def add(self, ids: list[str], vectors: Any) -> None:
        for i, v in zip(ids, vectors, strict=True):
            self.vectors.setdefault(i, np.asarray(v, dtype=np.float32))

    def update(self, ids: list[str], vectors: Any | None) -> None:
        if vectors is None:
            return
        for i, v in zip(ids, vectors, strict=True):
            if i in self.vectors:
                self.vectors[i] = np.asarray(v, dtype=np.float32)

    def upsert(self, ids: list[str], vectors: Any) -> None:
        for i, v in zip(ids, vectors, strict=True):
            self.vectors[i] = np.asarray(v, dtype=np.float32)

    def delete(self, ids: list[str]) -> None:
        for i in ids:
            self.vectors.pop(i, None)
