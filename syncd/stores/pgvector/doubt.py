"""Vectors Chroma's index may hold against its log: recorded, then settled from Chroma.

syncd copies what a restarted Chroma returns (docs/chroma.md, "A live Chroma can disagree
with its own log"). For an id whose log shows an UPDATE with a vector while it was missing,
then the ADD that created it (:mod:`syncd.stores.chroma.doubt`), a restarted Chroma returns
the ADD's vector while its HNSW index is saved below the ADD (it replays the log correctly),
and whatever the index held when it was saved past the ADD — the ADD's or the UPDATE's —
from then on. So the table gets the ADD's vector first, as the log says, and the id is
recorded in ``syncd.chroma_vector_doubt`` (same transaction as the change or the snapshot's
end). Once the HNSW segment's ``max_seq_id`` reaches the ADD, the vector the server returns
for the id is compared with the two candidates: if it is the UPDATE's, the table gets the
UPDATE's bits from the log (the bits the app wrote); the record goes either way. A record
without an ADD yet is dropped once the index is saved past its UPDATE: a later replay
starts above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np
import structlog

from syncd.errors import RetryableError, RowError
from syncd.model import Change, Op
from syncd.pg.connect import transaction
from syncd.ports.collections import ChromaCollection, Doubt, State, step
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.pgvector.plan import VectorTable

log = structlog.get_logger("syncd.sink.pgvector")

TABLE = f"{STATE_SCHEMA}.chroma_vector_doubt"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    stream     text NOT NULL,
    id         text NOT NULL,
    update_seq bigint NOT NULL,
    add_seq    bigint,
    vector     bytea NOT NULL,
    PRIMARY KEY (stream, id)
);
"""
COSINE_RTOL = 2.0 ** -20
"""How far a cosine collection's returned component may be from the written one (about 8
float32 steps: Chroma returns them a step or two off, docs/chroma.md "Which bits")."""


def _op(ch: Change) -> tuple[str, Any] | None:
    """The Chroma operation of a change and its vector; None for a change in error."""
    if ch.op is Op.DELETE or ch.row is None:
        return "delete", None
    if ch.row.get("error") or ch.row.get("op") not in ("add", "update", "upsert"):
        return None
    return str(ch.row["op"]), ch.row.get("embedding")


def track(changes: Sequence[Change], exists: Mapping[str, bool],
          known: Mapping[str, Doubt]) -> dict[str, Doubt | None]:
    """The records *changes* (in log order) change, for the ids in *exists* (whether the table
    holds them before the changes); None: the id's record goes."""
    states: dict[str, State] = {}
    for ch in changes:
        item_id = str(ch.key[0])
        op = _op(ch)
        if item_id not in exists or op is None:
            continue
        state = states[item_id] if item_id in states else (exists[item_id], known.get(item_id))
        vector = None if op[1] is None else np.asarray(op[1], dtype="<f4").tobytes()
        states[item_id] = step(state, ch.position.offset, op[0], vector is not None, vector)
    return {k: d for k, (_, d) in states.items() if d != known.get(k)}


def _vector_update_ids(changes: Sequence[Change]) -> set[str]:
    return {str(ch.key[0]) for ch in changes
            if (op := _op(ch)) is not None and op[0] == "update" and op[1] is not None}


async def has_records(conn: asyncpg.Connection, stream: str) -> bool:
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE stream = $1)", stream))


async def _load(conn: asyncpg.Connection, stream: str, ids: Sequence[str]) -> dict[str, Doubt]:
    rows = await conn.fetch(f"SELECT id, update_seq, add_seq, vector FROM {TABLE} "
                            "WHERE stream = $1 AND id = ANY($2::text[])", stream, list(ids))
    return {r["id"]: Doubt(int(r["update_seq"]), r["add_seq"], bytes(r["vector"])) for r in rows}


def _keyed(t: VectorTable, ids: Sequence[str]) -> tuple[list[str], list[Any]]:
    """*ids* and their values in the table's id column (ids that cannot be one are left out)."""
    keys: list[str] = []
    values: list[Any] = []
    for item_id in ids:
        try:
            values.append(t.convert_id(item_id))
        except RowError:
            continue
        keys.append(item_id)
    return keys, values


async def _rows(conn: asyncpg.Connection, t: VectorTable, ids: Sequence[str], *,
                vectors: bool = True) -> dict[str, Any]:
    """The ids of *ids* the table holds, with their vectors (or None)."""
    keys, values = _keyed(t, ids)
    rows = await conn.fetch(
        f"SELECT u.k, {'x.' + qi(t.embedding_col) if vectors else 'NULL'} AS e "
        f"FROM unnest($1::text[], $2::{t.id_type}[]) AS u(k, v) "
        f"JOIN {t.qualified} x ON x.{qi(t.id_col)} = u.v", keys, values)
    return {r["k"]: r["e"].to_numpy() if hasattr(r["e"], "to_numpy") else r["e"] for r in rows}


