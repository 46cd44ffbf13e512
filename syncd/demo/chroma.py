"""The Chroma half of `syncd demo`: an app's Chroma server with one collection, live changes,
and a comparison of the collection with its pgvector table.

The demo starts ``chroma run --path DIR`` as the app's server (skipped, with a
note, when chromadb is not installed: ``pip install 'syncd[chroma]'``).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from syncd.errors import FatalError

COLLECTION = "demo-embeddings"
DIM = 64


@dataclass
class DemoChroma:
    path: Path
    url: str
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        host, port = self.url.removeprefix("http://").split(":")
        return chromadb.HttpClient(host=host, port=int(port), settings=Settings(anonymized_telemetry=False))

    def collection(self) -> Any:
        return self.client().get_or_create_collection(COLLECTION, embedding_function=None,
                                                      configuration={"hnsw": {"space": "cosine"}})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start(base: Path) -> DemoChroma | None:
    """The app's Chroma server over ``base/data/chroma``, or None without chromadb."""
    try:
        import chromadb  # noqa: F401 - only checking that it is installed
    except ImportError:
        print("demo: chromadb is not installed: the Chroma part is skipped (pip install 'syncd[chroma]')")
        return None
    path = base / "data" / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = ["chroma", "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    code = f"import sys; from chromadb.cli.cli import app; sys.argv = {argv!r}; app()"
    with open(base / "chroma-server.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                return DemoChroma(path, url, process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise FatalError(f"the demo's Chroma server did not answer within 60 s; its log: "
                     f"{base / 'chroma-server.log'}")


def build(chroma: DemoChroma, items: int, rng: random.Random) -> None:
    """A collection the way the seed app fills it: chunks of documents with user and document ids."""
    col = chroma.collection()
    gen = np.random.default_rng(rng.randrange(2**32))
    for start in range(0, items, 500):
        n = min(500, items - start)
        col.add(ids=[f"chunk-{start + i}" for i in range(n)],
                embeddings=gen.standard_normal((n, DIM)).astype(np.float32),
                documents=[f"chunk {start + i} of a document" for i in range(n)],
                metadatas=[{"userId": f"user{(start + i) % 50}", "documentId": f"doc{(start + i) // 8}",
                            "chunk": (start + i) % 8} for i in range(n)])


def live_changes(chroma: DemoChroma, rng: random.Random, seconds: float) -> int:
    """What the app does while syncd streams: new chunks, re-embeddings, tag edits, deletions."""
    col = chroma.collection()
    gen = np.random.default_rng(rng.randrange(2**32))
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = rng.random()
        target = f"chunk-{rng.randrange(2000)}"
        if kind < 0.35:
            col.add(ids=[f"live-{n}"], embeddings=gen.standard_normal((1, DIM)).astype(np.float32),
                    documents=[f"live chunk {n}"], metadatas=[{"userId": "user1", "documentId": f"live{n}"}])
        elif kind < 0.6:
            col.upsert(ids=[target], embeddings=gen.standard_normal((1, DIM)).astype(np.float32))
        elif kind < 0.85:
            col.update(ids=[target], metadatas=[{"reviewed": True, "chunk": None}])
        else:
            col.delete(ids=[target])
        n += 1
        time.sleep(0.005)
    return n


async def compare(chroma: DemoChroma, conn: asyncpg.Connection) -> bool:
    """Print how the table compares with the collection (vectors: float32 bits); True if equal."""
    from pgvector.asyncpg import register_vector

    await register_vector(conn)
    got = chroma.collection().get(include=["embeddings", "documents", "metadatas"])
    want = {i: (np.asarray(e, dtype=np.float32), d, m or None)
            for i, e, d, m in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"],
                                  strict=True)}
    import json

    rows = await conn.fetch(f'SELECT id, embedding, document, metadata::text FROM "{COLLECTION}"')
    have = {r[0]: (r[1].to_numpy(), r[2], json.loads(r[3]) if r[3] else None) for r in rows}
    differences = sorted(set(want) ^ set(have))
    for item_id in set(want) & set(have):
        (wv, wd, wm), (hv, hd, hm) = want[item_id], have[item_id]
        # cosine: Chroma returns its own bits, at most a few float32 steps from those written
        steps = int(np.abs(wv.view(np.int32).astype(np.int64) - hv.view(np.int32).astype(np.int64)).max())
        if wd != hd or wm != hm or steps > 4:
            differences.append(item_id)
    mark = "✓" if not differences else "✗"
    print(f"compare: {mark} collection {COLLECTION}: {len(have)} rows in PostgreSQL, "
          f"{'equal item by item' if not differences else f'{len(differences)} differences'}")
    for d in differences[:5]:
        print(f"         {d}")
    return not differences
