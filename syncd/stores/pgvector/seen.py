"""``syncd.chroma_seen``: per item, the log row (seq_id) its copied image already holds.

A snapshot chunk or a reconciliation page copies each item's current image; the Chroma log
rows at or before that image's seq_id must then not be applied again during catch-up
(:meth:`syncd.stores.pgvector.sink.PgvectorSink.apply` skips them). The rows go with the
chunk's or page's own transaction; they are cleared when a snapshot or reconciliation starts,
and once the stream has passed the largest of them.
"""

from __future__ import annotations

import asyncpg

from syncd.model import Batch
from syncd.sql import STATE_SCHEMA


async def clear(conn: asyncpg.Connection, stream: str) -> None:
    await conn.execute(f"DELETE FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream)


async def save(conn: asyncpg.Connection, stream: str, seen: list[tuple[str, int]]) -> None:
    """Record (id, seq_id) pairs, keeping the latest per id."""
    if seen:
        await conn.executemany(
            f"""INSERT INTO {STATE_SCHEMA}.chroma_seen (stream, id, seq) VALUES ($1, $2, $3)
                ON CONFLICT (stream, id) DO UPDATE SET seq = EXCLUDED.seq""",
            [(stream, item_id, seq) for item_id, seq in seen])


async def max_seq(conn: asyncpg.Connection, stream: str) -> int:
    """The largest seq_id recorded (0: none): changes after it are never skipped."""
    return int(await conn.fetchval(
        f"SELECT coalesce(max(seq), 0) FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1", stream))


async def held(conn: asyncpg.Connection, stream: str, batch: Batch, max_seen: int) -> set[int]:
    """Indexes of *batch*'s changes that a copied image already holds."""
    if not batch.changes or batch.changes[0].position.offset > max_seen:
        return set()
    ids = list({str(ch.key[0]) for ch in batch.changes})
    seen = {r["id"]: int(r["seq"]) for r in await conn.fetch(
        f"SELECT id, seq FROM {STATE_SCHEMA}.chroma_seen WHERE stream = $1 AND id = ANY($2::text[])",
        stream, ids)}
    return {i for i, ch in enumerate(batch.changes) if ch.position.offset <= seen.get(str(ch.key[0]), -1)}
