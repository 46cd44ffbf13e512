"""syncd's own tables in the target: checkpoints, rejects, stream owners and the indexes and keys
PostgreSQL refused (:mod:`syncd.stores.postgres.constraints`), in schema ``syncd``.

Every function takes a connection that is already inside the caller's
transaction, so that rows, rejects and the checkpoint commit together.

Fencing: ``syncd.owners`` holds, per stream, the generation of the process that owns it (bumped
by each :func:`claim`). A process that claimed streams puts its :class:`Claims` in the
``claims`` context variable (``syncd run`` does, for every task it starts); every checkpoint
written under it is conditioned on the generation it claimed, so a process that lost its
stream to another one fails (:class:`Fenced`) instead of moving the position.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from syncd.errors import FatalError, StrictModeStop
from syncd.model import Checkpoint, InvalidText, Position, SnapshotState, jsonb_holds
from syncd.pg.datetime import OutOfRange
from syncd.sql import STATE_SCHEMA

log = structlog.get_logger("syncd.rejects")

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
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.owners (
    stream     text PRIMARY KEY,
    generation bigint NOT NULL,
    owner      jsonb NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {STATE_SCHEMA}.checkpoints ADD COLUMN IF NOT EXISTS generation bigint;
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.refused_constraints (
    stream    text NOT NULL,
    object    text NOT NULL,
    name      text NOT NULL,
    kind      text NOT NULL,
    statement text NOT NULL,
    error     text NOT NULL,
    todo      text NOT NULL,
    attempts  integer NOT NULL DEFAULT 1,
    first_at  timestamptz NOT NULL DEFAULT now(),
    last_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, object, name)
);
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.imports (
    bundle     text PRIMARY KEY,
    path       text NOT NULL,
    finished   text[] NOT NULL DEFAULT '{{}}',
    started_at timestamptz NOT NULL DEFAULT now()
);
"""
_DDL_MARK = "syncd state " + hashlib.sha256(DDL.encode()).hexdigest()[:16]
"""Comment on ``syncd.checkpoints`` once :data:`DDL` ran: a changed DDL runs again."""


def jsonable(value: Any) -> Any:
    """A JSON-safe form of a raw source value (blobs as ``{"$base64": ...}``; text with NUL or
    not UTF-8 as ``{"$text_base64": ...}``, its bytes)."""
    if isinstance(value, InvalidText):
        return {"$text_base64": base64.b64encode(value.raw).decode()}
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, str) and not jsonb_holds(value):  # NUL, invalid UTF-8
        return {"$text_base64": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, OutOfRange):  # exactly: microseconds (days) since 2000-01-01
        return {"$" + value.type: value.units}
    return str(value)  # datetime, Decimal, UUID after conversion


@dataclass(frozen=True, slots=True)
class Reject:
    object: str
    key: Sequence[Any]
    row: Mapping[str, Any] | None
    error: str
    position: Position | None = None


ITEM_FIX = ("fix the item or the mapping ([[target.collections]], target.column_types), or set "
            "target.strict = false to quarantine such items")
ROW_FIX = ("fix the row or the mapping (target.column_types), or set target.strict = false to quarantine "
           "such rows")


def stop_if_strict(strict: bool, rejects: Sequence[Reject], *, items: bool, fix: str, what: str = "") -> None:
    """Strict mode: the first reject stops the stream (nothing of the batch is committed) with its
    reason, *what* the store says of it, and *fix*; a collection's item is named by its id."""
    if strict and rejects:
        r = rejects[0]
        where = f"collection {r.object!r}, id {r.key[0]!r}: " if items else ""
        raise StrictModeStop(f"strict mode: {where}{what}{r.error}; {fix}")


def report_rejects(rejects: Sequence[Reject], on_reject: Callable[[int], None] | None, *,
                   items: bool = False) -> None:
    """Log each reject (with its table / collection and key) and count them for the status."""
    if not rejects:
        return
    for r in rejects:
        if items:
            log.warning("item rejected", collection=r.object, id=r.key[0], error=r.error)
        else:
            log.warning("row rejected", table=r.object, key=list(r.key), error=r.error)
    if on_reject:
        on_reject(len(rejects))


async def _current(conn: asyncpg.Connection) -> bool:
    mark = await conn.fetchval(
        "SELECT obj_description(to_regclass($1), 'pg_class')", f"{STATE_SCHEMA}.checkpoints")
    return bool(mark == _DDL_MARK)


async def ensure(conn: asyncpg.Connection) -> None:
    """Create or bring syncd's tables up to date. When they are current this is one catalog read
    and takes no lock: streams call it while others write their checkpoints, and ``ALTER TABLE``
    (even ``ADD COLUMN IF NOT EXISTS``) would lock the table against them (a deadlock once
    another lock is involved). ``syncd run`` calls it once before its streams start."""
    if await _current(conn):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
        if await _current(conn):
            return
        await conn.execute(DDL)
        await conn.execute(f"COMMENT ON TABLE {STATE_SCHEMA}.checkpoints IS '{_DDL_MARK}'")


# --- owners and fencing ---------------------------------------------------------------------


class Fenced(FatalError):
    """Another process took this stream over: this one must not write its checkpoint."""


@dataclass(slots=True)
class Claims:
    """The streams this process owns, each with the generation it claimed, and who it is."""

    owner: Mapping[str, Any]
    generations: dict[str, int] = field(default_factory=dict)


