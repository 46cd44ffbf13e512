"""Reading both stores as the oracle needs them: SQLite values with ``typeof()``, PostgreSQL
values as ``::text``, and the open rejects."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.fuzz.model import q
from tests.fuzz.oracle import Cell

ROWID = "_syncd_rowid"


@dataclass(frozen=True)
class SourceTable:
    name: str
    columns: tuple[str, ...]
    pk: tuple[str, ...]  # () when keyed by rowid
    rows: tuple[tuple[tuple[Cell, ...], dict[str, Cell]], ...]  # (key cells, column -> cell)


@dataclass(frozen=True)
class TargetTable:
    name: str
    types: dict[str, str]  # column -> format_type
    rows: tuple[dict[str, str | None], ...]


@dataclass(frozen=True)
class Reject:
    table: str
    key: Any
    error: str


def read_source(path: Path) -> list[SourceTable]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.text_factory = bytes
    try:
        names = [r[0].decode() for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
            "AND name NOT LIKE '\\_syncd%' ESCAPE '\\' ORDER BY name")]
        return [_read_table(conn, n) for n in names]
    finally:
        conn.close()


def _read_table(conn: sqlite3.Connection, name: str) -> SourceTable:
    info = conn.execute(f"PRAGMA table_info({q(name)})").fetchall()
    cols = tuple(r[1].decode() for r in info)
    pk = tuple(r[1].decode() for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    key_exprs = [q(c) for c in pk] if pk else ["rowid"]
    exprs = [f"typeof({e}), {e}" for e in key_exprs + [q(c) for c in cols]]
    rows = []
    for raw in conn.execute(f"SELECT {', '.join(exprs)} FROM {q(name)}"):
        cells = [Cell(raw[i].decode(), raw[i + 1]) for i in range(0, len(raw), 2)]
        nk = len(key_exprs)
        rows.append((tuple(cells[:nk]), dict(zip(cols, cells[nk:], strict=True))))
    return SourceTable(name, cols, pk, tuple(rows))


SESSION = ("SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; "
           "SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'")


async def read_target(conn: asyncpg.Connection, table: str, schema: str = "public") -> TargetTable | None:
    cols = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS t
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""", schema, table)
    if not cols:
        return None
    types = {r["attname"]: r["t"] for r in cols}
    select = ", ".join(f"{q(c)}::text" for c in types)
    rows = await conn.fetch(f"SELECT {select} FROM {q(schema)}.{q(table)}")
    return TargetTable(table, types, tuple(dict(zip(types, r, strict=True)) for r in rows))


async def read_rejects(conn: asyncpg.Connection) -> list[Reject]:
    if not await conn.fetchval("SELECT to_regclass('syncd.rejects') IS NOT NULL"):
        return []
    rows = await conn.fetch("SELECT object, key::text AS key, error FROM syncd.rejects "
                            "WHERE resolved_at IS NULL")
    return [Reject(r["object"], json.loads(r["key"]), r["error"]) for r in rows]
