"""Row-by-row comparison of SQLite tables with their PostgreSQL copies.

Both sides are read in key order, a chunk at a time, and SQLite values go
through the same converters the stream uses, so a difference means the target
does not hold what the stream should have written.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.errors import RowError
from syncd.sql import qi
from syncd.stores.postgres import datetime as pg_datetime
from syncd.stores.postgres.families import family
from syncd.stores.postgres.tables import TargetTable
from syncd.stores.sqlite.schema import uri


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: tuple[Any, ...]
    kind: str  # "missing" (in target), "extra" (in target), "changed", "rejected"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.table} {list(self.key)}: {self.kind}{' ' + self.detail if self.detail else ''}"


def _norm(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if family(pg_type) == "json" and isinstance(value, str):
        return json.loads(value)
    return value


def _sqlite_rows(path: str, tt: TargetTable) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...] | str]]:
    conn = sqlite3.connect(uri(path, "ro"), uri=True)
    try:
        cols = ", ".join(qi(c) for c in tt.source.column_names)
        if tt.source.synthetic_key:
            cols = "rowid, " + cols
        order = "rowid" if tt.source.rowid_key else ", ".join(qi(k) for k in tt.source.pk)
        names = list(tt.source.target_columns)
        key_idx = [names.index(k) for k in tt.source.pk]
        for raw in conn.execute(f"SELECT {cols} FROM {qi(tt.source.name)} ORDER BY {order}"):
            try:
                converted = tt.convert_row(raw)
                yield tuple(converted[i] for i in key_idx), tuple(
                    _norm(v, c.pg_type) for v, c in zip(converted, tt.columns, strict=True))
            except RowError as exc:
                yield tuple(raw[i] for i in key_idx), exc.message
    finally:
        conn.close()


async def compare_table(sqlite_path: str, conn: asyncpg.Connection, tt: TargetTable,
                        limit: int = 100) -> list[Difference]:
    """Differences between one SQLite table and its target (up to *limit*).

    Registers syncd's exact date/time codecs on *conn* (:mod:`syncd.stores.postgres.datetime`), so that
    years 1 and 9999 and PostgreSQL's infinities are read as what they are.
    """
    await pg_datetime.register(conn)
    cols = ", ".join(qi(c.name) for c in tt.columns)
    order = ", ".join(qi(k) for k in tt.source.pk)
    key_idx = [[c.name for c in tt.columns].index(k) for k in tt.source.pk]
    target: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for rec in await conn.fetch(f"SELECT {cols} FROM {tt.qualified} ORDER BY {order}"):
        values = tuple(_norm(v, c.pg_type) for v, c in zip(tuple(rec), tt.columns, strict=True))
        target[tuple(values[i] for i in key_idx)] = values
    diffs: list[Difference] = []
    for key, image in _sqlite_rows(sqlite_path, tt):
        have = target.pop(key, None)
        if isinstance(image, str):
            diffs.append(Difference(tt.name, key, "rejected", image))
            continue
        values = image
        if have is None:
            diffs.append(Difference(tt.name, key, "missing"))
        elif have != values:
            cols_diff = [c.name for c, a, b in zip(tt.columns, have, values, strict=True) if a != b]
            diffs.append(Difference(tt.name, key, "changed", f"columns {cols_diff}"))
        if len(diffs) >= limit:
            return diffs
    diffs.extend(Difference(tt.name, k, "extra") for k in list(target)[: limit - len(diffs)])
    return diffs


async def compare_all(sqlite_path: str, conn: asyncpg.Connection,
                      tables: Sequence[TargetTable]) -> dict[str, list[Difference]]:
    return {tt.name: await compare_table(sqlite_path, conn, tt) for tt in tables}
