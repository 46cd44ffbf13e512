"""How one Chroma item and its pgvector row are compared: canonical parts on both sides.

What each column must hold is verify's own expectation (:mod:`syncd.verify.item_expect`:
id, vector, document, the metadata keys not mapped to columns as jsonb, each mapped key in
its column's type — no converter of the sink), one canonical part per column, computed in
Python from the Chroma item and in SQL from the stored row (:mod:`syncd.verify.canon`).
The vector's part is the MD5 of its float32 values,
big-endian — in SQL, of ``vector_send`` without its 4-byte header — so equal parts
mean equal bits, and only a short hash per column crosses the wire. When a part
differs, the row is read whole to say which component or metadata key differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from syncd.pg.split import ITEM_COL
from syncd.ports.collections import Item, Vector
from syncd.sql import qi
from syncd.stores.pgvector.plan import VectorTable
from syncd.stores.postgres.types import ColumnMap
from syncd.verify.canon import NULL, ColumnCanon, column_canon, jsonb_text, part_hash
from syncd.verify.expect import Unfit
from syncd.verify.item_expect import ItemExpect, vector_part

SHOWN_COMPONENTS = 3
"""Differing vector components described per item (all are counted)."""


def float32_text(value: Any) -> str:
    """A float32 as its shortest decimal and its bits: ``0.1 (0x3dcccccd)``."""
    f = np.float32(value)
    bits = int(np.array([f], dtype=np.float32).view(np.uint32)[0])
    return f"{np.format_float_positional(f, unique=True, trim='-')} (0x{bits:08x})"


@dataclass(slots=True)
class Expected:
    """A Chroma item as the stream would write it: its parts, or why it cannot be written."""

    item: Item
    parts: list[str] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """A pgvector row: its id as text and one short hash per column."""

    id: str
    hashes: tuple[str, ...]


class VectorCanon:
    """Parts of one collection's rows, in :attr:`VectorTable.columns` order."""

    def __init__(self, table: VectorTable, vector_send: str) -> None:
        self.table = table
        self.vector_send = vector_send
        t = table
        self.id_text = t.item_text
        self.columns: list[ColumnCanon | None] = [column_canon(ColumnMap(t.id_col, "", t.id_type)), None]
        if t.document_col:
            self.columns.append(column_canon(ColumnMap(t.document_col, "", "text")))
        if t.metadata_col:
            self.columns.append(column_canon(ColumnMap(t.metadata_col, "", "jsonb")))
        self.columns += [column_canon(ColumnMap(m.name, "", m.pg_type)) for m in t.mapped]
        if t.split:
            self.columns.append(column_canon(ColumnMap(ITEM_COL, "", "text")))
        self.names = list(t.columns)
        self.expect = ItemExpect(table)

    # --- Python ------------------------------------------------------------------------------

    def expected(self, item: Item) -> Expected:
        if item.error:
            return Expected(item, None, item.error)
        try:
            parts = self.expect.parts(item)
        except Unfit as exc:
            return Expected(item, None, str(exc))
        return Expected(item, [part_hash(p) for p in parts])

    # --- SQL ---------------------------------------------------------------------------------

    def _part_sqls(self) -> list[str]:
        out = []
        for c, name in zip(self.columns, self.names, strict=True):
            sql = (f"md5(substring({self.vector_send}({qi(name)}) from 5))" if c is None else c.sql)
            out.append(f"left(md5(coalesce({sql}, '{NULL}')), 16)")
        return out

    def select_sql(self, where: str = "TRUE", order: bool = False) -> str:
        cols = ", ".join([self.id_text, *self._part_sqls()])
        sql = f"SELECT {cols} FROM {self.table.qualified} WHERE {where}"
        return sql + (f' ORDER BY {self.id_text} COLLATE "C"' if order else "")

    @staticmethod
    def stored(record: Sequence[Any]) -> Stored:
        return Stored(str(record[0]), tuple(record[1:]))

    async def by_ids(self, conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, Stored]:
        rows = await conn.fetch(self.select_sql(f"{self.id_text} = ANY($1::text[])"), list(ids))
        return {str(r[0]): self.stored(tuple(r)) for r in rows}

    def differing(self, exp: Expected, got: Stored) -> list[int]:
        assert exp.parts is not None
        return [i for i, (a, b) in enumerate(zip(exp.parts, got.hashes, strict=True)) if a != b]

    # --- what differs, in words --------------------------------------------------------------

    async def explain(self, conn: asyncpg.Connection, pairs: Sequence[tuple[Expected, list[int]]]
                      ) -> list[tuple[list[str], str]]:
        """For each (item, differing columns): the names of what differs and a description."""
        t = self.table
        cols = ", ".join(qi(c) if c != t.metadata_col else f"{qi(c)}::text" for c in self.names)
        rows = await conn.fetch(f"SELECT {cols} FROM {t.qualified} WHERE {self.id_text} = ANY($1::text[])",
                                [p[0].item.id for p in pairs])
        by_id = {str(r[-1] if t.split else r[0]): tuple(r) for r in rows}
        out: list[tuple[list[str], str]] = []
        for exp, idx in pairs:
            row = by_id.get(exp.item.id)
            record = self.expect.values(exp.item)
            names: list[str] = []
            notes: list[str] = []
            for i in idx:
                n, d = self._describe(i, record[i], row[i] if row is not None else None)
                names += n
                notes.append(d)
            out.append((names, "; ".join(notes)))
        return out

    def _describe(self, i: int, want: Any, got: Any) -> tuple[list[str], str]:
        t = self.table
        name = self.names[i]
        if name == t.embedding_col and i == 1:
            return [name], self._vector_note(want, got)
        if name == t.document_col:
            return [name], _text_note("document", want, got)
        if name == t.metadata_col:
            return self._metadata_note(want, got)
        mapped = next((m for m in t.mapped if m.name == name), None)
        if mapped is not None:
            return ([f"metadata.{mapped.key}"],
                    f"metadata key {mapped.key!r} (column {name}): {_show(want)} in Chroma, "
                    f"{_show(got)} in PostgreSQL")
        return [name], f"{name}: {_show(want)} in Chroma, {_show(got)} in PostgreSQL"

    def _vector_note(self, want: Vector, got: Any) -> str:
        if got is None:
            return "embedding: NULL in PostgreSQL"
        a = np.asarray(want, dtype=np.float32)
        b = got.to_numpy() if hasattr(got, "to_numpy") else np.asarray(got, dtype=np.float32)
        if len(a) != len(b):
            return f"embedding: {len(a)} dimensions in Chroma, {len(b)} in PostgreSQL"
        where = np.flatnonzero(a.view(np.uint32) != b.astype(np.float32).view(np.uint32))
        shown = ", ".join(f"[{j}] {float32_text(a[j])} in Chroma, {float32_text(b[j])} in PostgreSQL"
                          for j in where[:SHOWN_COMPONENTS])
        more = f" (+{len(where) - SHOWN_COMPONENTS} more)" if len(where) > SHOWN_COMPONENTS else ""
        return f"embedding: {len(where)} of {len(a)} components differ: {shown}{more}"

    def _metadata_note(self, want: dict[str, Any] | None, got: str | None) -> tuple[list[str], str]:
        mine = want or {}
        theirs = json.loads(got) if got else {}
        if not isinstance(theirs, dict):
            return ["metadata"], f"metadata: {_show(got)} in PostgreSQL is not an object"
        keys, notes = [], []
        for key in sorted(mine.keys() | theirs.keys()):
            if key not in theirs:
                keys.append(key)
                notes.append(f"{key!r} missing in PostgreSQL (Chroma: {_show(mine[key])})")
            elif key not in mine:
                keys.append(key)
                notes.append(f"{key!r} only in PostgreSQL ({_show(theirs[key])})")
            elif _jsonb(mine[key]) != _jsonb(theirs[key]):
                keys.append(key)
                notes.append(f"{key!r}: {_show(mine[key])} in Chroma, {_show(theirs[key])} in PostgreSQL")
        if not keys:
            return ["metadata"], "metadata: stored differently (same keys and values after parsing)"
        return [f"metadata.{k}" for k in keys], "metadata key " + "; ".join(notes)


def _jsonb(value: Any) -> str:
    return jsonb_text(json.dumps(value, ensure_ascii=False))


def _show(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def _text_note(what: str, want: str | None, got: str | None) -> str:
    if want is None or got is None:
        return f"{what}: {_show(want)} in Chroma, {_show(got)} in PostgreSQL"
    at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
              min(len(want), len(got)))
    return (f"{what}: {len(want):,} characters in Chroma, {len(got):,} in PostgreSQL, first difference at "
            f"character {at}: {_show(want[at:at + 20])} vs {_show(got[at:at + 20])}")


__all__ = ["Expected", "Stored", "VectorCanon", "float32_text", "vector_part"]