claims: ContextVar[Claims | None] = ContextVar("syncd_claims", default=None)
"""Set by ``syncd run`` before it starts its tasks (which inherit it)."""


def generation_of(stream: str) -> int | None:
    """The generation this process claimed *stream* with (None: not claimed, not fenced)."""
    current = claims.get()
    return None if current is None else current.generations.get(stream)


def describe_owner(owner: Mapping[str, Any] | None) -> str:
    """``syncd pid 4121 on host db1 since 2025-01-01T10:00:00Z (config …, state dir …)``."""
    if not owner:
        return "another syncd process"
    where = ", ".join(f"{k} {owner[k]}" for k in ("config", "state dir") if owner.get(k))
    return (f"syncd pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"
            + (f" ({where})" if where else ""))


async def claim(conn: asyncpg.Connection, stream: str, owner: Mapping[str, Any]) -> int:
    """Become *stream*'s owner: its generation goes up by one, and is returned. Call it while
    holding the stream's advisory lock; a process still writing under the old generation is fenced."""
    value = await conn.fetchval(
        f"""INSERT INTO {STATE_SCHEMA}.owners AS o (stream, generation, owner) VALUES ($1, 1, $2::jsonb)
            ON CONFLICT (stream) DO UPDATE SET generation = o.generation + 1, owner = EXCLUDED.owner,
                claimed_at = now()
            RETURNING generation""", stream, json.dumps(dict(owner)))
    return int(value)


async def owner_of(conn: asyncpg.Connection, stream: str) -> tuple[int, dict[str, Any]] | None:
    row = await conn.fetchrow(
        f"SELECT generation, owner FROM {STATE_SCHEMA}.owners WHERE stream = $1", stream)
    return None if row is None else (int(row["generation"]), json.loads(row["owner"]))


def fenced(stream: str, generation: int, owner: Mapping[str, Any] | None) -> Fenced:
    return Fenced(f"stream {stream} was taken over by {describe_owner(owner)}: this process (generation "
                  f"{generation}) stopped without moving the checkpoint; one daemon per target — stop "
                  "one of them")


async def load_checkpoint(conn: asyncpg.Connection, stream: str) -> Checkpoint | None:
    row = await conn.fetchrow(
        f"SELECT position, snapshot, source_id FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", stream)
    if row is None:
        return None
    snap = SnapshotState.from_json(json.loads(row["snapshot"])) if row["snapshot"] else None
    return Checkpoint(position=Position(row["position"]), snapshot=snap, source_id=row["source_id"])


async def save_checkpoint(conn: asyncpg.Connection, stream: str, position: Position,
                          snapshot: SnapshotState | None, source_id: str | None = None) -> None:
    """Upsert the checkpoint; *source_id* names the source's change log (capture generation).

    When this process claimed *stream*, the write happens only while ``syncd.owners`` still holds
    its generation (read ``FOR SHARE``: a concurrent claim waits for this transaction, and this
    one sees a claim committed before it); otherwise :class:`Fenced` is raised and the caller's
    transaction — rows, rejects and checkpoint — rolls back."""
    snap = json.dumps(snapshot.to_json()) if snapshot else None
    generation = generation_of(stream)
    if generation is None:
        await conn.execute(
            f"""INSERT INTO {STATE_SCHEMA}.checkpoints (stream, position, snapshot, source_id, updated_at)
                VALUES ($1, $2, $3::jsonb, $4, now())
                ON CONFLICT (stream) DO UPDATE
                SET position = EXCLUDED.position, snapshot = EXCLUDED.snapshot,
                    source_id = coalesce(EXCLUDED.source_id, {STATE_SCHEMA}.checkpoints.source_id),
                    updated_at = now()""",
            stream, position.offset, snap, source_id)
        return
    status = await conn.execute(
        f"""WITH fence AS (SELECT generation FROM {STATE_SCHEMA}.owners
                           WHERE stream = $1 AND generation = $5 FOR SHARE)
            INSERT INTO {STATE_SCHEMA}.checkpoints AS k
                (stream, position, snapshot, source_id, generation, updated_at)
            SELECT $1, $2, $3::jsonb, $4, generation, now() FROM fence
            ON CONFLICT (stream) DO UPDATE
            SET position = EXCLUDED.position, snapshot = EXCLUDED.snapshot,
                source_id = coalesce(EXCLUDED.source_id, k.source_id), generation = EXCLUDED.generation,
                updated_at = now()""",
        stream, position.offset, snap, source_id, generation)
    if status.split()[-1] == "0":
        current = await owner_of(conn, stream)
        raise fenced(stream, generation, current[1] if current else None)


async def insert_rejects(conn: asyncpg.Connection, stream: str, rejects: Sequence[Reject]) -> None:
    """Record *rejects*; one still open for the same key, position and row is not recorded again
    (a replayed batch or chunk counts its rejects once; two rows of one NULL key are two rejects)."""
    if not rejects:
        return
    await conn.executemany(
        f"""INSERT INTO {STATE_SCHEMA}.rejects (stream, object, key, position, row_image, error)
            SELECT $1, $2, $3::jsonb, $4, $5::jsonb, $6
            WHERE NOT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.rejects WHERE stream = $1 AND object = $2
                              AND key = $3::jsonb AND position IS NOT DISTINCT FROM $4::bigint
                              AND row_image IS NOT DISTINCT FROM $5::jsonb AND resolved_at IS NULL)""",
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
    """Open rejects: neither resolved nor accepted (``syncd rejects --accept``,
    :mod:`syncd.streams.rejects`)."""
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
