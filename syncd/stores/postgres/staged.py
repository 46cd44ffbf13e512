"""A table's share of a batch through a staging table: its rows in one binary COPY into a
temporary table, then one ``INSERT … SELECT … ON CONFLICT`` (or ``DELETE … USING``) from it.

PostgreSQL then plans and runs one statement for the rows instead of one per row. For a few rows
the staging's extra round trips cost more than they save, so below :data:`STAGED_FROM_ROWS` rows
the statement runs once per row (``executemany``), as a streaming batch does. Either way the
caller's transaction holds the rows and the checkpoint.

A staging table lives as long as the connection and is emptied at every commit or rollback
(``ON COMMIT DELETE ROWS``: PostgreSQL empties it only after a transaction that used it). Its
name is derived from the target table, the columns with their types and the statement, so a
target altered by a schema change gets a new one. A batch writes each table once
(:func:`~syncd.stores.postgres.sink.coalesce` groups by table), so a staging table is filled at
most once per transaction.

Keys arrive distinct (:func:`syncd.stores.postgres.sink.coalesce`), but distinct as Python
compares them: two keys PostgreSQL takes as equal make the upsert fail with a cardinality
violation, and the caller applies the batch change by change instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from syncd.sql import qi
from syncd.stores.postgres.tables import TargetTable

STAGED_FROM_ROWS = 64
"""A table's share of a batch goes through a staging table from this many rows."""

async def delete(conn: asyncpg.Connection, tt: TargetTable, keys: Sequence[tuple[Any, ...]]) -> None:
    """Delete the rows of *keys* (converted key values, in :attr:`Table.pk` order)."""
    if len(keys) < STAGED_FROM_ROWS:
        await conn.executemany(tt.delete_sql, keys)
        return
    pk = tt.source.pk
    stage = await _stage(conn, tt, "delete", pk, keys)
    on = " AND ".join(f"t.{qi(k)} = s.{qi(k)}" for k in pk)
    await conn.execute(f"DELETE FROM {tt.qualified} AS t USING pg_temp.{stage} AS s WHERE {on}")


async def upsert(conn: asyncpg.Connection, tt: TargetTable, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert or update *rows* (converted, in :attr:`TargetTable.columns` order)."""
    if len(rows) < STAGED_FROM_ROWS:
        await conn.executemany(tt.upsert_sql, rows)
        return
    names = [c.name for c in tt.columns]
    stage = await _stage(conn, tt, "upsert", names, rows)
    cols = ", ".join(qi(n) for n in names)
    await conn.execute(f"INSERT INTO {tt.qualified} ({cols}) SELECT {cols} FROM pg_temp.{stage} "
                       f"{tt.on_conflict}")


async def _stage(conn: asyncpg.Connection, tt: TargetTable, use: str, columns: Sequence[str],
                 records: Sequence[tuple[Any, ...]]) -> str:
    """The staging table of *tt*'s *columns* for *use*, holding *records*; its name."""
    types = {c.name: c.pg_type for c in tt.columns}
    shape = repr((use, tt.qualified, [(c, types[c]) for c in columns]))
    stage = f"_syncd_stage_{hashlib.md5(shape.encode(), usedforsecurity=False).hexdigest()[:20]}"
    cols = ", ".join(qi(c) for c in columns)
    await conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                       f"SELECT {cols} FROM {tt.qualified} WITH NO DATA")
    await conn.copy_records_to_table(stage, records=records, columns=list(columns), schema_name="pg_temp")
    return stage
