"""The campaigns' Chroma side: a ``chroma run`` server of their own, the app's writes to one
collection, and the checks that compare pgvector with what the app saw acknowledged.

- :class:`ChromaStore`: ``chroma run --path DIR`` on a free port; :meth:`ChromaStore.crash`
  SIGKILLs it, :meth:`ChromaStore.restart` starts it again on the same directory and port.
- :class:`ChromaWriter`: adds, vector updates, metadata-only updates, upserts and deletes
  (explicit float32 embeddings, ``embedding_function=None``) at a fixed number of writes per
  second, in a thread, over HTTP. A write that fails (the server is down) is sent again,
  unchanged, until it is acknowledged: each is idempotent, so the state it leaves is the
  record's either way. The record holds, per id, the last vector / document / metadata
  acknowledged, or nothing once deleted.
- :func:`chroma_checks`: reads the table back as pgvector's text form and compares it with
  the record (the float32 bits the app sent), sharing nothing with syncd's converters.

The app never updates an id it does not know to exist, so the one pattern whose vector
depends on Chroma's timing (a vector UPDATE of a missing id, then its ADD: docs/chroma.md,
"Vector doubts") does not occur.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from bench.campaign import Check
from tests.integration.chroma_support import ChromaServer

COLLECTION = "campaign_items"
DIM = 24
RETRY_FOR = 300.0
"""Seconds a write is retried while the server does not answer before the writer gives up."""

Item = tuple[np.ndarray, str, dict[str, Any]]


class ChromaStore:
    """The campaign's own ``chroma run`` server over ``DIR``."""

    def __init__(self, path: Path) -> None:
        self.server = ChromaServer(path)
        self.server.start(timeout=120)
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def path(self) -> Path:
        return self.server.path

    def crash(self) -> None:
        """SIGKILL the server (nothing flushed, no shutdown)."""
        proc = self.server.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(60)
        self.server.process = None

    def restart(self) -> None:
        self.server.start(timeout=120)
        self.restarts += 1

    def stop(self) -> None:
        self.server.stop()

    def log_size(self, checkpoint: int | None) -> tuple[int, int]:
        """(rows in ``embeddings_queue``, of them at or below *checkpoint*)."""
        conn = sqlite3.connect(f"file:{self.path / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            total = conn.execute("SELECT count(*) FROM embeddings_queue").fetchone()[0]
            kept = conn.execute("SELECT count(*) FROM embeddings_queue WHERE seq_id <= ?",
                                (checkpoint or 0,)).fetchone()[0]
        finally:
            conn.close()
        return int(total), int(kept)

    def newest(self, collection_id: str) -> int:
        """The newest ``seq_id`` of the collection's log (0 if none)."""
        conn = sqlite3.connect(f"file:{self.path / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            top = conn.execute("SELECT coalesce(max(seq_id), 0) FROM embeddings_queue "
                               "WHERE topic LIKE ?", (f"%/{collection_id}",)).fetchone()[0]
        finally:
            conn.close()
        return int(top)


@dataclass
class Record:
    """What the app saw acknowledged: id -> (float32 vector, document, metadata)."""
    items: dict[str, Item] = field(default_factory=dict)
    writes: int = 0
    retried: int = 0
    ops: dict[str, int] = field(default_factory=dict)


class ChromaWriter:
    """The app's Chroma writes at about *rate* writes per second, in a thread."""

    def __init__(self, url: str, seed: int, rate: float, *, populate: int = 0) -> None:
        import chromadb
        from chromadb.config import Settings

        host, port = url.removeprefix("http://").split(":")
        self.client = chromadb.HttpClient(host=host, port=int(port),
                                          settings=Settings(anonymized_telemetry=False))
        self.col = self.client.get_or_create_collection(
            COLLECTION, embedding_function=None, configuration={"hnsw": {"space": "l2"}})
        self.collection_id = str(self.col.id)
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.record = Record()
        self.next_id = 0
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._pause = threading.Event()
        while self.next_id < populate:
            self._add(min(100, populate - self.next_id))
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start writing at the rate (in a thread)."""
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chroma-writer", daemon=True)
            self._thread.start()

    # --- writes -----------------------------------------------------------------------

    def _vector(self) -> np.ndarray:
        return self.np.standard_normal(DIM).astype(np.float32)

    def _meta(self) -> dict[str, Any]:
        return {"n": self.rng.randrange(1_000_000), "tag": self.rng.choice("abcdef")}

    def _send(self, op: str, call: Any, **kwargs: Any) -> None:
        """*call* until acknowledged (retried unchanged while the server is away)."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                call(**kwargs)
                break
            except Exception as exc:  # the server is down or restarting
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chroma {op} not acknowledged within {RETRY_FOR} s: "
                                       f"{exc!r}") from exc
                self.record.retried += 1
                time.sleep(0.2)
        self.record.writes += 1
        self.record.ops[op] = self.record.ops.get(op, 0) + 1

    def _add(self, n: int) -> None:
        ids = [f"item-{self.next_id + k:07d}" for k in range(n)]
        self.next_id += n
        vecs = [self._vector() for _ in ids]
        docs = [f"document {i} {self.rng.randrange(10**9)}" for i in ids]
        metas = [self._meta() for _ in ids]
        self._send("add", self.col.add, ids=ids, embeddings=[v.tolist() for v in vecs],
                   documents=docs, metadatas=metas)
        for i, v, d, m in zip(ids, vecs, docs, metas, strict=True):
            self.record.items[i] = (v, d, m)

    def _some(self, n: int) -> list[str]:
        live = list(self.record.items)
        return self.rng.sample(live, min(n, len(live))) if live else []

    def transaction(self) -> None:
        """One random write of one to three items."""
        n = self.rng.randint(1, 3)
        roll = self.rng.random()
        items = self.record.items
        if roll < 0.35 or len(items) < 20:
            self._add(n)
        elif roll < 0.55:
            ids = self._some(n)
            vecs = [self._vector() for _ in ids]
            self._send("update vector", self.col.update, ids=ids,
                       embeddings=[v.tolist() for v in vecs])
            for i, v in zip(ids, vecs, strict=True):
                items[i] = (v, items[i][1], items[i][2])
        elif roll < 0.72:
            ids = self._some(n)
            metas = [self._meta() for _ in ids]
            self._send("update metadata", self.col.update, ids=ids, metadatas=metas)
            for i, m in zip(ids, metas, strict=True):
                items[i] = (items[i][0], items[i][1], m)
        elif roll < 0.88:
            old = self._some(n - 1)
            ids = [*old, f"item-{self.next_id:07d}"]
            self.next_id += 1
            vecs = [self._vector() for _ in ids]
            docs = [f"upserted {i} {self.rng.randrange(10**9)}" for i in ids]
            metas = [self._meta() for _ in ids]
            self._send("upsert", self.col.upsert, ids=ids, embeddings=[v.tolist() for v in vecs],
                       documents=docs, metadatas=metas)
            for i, v, d, m in zip(ids, vecs, docs, metas, strict=True):
                items[i] = (v, d, m)
        else:
            ids = self._some(n)
            self._send("delete", self.col.delete, ids=ids)
            for i in ids:
                items.pop(i, None)

    def _run(self) -> None:
        started, n = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._stop.wait(0.05)
                    started, n = time.monotonic(), 0
                    continue
                self.transaction()
                n += 1
                delay = started + n * self.interval - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def pause(self, paused: bool = True) -> None:
        if paused:
            self._pause.set()
            time.sleep(0.3)
        else:
            self._pause.clear()

    def halt(self) -> None:
        """Stop without reporting (cleanup once a failure has been reported)."""
        self._stop.set()

    def stop(self) -> Record:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RETRY_FOR + 60)
        if self.error is not None:
            raise RuntimeError(f"the app's Chroma writer failed: {self.error!r}") from self.error
        return self.record


