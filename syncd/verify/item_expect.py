"""verify's own expectation of a Chroma item's pgvector row.

From the Chroma item (id, float32 vector, document, metadata) and the table's columns — the
only thing taken from the recorded mapping: which column holds the id, the vector, the
document, the unmapped metadata keys, and which metadata key each mapped column holds, with
its type — this derives what PostgreSQL must hold, as canonical parts (the same text
:mod:`syncd.verify.canon` computes in SQL from the stored row). No converter of the sink or of
its plan is used: ids, documents and mapped values go through :mod:`syncd.verify.expect`
(verify's table for values), the unmapped keys through the jsonb text verify prints itself,
the vector through its float32 bits. The rules are in docs/verify.md ("How a collection is
compared").
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from syncd.pg.split import ITEM_COL, NAMESPACE
from syncd.ports.collections import Item, Vector
from syncd.stores.pgvector.plan import VectorTable
from syncd.verify.canon import NULL
from syncd.verify.expect import Expect, Unfit, expect


def vector_part(vector: Vector) -> str:
    """MD5 of the float32 values, big-endian: what ``md5(substring(vector_send(x) from 5))`` gives."""
    data = np.asarray(vector, dtype=np.float32).astype(">f4").tobytes()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _kind(pg_type: str) -> str:
    return pg_type.strip().lower().split("(")[0].strip()


def _takes_bool(pg_type: str) -> bool:
    return pg_type.strip().lower() in ("boolean", "bool", "bigint", "integer", "smallint", "int8", "int4",
                                       "int2", "int")


@dataclass(frozen=True, slots=True)
class _Mapped:
    key: str
    not_null: bool
    expect: Expect
    boolean: bool
    text: bool
    json: bool
    constant: str | None = None


class ItemExpect:
    """What one collection's table must hold for an item, column by column (:attr:`VectorTable.columns`)."""

    def __init__(self, table: VectorTable) -> None:
        t = self.table = table
        self.id = expect(t.id_col, t.id_type)
        self.document = expect(t.document_col, "text") if t.document_col else None
        self.metadata = expect(t.metadata_col, "jsonb") if t.metadata_col else None
        self.mapped = [_Mapped(m.key, m.not_null, expect(m.name, m.pg_type),
                               _takes_bool(m.pg_type), _kind(m.pg_type) in ("text", "character varying"),
                               _kind(m.pg_type) in ("json", "jsonb"), m.constant) for m in t.mapped]
        self.mapped_keys = frozenset(m.key for m in t.mapped if m.constant is None)
        self.item = expect(ITEM_COL, "text") if t.split else None

    # --- the values, as Chroma holds them ------------------------------------------------------

    def rest(self, metadata: Mapping[str, Any]) -> dict[str, Any] | None:
        """The unmapped, non-null metadata keys (None when there are none: the column is NULL)."""
        rest = {k: v for k, v in metadata.items() if k not in self.mapped_keys and v is not None}
        return rest or None

    def values(self, item: Item) -> list[Any]:
        """What each column must hold, as Chroma values (for describing a difference)."""
        out: list[Any] = [item.id, item.vector]
        if self.document is not None:
            out.append(item.document)
        if self.metadata is not None:
            out.append(self.rest(item.metadata))
        out += [m.constant if m.constant is not None else item.metadata.get(m.key) for m in self.mapped]
        if self.item is not None:
            out.append(item.id)
        return out

    # --- the parts -----------------------------------------------------------------------------

    def parts(self, item: Item) -> list[str]:
        """The canonical part of each column; :class:`Unfit` when the item cannot be stored exactly."""
        t = self.table
        out = [self._key(item.id), self._vector(item.vector)]
        if self.document is not None:
            if item.document is None and t.document_not_null:
                raise Unfit(f"column {t.document_col!r} is NOT NULL and the item has no document")
            out.append(NULL if item.document is None else self._named(self.document, item.document))
        if self.metadata is not None:
            out.append(self._rest_part(item.metadata))
        for m in self.mapped:
            value = m.constant if m.constant is not None else item.metadata.get(m.key)
            out.append(self._mapped_part(m, value))
        if self.item is not None:
            out.append(self.item.part(item.id))
        return out

    def _key(self, item_id: str) -> str:
        """The id column's part. Split over two tables, the key is a UUID: the id itself when it is
        one, spelt canonically; else the UUIDv5 of the id in syncd's namespace (the rule as
        docs/mapping.md states it, computed here on its own)."""
        if self.table.split is None:
            return self.id.part(item_id)
        try:
            key = str(uuid.UUID(item_id))
        except ValueError:
            key = ""
        if key != item_id:
            key = str(uuid.uuid5(NAMESPACE, item_id))
        return self.id.part(key)

    def _vector(self, vector: Vector | None) -> str:
        t = self.table
        if vector is None:
            raise Unfit(f"column {t.embedding_col!r}: the item has no embedding")
        v = np.asarray(vector, dtype=np.float32)
        if len(v) != t.dim:
            raise Unfit(f"column {t.embedding_col!r}: {len(v)} dimensions, the column has {t.dim}")
        if not np.isfinite(v).all():
            raise Unfit(f"column {t.embedding_col!r}: NaN or infinite components; pgvector cannot store them")
        return vector_part(v)

    def _rest_part(self, metadata: Mapping[str, Any]) -> str:
        rest = self.rest(metadata)
        if rest is None:
            return NULL
        assert self.metadata is not None
        if not all(_finite(v) for v in rest.values()):
            raise Unfit(f"column {self.metadata.name!r}: metadata holds a non-finite number")
        text = json.dumps(rest, ensure_ascii=False)
        if "\\u0000" in text:
            raise Unfit(f"column {self.metadata.name!r}: jsonb cannot hold \\u0000")
        return self._named(self.metadata, text)

    def _mapped_part(self, m: _Mapped, value: Any) -> str:
        if value is None:
            if m.not_null:
                raise Unfit(f"column {m.expect.name!r} (metadata key {m.key!r}) is NOT NULL and the item has "
                            "no such key")
            return NULL
        if m.json:
            if not _finite(value):
                raise Unfit(f"column {m.expect.name!r} (metadata key {m.key!r}): {value!r} is not finite")
            value = json.dumps(value, ensure_ascii=False)   # the value itself, as JSON
        elif isinstance(value, bool):
            # true/false in a boolean column, 1/0 in an integer one (as SQLite stores them),
            # Python's spelling (what Chroma's client returns) in a text one; nothing else holds one
            if m.boolean:
                value = int(value)
            elif m.text:
                value = str(value)
            else:
                raise Unfit(f"column {m.expect.name!r} (metadata key {m.key!r}): {value!r} does not fit "
                            f"{m.expect.pg_type}")
        if isinstance(value, float) and not math.isfinite(value):
            raise Unfit(f"column {m.expect.name!r} (metadata key {m.key!r}): {value!r} is not finite")
        return self._named(m.expect, value, m.key)

    @staticmethod
    def _named(e: Expect, value: Any, key: str | None = None) -> str:
        try:
            return e.part(value)
        except Unfit as exc:
            where = f"column {e.name!r}" + (f" (metadata key {key!r})" if key else "")
            raise Unfit(f"{where}: {exc}") from None


__all__ = ["ItemExpect", "vector_part"]
