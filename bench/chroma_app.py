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
- With *lifecycle* > 0 that share of the writer's steps works on side collections instead:
  creates one (``side_NNN``, a few items), writes to one, renames one (``…_rN``) or deletes
  one — the collections syncd must notice, snapshot, follow through a rename and retire while
  it runs and is killed. Each step is made idempotent by looking first (a retried rename or
  delete that had been applied is not applied twice).
- *space* is the collections' distance (``l2``, ``cosine``, ``ip``): what the app sent is
  what must arrive, whatever Chroma's index does with it.
- :func:`chroma_checks`: reads the tables back as pgvector's text form and compares them with
  the record (the float32 bits the app sent), sharing nothing with syncd's converters; a live
  side collection's table is looked up by the collection's current name, and a deleted one
  must have no table left under any name it had.

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

    def logged(self, collection_id: str) -> set[str]:
        """The ids the collection's log holds a row of."""
        conn = sqlite3.connect(f"file:{self.path / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM embeddings_queue WHERE topic LIKE ?",
                                               (f"%/{collection_id}",))}
        finally:
            conn.close()

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
class Side:
    """A side collection as the app left it: its names (the last is current) and items."""
    collection_id: str
    names: list[str]
    items: dict[str, Item] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class Record:
    """What the app saw acknowledged: id -> (float32 vector, document, metadata)."""
    items: dict[str, Item] = field(default_factory=dict)
    writes: int = 0
    retried: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=dict)
    """Side collections by collection id (with *lifecycle*)."""
    space: str = "l2"
    unlogged: set[str] = field(default_factory=set)
    """Ids whose vector Chroma had purged from its log before ``syncd init`` and that were not
    written with a vector since: syncd can only copy the server's rendering of them, which for
    a cosine collection is a float32 step or two off the bits written (docs/chroma.md,
    "Which bits")."""


