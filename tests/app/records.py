"""The reference app's write log, the state it implies, and the state the stores hold.

:func:`expected` replays the acknowledged writes in order — the state every store must
converge to. The ``read_*`` functions return a store's contents in the same shape,
``{object: {key: row}}``, and :func:`diff` compares the two after normalising types
(timestamps as text or datetime, integers as float, float32 vectors within tolerance)
and names the first keys that differ.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.app.stores import TABLE_COLUMNS

State = dict[str, dict[Any, dict[str, Any]]]
VECTOR_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Record:
    n: int
    op: str
    object: str
    key: Any
    row: dict[str, Any] | None
    store: str
    ok: bool
    attempts: int
    t0: float
    t1: float
    error: str | None


def load(log: Path) -> list[Record]:
    """Every complete line of *log* (a final line cut short by a kill is skipped)."""
    out = []
    text = log.read_text(encoding="utf-8")
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        out.append(Record(**json.loads(line)))
    return out


def expected(records: Iterable[Record], *, stores: Iterable[str] | None = None) -> State:
    """Replay the acknowledged writes (only those acknowledged by *stores*, when given). As in
    SQL, an update of a key that is not there changes nothing."""
    wanted = set(stores) if stores is not None else None
    state: State = {}
    for rec in sorted(records, key=lambda r: r.n):
        if not rec.ok or (wanted is not None and rec.store not in wanted):
            continue
        rows = state.setdefault(rec.object, {})
        if rec.op == "delete":
            rows.pop(rec.key, None)
        elif rec.op == "update":
            if rec.key in rows and rec.row is not None:
                rows[rec.key] = rec.row
        elif rec.row is not None:
            rows[rec.key] = rec.row
    return state


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def pause_stats(records: Iterable[Record]) -> dict[str, float]:
    """Latency of acknowledged writes (first attempt to ack) and the longest gap between acks."""
    acked = sorted((r for r in records if r.ok), key=lambda r: r.t1)
    latencies = [r.t1 - r.t0 for r in acked]
    gaps = [b.t1 - a.t1 for a, b in itertools.pairwise(acked)]
    return {"max_write_latency": max(latencies, default=0.0), "p50": _percentile(latencies, 0.5),
            "p99": _percentile(latencies, 0.99), "max_gap_between_acks": max(gaps, default=0.0)}


# --- the stores' contents ----------------------------------------------------------------------


def read_sqlite(path: Path, tables: Iterable[str] = tuple(TABLE_COLUMNS)) -> State:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        out: State = {}
        for t in tables:
            rows = conn.execute(f'SELECT {", ".join(TABLE_COLUMNS[t])} FROM "{t}"')
            out[t] = {r["id"]: dict(r) for r in rows}
        return out
    finally:
        conn.close()


async def read_postgres(dsn: str, tables: Iterable[str] = tuple(TABLE_COLUMNS)) -> State:
    conn = await asyncpg.connect(dsn)
    try:
        out: State = {}
        for t in tables:
            rows = await conn.fetch(f'SELECT {", ".join(TABLE_COLUMNS[t])} FROM "{t}"')
            out[t] = {r["id"]: dict(r) for r in rows}
        return out
    finally:
        await conn.close()


def read_chroma(client: Any, collection: str) -> State:
    """*client*: a chromadb client (PersistentClient or HttpClient)."""
    got = client.get_collection(collection, embedding_function=None).get(
        include=["embeddings", "documents", "metadatas"])
    rows = {}
    for i, item_id in enumerate(got["ids"]):
        rows[item_id] = {"id": item_id, "embedding": [float(x) for x in got["embeddings"][i]],
                         "document": got["documents"][i], "metadata": dict(got["metadatas"][i] or {})}
    return {collection: rows}


async def read_pgvector(dsn: str, table: str, collection: str) -> State:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch('SELECT id, embedding::text AS embedding, document, '
                                f'metadata::text AS metadata FROM "{table}"')
    finally:
        await conn.close()
    return {collection: {r["id"]: {"id": r["id"], "embedding": json.loads(r["embedding"]),
                                   "document": r["document"], "metadata": json.loads(r["metadata"] or "{}")}
                         for r in rows}}


# --- comparison --------------------------------------------------------------------------------


def normalize(value: Any) -> Any:
    """One representation per value whatever the store: timestamps as naive UTC ISO text,
    integral floats as int, JSON text as parsed JSON where it looks like an object or array."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in " T":
        try:
            return normalize(dt.datetime.fromisoformat(value))
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=VECTOR_TOLERANCE, abs_tol=VECTOR_TOLERANCE)
    return bool(a == b)


def diff(want: State, have: State, *, limit: int = 5) -> list[str]:
    """What differs between two states, naming up to *limit* keys per kind per object."""
    problems: list[str] = []
    for obj in sorted(set(want) | set(have)):
        w, h = want.get(obj, {}), have.get(obj, {})
        wk = {str(normalize(k)): k for k in w}
        hk = {str(normalize(k)): k for k in h}
        missing = sorted(set(wk) - set(hk))
        extra = sorted(set(hk) - set(wk))
        differing = sorted(k for k in set(wk) & set(hk)
                           if not _same(normalize(w[wk[k]]), normalize(h[hk[k]])))
        if missing:
            problems.append(f"{obj}: {len(missing)} missing, first {missing[:limit]}")
        if extra:
            problems.append(f"{obj}: {len(extra)} unexpected, first {extra[:limit]}")
        for k in differing[:limit]:
            problems.append(f"{obj}[{k}]: want {normalize(w[wk[k]])!r}, have {normalize(h[hk[k]])!r}")
        if len(differing) > limit:
            problems.append(f"{obj}: {len(differing)} rows differ in all")
    return problems
