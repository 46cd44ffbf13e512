"""Where the switch stands, stored in PostgreSQL: which way the daemon streams, and the
operation (cutover / rollback) in progress with its last completed step.

One row, ``syncd.cutover``. ``direction`` says which stores the app uses and so which
streams the daemon runs: ``forward`` (app on SQLite/Chroma; sqlite → postgres and
chroma → pgvector) or ``reverse`` (app on PostgreSQL; postgres → sqlite and pgvector →
chroma). ``operation``/``step`` are set while a cutover or rollback runs and cleared when
it ends, so a crash leaves a record of how far it got; ``detail`` carries what a resume
needs (the reverse start positions, the app config files' flip intent: which files, their old and
new SHA-256, their temporary files — :func:`syncd.cutover.appconfig_set.intent`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.sql import STATE_SCHEMA

FORWARD = "forward"
REVERSE = "reverse"
CHANNEL = "syncd_cutover"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.cutover (
    id         integer PRIMARY KEY CHECK (id = 1),
    direction  text NOT NULL DEFAULT '{FORWARD}' CHECK (direction IN ('{FORWARD}', '{REVERSE}')),
    operation  text,
    step       text,
    detail     jsonb NOT NULL DEFAULT '{{}}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {STATE_SCHEMA}.cutover (id) VALUES (1) ON CONFLICT DO NOTHING;
"""


@dataclass(slots=True)
class State:
    direction: str = FORWARD
    operation: str | None = None
    step: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "operation": self.operation, "step": self.step,
                "detail": self.detail}


async def ensure(conn: asyncpg.Connection) -> None:
    await conn.execute(DDL)


async def load(conn: asyncpg.Connection) -> State:
    """The stored state; ``forward`` with nothing in progress when none was ever stored."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.cutover"):
        return State()
    row = await conn.fetchrow(f"SELECT direction, operation, step, detail::text AS detail "
                              f"FROM {STATE_SCHEMA}.cutover WHERE id = 1")
    if row is None:
        return State()
    return State(row["direction"], row["operation"], row["step"], json.loads(row["detail"] or "{}"))


async def direction(conn: asyncpg.Connection) -> str:
    return (await load(conn)).direction


async def save(conn: asyncpg.Connection, state: State) -> None:
    """Store *state* and wake the daemon (``NOTIFY syncd_cutover``)."""
    await ensure(conn)
    await conn.execute(
        f"""UPDATE {STATE_SCHEMA}.cutover SET direction = $1, operation = $2, step = $3,
            detail = $4::jsonb, updated_at = now() WHERE id = 1""",
        state.direction, state.operation, state.step, json.dumps(state.detail))
    await conn.execute(f"NOTIFY {CHANNEL}, '{state.direction}'")