class ChromaWriter:
    """The app's Chroma writes at about *rate* writes per second, in a thread."""

    def __init__(self, url: str, seed: int, rate: float, *, populate: int = 0,
                 space: str = "l2", lifecycle: float = 0.0) -> None:
        import chromadb
        from chromadb.config import Settings

        host, port = url.removeprefix("http://").split(":")
        self.client = chromadb.HttpClient(host=host, port=int(port),
                                          settings=Settings(anonymized_telemetry=False))
        self.space, self.lifecycle = space, lifecycle
        self.col = self.client.get_or_create_collection(
            COLLECTION, embedding_function=None, configuration={"hnsw": {"space": space}})
        self.sides: dict[str, Any] = {}
        """Live side collections' client objects by collection id (the writer's thread only)."""
        self.next_side = 0
        self.collection_id = str(self.col.id)
        self.live_ids: tuple[str, ...] = (self.collection_id,)
        """The main and live side collections' ids, replaced whole (read by other threads)."""
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.record = Record(space=space)
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
            self.record.unlogged.discard(i)

    def _some(self, n: int) -> list[str]:
        live = list(self.record.items)
        return self.rng.sample(live, min(n, len(live))) if live else []

    def transaction(self) -> None:
        """One random write of one to three items (or, with *lifecycle*, a side collection's
        step)."""
        if self.lifecycle and self.rng.random() < self.lifecycle:
            self.side_step()
            return
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
                self.record.unlogged.discard(i)
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
                self.record.unlogged.discard(i)
        else:
            ids = self._some(n)
            self._send("delete", self.col.delete, ids=ids)
            for i in ids:
                items.pop(i, None)
                self.record.unlogged.discard(i)

    # --- side collections ---------------------------------------------------------------

    def side_step(self) -> None:
        """Create, write to, rename or delete a side collection."""
        live = [self.record.sides[c] for c in self.sides]
        roll = self.rng.random()
        if roll < 0.3 or len(live) < 2:
            self._side_create()
        elif roll < 0.6:
            self._side_write(self.rng.choice(live))
        elif roll < 0.8:
            self._side_rename(self.rng.choice(live))
        else:
            self._side_delete(self.rng.choice(live))

    def _side_create(self) -> None:
        name = f"side_{self.next_side:03d}"
        self.next_side += 1
        made: list[Any] = []

        def create() -> None:
            made[:] = [self.client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": self.space}})]
        self._send("side create", create)
        col = made[0]
        side = Side(str(col.id), [name])
        self.sides[side.collection_id] = col
        self.record.sides[side.collection_id] = side
        self.live_ids = (self.collection_id, *self.sides)
        self._side_write(side, self.rng.randint(1, 10))

    def _side_write(self, side: Side, n: int = 0) -> None:
        """Add *n* (else 1–3) items, or upsert over some, in the side collection."""
        col = self.sides[side.collection_id]
        old = (self.rng.sample(list(side.items), min(len(side.items), self.rng.randint(0, 2)))
               if not n else [])
        ids = [*old, *[f"s-{self.next_id + k:07d}" for k in range(n or self.rng.randint(1, 3))]]
        self.next_id += len(ids) - len(old)
        vecs = [self._vector() for _ in ids]
        docs = [f"side {i} {self.rng.randrange(10**9)}" for i in ids]
        metas = [self._meta() for _ in ids]
        self._send("side write", col.upsert, ids=ids, embeddings=[v.tolist() for v in vecs],
                   documents=docs, metadatas=metas)
        for i, v, d, m in zip(ids, vecs, docs, metas, strict=True):
            side.items[i] = (v, d, m)

    def _names(self) -> set[str]:
        return {c.name for c in self.client.list_collections()}

    def _side_rename(self, side: Side) -> None:
        old, new = side.names[-1], f"{side.names[0]}_r{len(side.names)}"
        col = self.sides[side.collection_id]

        def rename() -> None:
            if new not in self._names():  # a retry of a rename that was applied: done
                col.modify(name=new)
        self._send("side rename", rename)
        assert old != new
        side.names.append(new)

    def _side_delete(self, side: Side) -> None:
        name = side.names[-1]

        def delete() -> None:
            if name in self._names():  # a retry of a delete that was applied: done
                self.client.delete_collection(name)
        self._send("side delete", delete)
        side.deleted = True
        del self.sides[side.collection_id]
        self.live_ids = (self.collection_id, *self.sides)

    def collection_ids(self) -> list[str]:
        """The main collection's id and the live side collections'."""
        return list(self.live_ids)

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

    def after_init(self) -> None:
        """Call once ``syncd init`` has turned Chroma's purge off, before the writer starts:
        records which items' written bits Chroma's log no longer holds."""
        record = self.writer.record
        record.unlogged = set(record.items) - self.store.logged(self.writer.collection_id)

    @classmethod
    def start(cls, path: Path, seed: int, rate: float, *, populate: int, space: str = "l2",
              lifecycle: float = 0.0) -> Chroma:
        """The server, and *populate* items written before syncd starts."""
        store = ChromaStore(path)
        try:
            return cls(store, ChromaWriter(store.url, seed, rate, populate=populate, space=space,
                                           lifecycle=lifecycle), rate)
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
              collection_ids: str | Callable[[], list[str]]) -> Callable[[], Awaitable[bool]]:
    """For :func:`bench.campaign.wait_caught_up`: each collection's snapshot is complete and its
    checkpoint has reached the newest row of its log (*collection_ids*: one, or a function
    giving the live ones at each check)."""
    async def one(collection_id: str) -> bool:
        cp = await chroma_position(conn, collection_id)
        newest = await asyncio.to_thread(store.newest, collection_id)
        if cp is None:
            return newest == 0  # an empty collection has no stream yet
        return cp[1] and cp[0] >= newest

    async def check() -> bool:
        ids = [collection_ids] if isinstance(collection_ids, str) else collection_ids()
        for collection_id in ids:
            if not await one(collection_id):
                return False
        return True
    return check


def parse_vector(text: str) -> np.ndarray:
    """pgvector's text form ``[1.5,-2,...]`` (shortest float32 decimals) as float32."""
    body = text.strip()[1:-1]
    return np.array([np.float32(float(x)) for x in body.split(",")] if body else [],
                    dtype=np.float32)


async def read_table(conn: asyncpg.Connection, table: str) -> dict[str, Item]:
    rows = await conn.fetch(f'SELECT id, embedding::text AS v, document, metadata::text AS m '
                            f'FROM "{table}"')
    return {r["id"]: (parse_vector(r["v"]), r["document"], json.loads(r["m"]) if r["m"] else None)
            for r in rows}


RENDER_STEPS = 4
"""float32 steps per component a cosine collection's server may return a vector from the bits
written (docs/chroma.md, "Which bits")."""


