"""Echo records: how the forward Chroma stream recognises the reverse stream's own writes.

During a switch both directions may run. The reverse sink (:mod:`syncd.stores.chroma.sink`)
writes into Chroma, and Chroma logs that write in its ``embeddings_queue`` like any
other, where the forward stream (:mod:`syncd.stores.pgvector.sink`) would read it back. So
before each write the reverse sink commits an *echo record* in ``syncd.chroma_echo``:
the collection, the id, the digest of what is sent (:func:`echo_digest`: float32
vector bytes, document, non-null metadata keys) or ``delete``, and the changelog
position it comes from (so that a replayed batch records nothing twice). The forward
sink computes the same digest from each Chroma log row (:func:`change_digest`), skips
the rows that match an open record and deletes those records in its own transaction
(:func:`take_echoes`, :func:`forget_echoes`). Records of writes Chroma refused are
deleted by the reverse sink with its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np

from syncd.model import Change, Op
from syncd.sql import STATE_SCHEMA

ECHO_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.chroma_echo (
    collection_id text NOT NULL,
    id            text NOT NULL,
    digest        text NOT NULL,
    position      bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, id, digest, position)
);
"""
DELETED = "delete"


def echo_digest(vector: bytes | None, document: str | None, metadata: Mapping[str, Any]) -> str:
    """What one Chroma upsert carries: float32 bytes, document, the non-null metadata keys."""
    body = json.dumps({"d": document, "m": {k: v for k, v in metadata.items() if v is not None},
                       "v": vector.hex() if vector is not None else None},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def change_digest(change: Change) -> str:
    """The digest of a forward change (a Chroma log row), comparable with :func:`echo_digest`."""
    row = change.row
    if change.op is Op.DELETE or row is None:
        return DELETED
    vector = row.get("embedding")
    blob = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
    document = row.get("document") if row.get("has_document") else None
    return echo_digest(blob, document, row.get("metadata") or {})


Echo = tuple[str, str, int]
"""(item id, digest, reverse changelog position) of one echo record."""


async def take_echoes(conn: asyncpg.Connection, collection_id: str,
                      changes: Sequence[Change]) -> tuple[set[int], list[Echo]]:
    """Which of the forward *changes* are the reverse stream's own writes coming back.

    Returns their indexes, and the records to delete in the caller's transaction. Each
    record matches one change, oldest first: the same image written twice (from two
    changelog rows) comes back twice, as two log rows.
    """
    if not changes or not await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_echo"):
        return set(), []
    ids = sorted({str(ch.key[0]) for ch in changes})
    rows = await conn.fetch(
        f"SELECT id, digest, position FROM {STATE_SCHEMA}.chroma_echo "
        "WHERE collection_id = $1 AND id = ANY($2::text[]) ORDER BY position",
        collection_id, ids)
    if not rows:
        return set(), []
    open_: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        open_.setdefault((r["id"], r["digest"]), []).append(int(r["position"]))
    skip: set[int] = set()
    taken: list[Echo] = []
    for i, ch in enumerate(changes):
        key = (str(ch.key[0]), change_digest(ch))
        positions = open_.get(key)
        if positions:
            skip.add(i)
            taken.append((*key, positions.pop(0)))
    return skip, taken


async def forget_echoes(conn: asyncpg.Connection, collection_id: str, taken: Sequence[Echo]) -> None:
    if taken:
        await conn.executemany(
            f"""DELETE FROM {STATE_SCHEMA}.chroma_echo
                WHERE collection_id = $1 AND id = $2 AND digest = $3 AND position = $4""",
            [(collection_id, i, d, p) for i, d, p in taken])


async def record_echoes(conn: asyncpg.Connection, collection_id: str, echoes: Sequence[Echo]) -> None:
    """Record the writes about to be sent to Chroma (in the caller's transaction)."""
    await conn.executemany(
        f"""INSERT INTO {STATE_SCHEMA}.chroma_echo (collection_id, id, digest, position)
            VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
        [(collection_id, i, d, p) for i, d, p in echoes])