async def changed_records(conn: asyncpg.Connection, stream: str, t: VectorTable, changes: Sequence[Change],
                          any_records: bool) -> dict[str, Doubt | None]:
    """What the batch's *changes* (those the sink applies, in log order) do to the records:
    read before the batch is written (the table's state is the one before the changes)."""
    ids = _vector_update_ids(changes)
    known: dict[str, Doubt] = {}
    if any_records:
        known = await _load(conn, stream, list({str(ch.key[0]) for ch in changes}))
        ids |= set(known)
    if not ids:
        return {}
    held = await _rows(conn, t, sorted(ids), vectors=False)
    return track(changes, {i: i in held for i in ids}, known)


async def save(conn: asyncpg.Connection, stream: str, records: Mapping[str, Doubt | None]) -> None:
    """Write *records* (None: delete) in the caller's transaction."""
    gone = [k for k, d in records.items() if d is None]
    if gone:
        await conn.execute(f"DELETE FROM {TABLE} WHERE stream = $1 AND id = ANY($2::text[])", stream, gone)
    rows = [(stream, k, d.update_seq, d.add_seq, d.vector) for k, d in records.items()
            if d is not None and d.vector is not None]
    if rows:
        await conn.executemany(
            f"""INSERT INTO {TABLE} (stream, id, update_seq, add_seq, vector) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (stream, id) DO UPDATE SET update_seq = EXCLUDED.update_seq,
                    add_seq = EXCLUDED.add_seq, vector = EXCLUDED.vector""", rows)


async def replace_all(conn: asyncpg.Connection, stream: str, records: Mapping[str, Doubt]) -> None:
    """The stream's records are *records* (after a snapshot or a reconciliation)."""
    await conn.execute(f"DELETE FROM {TABLE} WHERE stream = $1", stream)
    await save(conn, stream, records)


async def clear(conn: asyncpg.Connection, stream: str) -> None:
    await conn.execute(f"DELETE FROM {TABLE} WHERE stream = $1", stream)


def same_vector(a: Any, b: Any, cosine: bool) -> bool:
    """Bit for bit; for a cosine collection within a few float32 steps."""
    x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if x.shape != y.shape:
        return False
    if not cosine:
        return x.tobytes() == y.tobytes()
    return bool(np.allclose(x, y, rtol=COSINE_RTOL, atol=1e-37))


async def settle(conn: asyncpg.Connection, stream: str, t: VectorTable,
                 source: ChromaCollection) -> tuple[int, int] | None:
    """Settle the records whose ADD Chroma's saved index has reached; returns (settled, vectors
    rewritten), or None when the stream has none left."""
    if not await has_records(conn, stream):
        return None  # nothing in doubt (always so for a server-only source: it has no log to ask)
    saved = await source.hnsw_saved()
    async with transaction(conn):
        await conn.execute(f"DELETE FROM {TABLE} WHERE stream = $1 AND add_seq IS NULL AND update_seq <= $2",
                           stream, saved)
        due = await conn.fetch(f"SELECT id, update_seq, add_seq, vector FROM {TABLE} WHERE stream = $1 "
                               "AND add_seq <= $2 ORDER BY id", stream, saved)
        left = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE stream = $1", stream)
    if not due:
        return (0, 0) if left else None
    ids = [r["id"] for r in due]
    try:
        served = await source.server_vectors(ids)
    except RetryableError as exc:  # the log stream goes on; asked again after the next batch or ping
        log.warning("cannot settle vectors now", collection=t.collection, due=len(ids), error=str(exc))
        return 0, 0
    if served is None:
        return 0, 0  # no server to ask: the table keeps what the log says
    current = await _rows(conn, t, ids)
    fixes: list[tuple[Any, Any, Any]] = []
    for r in due:
        got, held = served.get(r["id"]), current.get(r["id"])
        update = np.frombuffer(r["vector"], dtype="<f4")
        if got is None or held is None or len(update) != t.dim:
            continue  # gone since (its DELETE is a later log row), or not in the table (a reject)
        cosine = t.space == "cosine"
        if same_vector(got, update, cosine) and not same_vector(got, held, cosine):
            fixes.append((t.convert_id(r["id"]), update, held))
            log.warning("vector taken from Chroma's index", collection=t.collection, id=r["id"],
                        update_seq=r["update_seq"], add_seq=r["add_seq"],
                        why="Chroma applied an UPDATE its log says found the id missing (chromadb 1.5.9; "
                            "docs/chroma.md)")
    async with transaction(conn):
        if fixes:
            await conn.executemany(
                f"UPDATE {t.qualified} SET {qi(t.embedding_col)} = $2::{t.vector_type} "
                f"WHERE {qi(t.id_col)} = $1::{t.id_type} AND {qi(t.embedding_col)} = $3::{t.vector_type}",
                fixes)  # only over the vector compared: never over a write made since (after a cutover)
        await conn.executemany(f"DELETE FROM {TABLE} WHERE stream = $1 AND id = $2 AND add_seq = $3",
                               [(stream, r["id"], r["add_seq"]) for r in due])
    return len(due), len(fixes)
