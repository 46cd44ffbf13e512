"""Vectors a table may hold instead of the log's: verify's own reading of Chroma's vector doubt.

Chroma 1.5.9's HNSW index can hold, for an id, the vector of an UPDATE made while the id was
missing, where its log's last image (the ADD) says another (docs/chroma.md, "A live Chroma
can disagree with its own log"). syncd copies what a restarted Chroma returns, so the table
may hold either. verify derives the second candidate on its own, not through the sink's code
(docs/verify.md, "Vector doubts"):

- an id the stream has an open record for in ``syncd.chroma_vector_doubt`` (not settled yet):
  the record's vector (the UPDATE's bits);
- an id whose log shows the pattern — a vector UPDATE while the id was missing (no row of it
  before, or a DELETE last), then the ADD that created it, and no DELETE, UPSERT or vector
  UPDATE since — once Chroma's HNSW segment is saved at or past that ADD (only then can the
  doubt have been settled for the UPDATE): the last such UPDATE's vector.

A row holding exactly one candidate (the log's vector or this one) is not a vector difference.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import asyncpg
import numpy as np

from syncd.sql import STATE_SCHEMA
from syncd.stores.chroma.records import OP_ADD, OP_DELETE, OP_UPDATE, OP_UPSERT, decode_vector, seq_value
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.verify.canon import part_hash
from syncd.verify.item_expect import vector_part

DOUBT_TABLE = f"{STATE_SCHEMA}.chroma_vector_doubt"


async def _recorded(conn: asyncpg.Connection, stream: str, ids: Sequence[str]) -> dict[str, bytes]:
    if await conn.fetchval("SELECT to_regclass($1)", DOUBT_TABLE) is None:
        return {}
    rows = await conn.fetch(f"SELECT id, vector FROM {DOUBT_TABLE} "
                            "WHERE stream = $1 AND id = ANY($2::text[])",
                            stream, list(ids))
    return {str(r["id"]): bytes(r["vector"]) for r in rows}


def _from_log(conn: sqlite3.Connection, topic: str, ids: Sequence[str], saved: int) -> dict[str, bytes]:
    """Per id, the vector of an UPDATE of the then-missing id before its ADD (see the module docstring)."""
    rows = conn.execute(
        "SELECT id, seq_id, operation, vector, encoding FROM embeddings_queue WHERE topic = ? "
        "AND id IN (SELECT value FROM json_each(?)) ORDER BY seq_id",
        (topic, json.dumps(list(ids)))).fetchall()
    state: dict[str, tuple[bool, bytes | None, bytes | None, int]] = {}
    for item_id, seq, op, blob, encoding in rows:
        exists, pending, candidate, add_seq = state.get(item_id, (False, None, None, 0))
        vec = decode_vector(blob, encoding)[0] if blob is not None else None
        bits = None if vec is None else np.asarray(vec, dtype="<f4").tobytes()
        if op == OP_DELETE:
            exists, pending, candidate = False, None, None
        elif op == OP_UPSERT:
            exists, pending, candidate = True, None, None
        elif op == OP_ADD and not exists:
            exists, candidate, add_seq, pending = True, pending, seq_value(seq), None
        elif op == OP_UPDATE and bits is not None:
            if exists:
                candidate = None
            else:
                pending = bits
        state[item_id] = (exists, pending, candidate, add_seq)
    return {k: c for k, (e, _, c, a) in state.items() if e and c is not None and saved >= a}


async def vector_candidates(conn: asyncpg.Connection, stream: str, source: ChromaCollectionSource,
                            ids: Sequence[str]) -> dict[str, str]:
    """For *ids*: the row hash of the other vector the table may hold (:func:`part_hash` of its part)."""
    if not ids:
        return {}
    found = await _recorded(conn, stream, ids)
    log, info = source.log, source.info
    saved = await log.hnsw_saved(info)
    topic = log.topic(info.id)
    rest = [i for i in ids if i not in found]
    if rest and saved:
        found |= await log.call(lambda: log.read(lambda c: _from_log(c, topic, rest, saved)))
    return {k: part_hash(vector_part(np.frombuffer(v, dtype="<f4"))) for k, v in found.items()}


__all__ = ["DOUBT_TABLE", "vector_candidates"]
