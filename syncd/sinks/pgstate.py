"""syncd's own tables in the target: checkpoints and rejects, in schema ``syncd``.

Every function takes a connection that is already inside the caller's
transaction, so that rows, rejects and the checkpoint commit together.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.model import Checkpoint, Position, SnapshotState

STATE_SCHEMA = "syncd"
DDL_LOCK = 0x73796E6364
"""``pg_advisory_xact_lock`` key held while syncd creates or alters its tables and the targets:
streams start together, and concurrent ``CREATE … IF NOT EXISTS`` of one name can fail."""

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.checkpoints (
    stream     text PRIMARY KEY,
    position   bigint NOT NULL,
    snapshot   jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {STATE_SCHEMA}.checkpoints ADD COLUMN IF NOT EXISTS source_id text;
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.rejects (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    object      text NOT NULL,
    key         jsonb NOT NULL,
    position    bigint,
    row_image   jsonb,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX IF NOT EXISTS rejects_open ON {STATE_SCHEMA}.rejects (stream, object) WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.objects (
    stream  text NOT NULL,
    object  text NOT NULL,
    target  text NOT NULL,
    created boolean NOT NULL,
    PRIMARY KEY (stream, object)
);
ALTER TABLE {STATE_SCHEMA}.objects ADD COLUMN IF NOT EXISTS copied_from bigint;
ALTER TABLE {STATE_SCHEMA}.objects ADD COLUMN IF NOT EXISTS copied_epoch bigint;
"""


def jsonable(value: Any) -> Any:
    """A JSON-safe form of a raw source value (blobs as ``{"$base64": ...}``)."""
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, str) and "\x00" in value:  # jsonb cannot hold NUL
        return {"$text_base64": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # datetime, Decimal, UUID after conversion


@dataclass(frozen=True, slots=True)
class Reject:
    object: str
    key: Sequence[Any]
    row: Mapping[str, Any] | None
    error: str
    position: Position | None = None


async def ensure(conn: asyncpg.Connection) -> None:
    await conn.execute(DDL)


async def load_checkpoint(conn: asyncpg.Connection, stream: str) -> Checkpoint | None:
    row = await conn.fetchrow(
        f"SELECT position, snapshot, source_id FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", stream)
    if row is None:
        return None
    snap = SnapshotState.from_json(json.loads(row["snapshot"])) if row["snapshot"] else None
    return Checkpoint(position=Position(row["position"]), snapshot=snap, source_id=row["source_id"])


async def save_checkpoint(conn: asyncpg.Connection, stream: str, position: Position,
                          snapshot: SnapshotState | None, source_id: str | None = None) -> None:
    """Upsert the checkpoint; *source_id* names the source's change log (capture generation)."""
    await conn.execute(
        f"""INSERT INTO {STATE_SCHEMA}.checkpoints (stream, position, snapshot, source_id, updated_at)
            VALUES ($1, $2, $3::jsonb, $4, now())
            ON CONFLICT (stream) DO UPDATE
            SET position = EXCLUDED.position, snapshot = EXCLUDED.snapshot,
                source_id = coalesce(EXCLUDED.source_id, {STATE_SCHEMA}.checkpoints.source_id),
                updated_at = now()""",
        stream, position.offset, json.dumps(snapshot.to_json()) if snapshot else None, source_id)


async def insert_rejects(conn: asyncpg.Connection, stream: str, rejects: Sequence[Reject]) -> None:
    if not rejects:
        return
    await conn.executemany(
        f"""INSERT INTO {STATE_SCHEMA}.rejects (stream, object, key, position, row_image, error)
            VALUES ($1, $2, $3::jsonb, $4, $5::jsonb, $6)""",
        [(stream, r.object, json.dumps(jsonable(list(r.key))),
          r.position.offset if r.position else None,
          json.dumps(jsonable(r.row)) if r.row is not None else None, r.error) for r in rejects])


async def resolve_rejects(conn: asyncpg.Connection, stream: str, obj: str,
                          keys: Sequence[Sequence[Any]]) -> None:
    """Mark open rejects of these keys resolved: a later change for the key was applied."""
    if not keys:
        return
    await conn.execute(
        f"""UPDATE {STATE_SCHEMA}.rejects SET resolved_at = now()
            WHERE stream = $1 AND object = $2 AND resolved_at IS NULL AND key = ANY($3::jsonb[])""",
        stream, obj, [json.dumps(jsonable(list(k))) for k in keys])


async def count_rejects(conn: asyncpg.Connection, stream: str) -> int:
    """Open rejects: neither resolved nor accepted (``syncd rejects --accept``, :mod:`syncd.rejects`)."""
    value = await conn.fetchval(
        f"SELECT count(*) FROM {STATE_SCHEMA}.rejects r WHERE stream = $1 AND resolved_at IS NULL "
        "AND to_jsonb(r) ->> 'accepted_at' IS NULL", stream)
    return int(value)


async def list_rejects(conn: asyncpg.Connection, stream: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT id, stream, object, key::text AS key, position, error, created_at
            FROM {STATE_SCHEMA}.rejects r
            WHERE resolved_at IS NULL AND ($1::text IS NULL OR stream = $1)
              AND to_jsonb(r) ->> 'accepted_at' IS NULL
            ORDER BY id LIMIT $2""", stream, limit)
    return [dict(r) for r in rows]


async def has_state(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.checkpoints"))