@dataclass
class Chroma:
    """A campaign's Chroma server and the app's writer to it."""
    store: ChromaStore
    writer: ChromaWriter
    rate: float

    @classmethod
    def start(cls, path: Path, seed: int, rate: float, *, populate: int) -> Chroma:
        """The server, and *populate* items written before syncd starts."""
        store = ChromaStore(path)
        try:
            return cls(store, ChromaWriter(store.url, seed, rate, populate=populate), rate)
        except BaseException:
            store.stop()
            raise


# --- syncd's Chroma position and the final checks --------------------------------------------

async def chroma_position(conn: asyncpg.Connection, collection_id: str) -> tuple[int, bool] | None:
    """(committed position, snapshot complete) of the collection's stream."""
    if not await conn.fetchval("SELECT to_regclass('syncd.checkpoints') IS NOT NULL"):
        return None
    row = await conn.fetchrow("SELECT position, snapshot::text AS snap FROM syncd.checkpoints "
                              "WHERE stream = $1", f"chroma:{collection_id}")
    if row is None:
        return None
    snap = json.loads(row["snap"]) if row["snap"] else None
    return int(row["position"]), snap is None or bool(snap.get("complete"))


def caught_up(conn: asyncpg.Connection, store: ChromaStore,
              collection_id: str) -> Callable[[], Awaitable[bool]]:
    """For :func:`bench.campaign.wait_caught_up`: the collection's snapshot is complete and its
    checkpoint has reached the newest row of its log."""
    async def check() -> bool:
        cp = await chroma_position(conn, collection_id)
        newest = await asyncio.to_thread(store.newest, collection_id)
        if cp is None:
            return newest == 0  # an empty collection has no stream yet
        return cp[1] and cp[0] >= newest
    return check


