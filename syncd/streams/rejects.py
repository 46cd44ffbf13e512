"""`syncd rejects`: the rows PostgreSQL could not take, and the operator's decisions on them.

A reject is *open* until one of two things happens:

- **resolved**: the app changed the row in SQLite again and the new version was applied
  (``resolved_at``; the stream does it, :func:`syncd.pg.state.resolve_rejects`);
- **accepted**: an operator decided that PostgreSQL may lack the row (``syncd rejects
  --accept ID``). Nothing is deleted: the row image and the reason stay, with who accepted it,
  when and why (``accepted_at``, ``accepted_by``, ``accepted_reason``). ``verify`` lists
  accepted rejects apart and does not count them; ``status`` counts open rejects only.

Decision recorded in docs/operations.md ("Rejected rows").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from syncd.errors import ConfigError
from syncd.pg import state as pgstate
from syncd.sql import STATE_SCHEMA

ACCEPT_DDL = f"""ALTER TABLE {STATE_SCHEMA}.rejects
    ADD COLUMN IF NOT EXISTS accepted_at timestamptz,
    ADD COLUMN IF NOT EXISTS accepted_by text,
    ADD COLUMN IF NOT EXISTS accepted_reason text"""

_ACCEPTED = "(to_jsonb(r) ->> 'accepted_at')"
"""The acceptance time, or NULL — also on a ``syncd.rejects`` made before the columns existed."""


async def listing(conn: asyncpg.Connection, *, limit: int, accepted: bool = False,
                  stream: str | None = None) -> list[dict[str, Any]]:
    """Open rejects (or accepted ones), oldest first."""
    if not await pgstate.has_state(conn):
        return []
    rows = await conn.fetch(
        f"""SELECT id, stream, object, key::text AS key, position, error, created_at,
                   {_ACCEPTED} AS accepted_at, to_jsonb(r) ->> 'accepted_by' AS accepted_by,
                   to_jsonb(r) ->> 'accepted_reason' AS accepted_reason
            FROM {STATE_SCHEMA}.rejects r
            WHERE resolved_at IS NULL AND ({_ACCEPTED} IS NOT NULL) = $3
              AND ($1::text IS NULL OR stream = $1)
            ORDER BY id LIMIT $2""", stream, limit, accepted)
    return [dict(r) for r in rows]


async def unresolved(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[int, bool]]:
    """Every unresolved reject: (object, normalised key) -> (id, accepted)."""
    if not await pgstate.has_state(conn):
        return {}
    rows = await conn.fetch(
        f"""SELECT id, object, key::text AS key, {_ACCEPTED} IS NOT NULL AS accepted
            FROM {STATE_SCHEMA}.rejects r WHERE resolved_at IS NULL ORDER BY id""")
    return {(r["object"], norm_key(json.loads(r["key"]))): (int(r["id"]), bool(r["accepted"])) for r in rows}


def norm_key(key: Any) -> str:
    return json.dumps(key, sort_keys=True, default=str)


async def accept(conn: asyncpg.Connection, ids: Sequence[int], *, reason: str, by: str) -> list[int]:
    """Mark open rejects *ids* accepted, all or none; a ConfigError names an id that is not open."""
    wanted = sorted(set(ids))
    if not await pgstate.has_state(conn):
        raise ConfigError(f"--accept {wanted[0]}: there are no rejects (syncd has not written to this "
                          "target yet)")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", pgstate.DDL_LOCK)
        await conn.execute(ACCEPT_DDL)
        found = {r["id"]: r for r in await conn.fetch(
            f"SELECT id, resolved_at, accepted_at FROM {STATE_SCHEMA}.rejects WHERE id = ANY($1::bigint[])",
            wanted)}
        for i in wanted:
            r = found.get(i)
            if r is None:
                raise ConfigError(f"--accept {i}: no reject #{i} (`syncd rejects` lists the open ones)")
            if r["resolved_at"] is not None:
                raise ConfigError(f"--accept {i}: reject #{i} is already resolved: a later version of "
                                  "the row was applied")
            if r["accepted_at"] is not None:
                raise ConfigError(f"--accept {i}: reject #{i} was already accepted on "
                                  f"{r['accepted_at']:%Y-%m-%d %H:%M} UTC")
        await conn.execute(
            f"UPDATE {STATE_SCHEMA}.rejects SET accepted_at = now(), accepted_by = $2, accepted_reason = $3 "
            "WHERE id = ANY($1::bigint[])", wanted, by, reason)
    return wanted


def _where(r: dict[str, Any]) -> str:
    return f"change {r['position']}" if r.get("position") is not None else "snapshot"


def render(rows: Sequence[dict[str, Any]], *, limit: int, accepted: bool) -> list[str]:
    lines = []
    for r in rows:
        when = r["created_at"].strftime("%Y-%m-%d %H:%M:%S") if r.get("created_at") else "?"
        line = (f"#{r['id']} {r['object']} key {r['key']} ({r['stream']}, {_where(r)}, {when} UTC): "
                f"{r['error']}")
        if accepted:
            line += f" — accepted by {r.get('accepted_by') or '?'}" + (
                f": {r['accepted_reason']}" if r.get("accepted_reason") else "")
        lines.append(line)
    more = f" (the first {limit}; --limit N shows more)" if len(rows) >= limit else ""
    if accepted:
        lines.append(f"{len(rows)} accepted rejects{more}: PostgreSQL lacks these rows by decision")
        return lines
    lines.append(f"{len(rows)} open rejects{more}")
    if rows:
        lines.append("A reject clears itself when the app changes that row in SQLite again (the new "
                     "version is applied): fix the value there. To keep PostgreSQL without the row, "
                     "record the decision: syncd rejects --accept ID [--reason TEXT]")
    return lines


__all__ = ["ACCEPT_DDL", "accept", "listing", "norm_key", "render", "unresolved"]