def steps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest component distance in representable float32 values."""
    def ordered(v: np.ndarray) -> np.ndarray:
        bits = v.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return int(np.abs(ordered(a) - ordered(b)).max()) if len(a) else 0


def differences(want: dict[str, Item], table: dict[str, Item], *, rendered: set[str] | None = None,
                near: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(lost, doubled, unequal) ids of *table* against *want*. With *near* (a cosine
    collection), a vector up to RENDER_STEPS off the bits written is Chroma's rendering of them
    — what syncd copies for items Chroma purged before init (*rendered*) and for items it read
    from the server for any other reason (a reconciliation): listed in *near*, not unequal."""
    lost = sorted(set(want) - set(table))
    doubled = sorted(set(table) - set(want))
    unequal: list[str] = []
    for i in sorted(set(want) & set(table)):
        (v, d, m), (tv, td, tm) = want[i], table[i]
        if len(tv) != len(v) or not np.array_equal(tv.view(np.int32), v.view(np.int32)):
            if near is not None and len(tv) == len(v) and steps(tv, v) <= RENDER_STEPS:
                near.append(i)
                continue
            unequal.append(f"{i}: vector")
        elif td != d:
            unequal.append(f"{i}: document {td!r} != {d!r}")
        elif (tm or None) != (m or None):
            unequal.append(f"{i}: metadata {tm!r} != {m!r}")
    return lost, doubled, unequal


async def side_checks(conn: asyncpg.Connection, record: Record) -> list[Check]:
    """Each live side collection's table (by its current name) against the record; no table
    left under any name of a deleted one."""
    tables = {r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    live = [s for s in record.sides.values() if not s.deleted]
    gone = [s for s in record.sides.values() if s.deleted]
    missing = [s.names[-1] for s in live if s.names[-1] not in tables]
    stale = sorted(n for s in record.sides.values() for n in (s.names if s.deleted else s.names[:-1])
                   if n in tables)
    unequal: list[str] = []
    items = 0
    for side in live:
        if side.names[-1] not in tables:
            continue
        lost, doubled, wrong = differences(side.items, await read_table(conn, side.names[-1]),
                                           near=[] if record.space == "cosine" else None)
        items += len(side.items)
        unequal += [f"{side.names[-1]}: lost {i}" for i in lost]
        unequal += [f"{side.names[-1]}: doubled {i}" for i in doubled]
        unequal += [f"{side.names[-1]}: {w}" for w in wrong]
    retired = sum(1 for t in tables if "__deleted_" in t)
    renamed = sum(1 for s in record.sides.values() if len(s.names) > 1)
    return [
        Check("side collections (information)", True,
              f"{len(record.sides)} created, {renamed} renamed, {len(gone)} deleted "
              f"({retired} tables kept as __deleted_), {len(live)} live with {items} items"),
        Check("side collections: a table under each live one's current name", not missing,
              f"{len(missing)} {missing[:3]}"),
        Check("side collections: no table under an old or deleted name", not stale,
              f"{len(stale)} {stale[:3]}"),
        Check("side collections: items equal", not unequal, f"{len(unequal)} {unequal[:3]}"),
    ]


async def chroma_checks(conn: asyncpg.Connection, record: Record) -> list[Check]:
    """Lost / doubled / unequal items of the collection's table against the record."""
    table = await read_table(conn, COLLECTION)
    want = record.items
    near: list[str] = []
    cosine = record.space == "cosine"
    rendered = record.unlogged if cosine else set()
    lost, doubled, unequal = differences(want, table, rendered=rendered, near=near if cosine else None)
    others = [i for i in near if i not in rendered]
    ops = ", ".join(f"{k} {n}" for k, n in sorted(record.ops.items()))
    sides = await side_checks(conn, record) if record.sides else []
    return [
        Check("chroma writes acknowledged (information)", True,
                    f"{record.writes} writes ({ops}), {record.retried} retries while the server "
                    f"was away, {len(want)} live items"),
        Check("chroma items lost", not lost, f"{len(lost)} {lost[:3]}"),
        Check("chroma items doubled", not doubled,
                    f"{len(doubled)} {doubled[:3]} (table rows {len(table)})"),
        Check("chroma items equal (own comparison)", not unequal,
                    f"{len(unequal)} of {len(set(want) & set(table))} {unequal[:3]}"
                    + (f"; {len(near) - len(others)} of the {len(rendered & set(want))} items Chroma "
                       f"purged before init and {len(others)} others {others[:3]} hold its cosine "
                       f"rendering (≤ {RENDER_STEPS} float32 steps off the bits written: read from "
                       "the server, e.g. by a reconciliation)" if cosine else "")),
        *sides,
    ]