def parse_vector(text: str) -> np.ndarray:
    """pgvector's text form ``[1.5,-2,...]`` (shortest float32 decimals) as float32."""
    body = text.strip()[1:-1]
    return np.array([np.float32(float(x)) for x in body.split(",")] if body else [],
                    dtype=np.float32)


async def chroma_checks(conn: asyncpg.Connection, record: Record) -> list[Check]:
    """Lost / doubled / unequal items of the collection's table against the record."""
    rows = await conn.fetch(f'SELECT id, embedding::text AS v, document, metadata::text AS m '
                            f'FROM "{COLLECTION}"')
    table = {r["id"]: (parse_vector(r["v"]), r["document"], json.loads(r["m"]) if r["m"] else None)
             for r in rows}
    want = record.items
    lost = sorted(set(want) - set(table))
    doubled = sorted(set(table) - set(want))
    unequal: list[str] = []
    for i in sorted(set(want) & set(table)):
        (v, d, m), (tv, td, tm) = want[i], table[i]
        if len(tv) != len(v) or not np.array_equal(tv.view(np.int32), v.view(np.int32)):
            unequal.append(f"{i}: vector")
        elif td != d:
            unequal.append(f"{i}: document {td!r} != {d!r}")
        elif (tm or None) != (m or None):
            unequal.append(f"{i}: metadata {tm!r} != {m!r}")
    ops = ", ".join(f"{k} {n}" for k, n in sorted(record.ops.items()))
    return [
        Check("chroma writes acknowledged (information)", True,
                    f"{record.writes} writes ({ops}), {record.retried} retries while the server "
                    f"was away, {len(want)} live items"),
        Check("chroma items lost", not lost, f"{len(lost)} {lost[:3]}"),
        Check("chroma items doubled", not doubled,
                    f"{len(doubled)} {doubled[:3]} (table rows {len(table)})"),
        Check("chroma items equal (own comparison)", not unequal,
                    f"{len(unequal)} of {len(set(want) & set(table))} {unequal[:3]}"),
    ]
