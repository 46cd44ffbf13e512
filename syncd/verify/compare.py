"""Row-by-row comparison of SQLite tables with their PostgreSQL copies.

Both sides are read whole, in key order. SQLite values become the parts verify expects
PostgreSQL to hold (:mod:`syncd.verify.expect`, verify's own table, not the stream's
converters); PostgreSQL computes the same parts in SQL from the stored values
(:mod:`syncd.verify.canon`). A difference means the target does not hold what the source
holds; a value verify finds not storable is reported as ``rejected``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.model import InvalidText
from syncd.sql import qi
from syncd.stores.postgres.tables import TargetTable
from syncd.stores.sqlite.schema import uri
from syncd.verify.canon import NULL, RowCanon
from syncd.verify.expect import Unfit, expect


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: tuple[Any, ...]
    kind: str  # "missing" (in target), "extra" (in target), "changed", "rejected"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.table} {list(self.key)}: {self.kind}{' ' + self.detail if self.detail else ''}"


def _sqlite_rows(path: str, tt: TargetTable) -> Iterator[tuple[tuple[Any, ...], tuple[str, ...] | str]]:
    """(key, parts) per SQLite row in key order; (raw key, why) for a row verify finds not storable."""
    expects = [expect(c.name, c.pg_type, c.rounded) for c in tt.columns]
    names = [c.name for c in tt.columns]
    key_idx = [names.index(k) for k in tt.source.pk]
    conn = sqlite3.connect(uri(path, "ro"), uri=True)
    conn.text_factory = InvalidText.read  # text that is not UTF-8: not storable but in bytea
    try:
        cols = ", ".join(qi(c) for c in tt.source.column_names)
        if tt.source.synthetic_key:
            cols = "rowid, " + cols
        order = "rowid" if tt.source.rowid_key else ", ".join(qi(k) for k in tt.source.pk)
        for raw in conn.execute(f"SELECT {cols} FROM {qi(tt.source.name)} ORDER BY {order}"):
            parts: list[str] = []
            try:
                for e, v in zip(expects, raw, strict=True):
                    parts.append(NULL if v is None else e.part(v))
            except Unfit as exc:
                why = f"column {expects[len(parts)].name}: {exc}"
                try:
                    yield tuple(expects[i].part(raw[i]) for i in key_idx), why
                except Unfit:
                    yield tuple(raw[i] for i in key_idx), why
                continue
            yield tuple(parts[i] for i in key_idx), tuple(parts)
    finally:
        conn.close()


async def compare_table(sqlite_path: str, conn: asyncpg.Connection, tt: TargetTable,
                        limit: int = 100) -> list[Difference]:
    """Differences between one SQLite table and its target (up to *limit*); keys are given as
    canonical parts (a row verify finds not storable: its SQLite key)."""
    canon = RowCanon.for_columns(tt.columns, tt.source.pk)
    parts_sql = ", ".join(canon.part_sql(i) for i in range(len(tt.columns)))
    order = ", ".join(qi(k) for k in tt.source.pk)
    target: dict[tuple[str, ...], tuple[str, ...]] = {}
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL TimeZone = 'UTC'")
        for rec in await conn.fetch(f"SELECT {parts_sql} FROM {tt.qualified} ORDER BY {order}"):
            values = tuple(str(v) for v in rec)
            target[tuple(values[i] for i in canon.key_index)] = values
    diffs: list[Difference] = []
    for key, image in _sqlite_rows(sqlite_path, tt):
        have = target.pop(key, None)
        if isinstance(image, str):
            diffs.append(Difference(tt.name, key, "rejected", image))
        else:
            if have is None:
                diffs.append(Difference(tt.name, key, "missing"))
            elif have != image:
                cols_diff = [c.name for c, a, b in zip(tt.columns, have, image, strict=True) if a != b]
                diffs.append(Difference(tt.name, key, "changed", f"columns {cols_diff}"))
        if len(diffs) >= limit:
            return diffs
    diffs.extend(Difference(tt.name, k, "extra") for k in list(target)[: limit - len(diffs)])
    return diffs


async def compare_all(sqlite_path: str, conn: asyncpg.Connection,
                      tables: Sequence[TargetTable]) -> dict[str, list[Difference]]:
    return {tt.name: await compare_table(sqlite_path, conn, tt) for tt in tables}
