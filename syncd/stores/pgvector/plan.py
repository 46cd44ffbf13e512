"""Where a Chroma collection goes in PostgreSQL: the table, its columns, and the SQL for
each Chroma operation.

Without a ``[[target.collections]]`` entry a collection gets a table named after
it: ``id text primary key, embedding vector(dim), document text, metadata jsonb``.
With one, ``columns`` maps target columns to ``id``, ``embedding``, ``document``,
``metadata`` (the keys not mapped elsewhere) or ``metadata.KEY`` (one key, in a
typed column). An existing table (made by the app's migrations) is adopted:
columns are matched by name and values converted to their types; a value that
does not fit is a :class:`~syncd.errors.RowError` naming the column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from syncd.config import Target
from syncd.errors import RowError, SchemaError
from syncd.pg.converters import Converter, converter
from syncd.pg.families import family
from syncd.pg.split import ITEM_COL, Split, item_key
from syncd.ports.collections import CollectionInfo, Hnsw, Vector
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.pgvector.index import VectorIndex
from syncd.stores.pgvector.mapping import (
    ColumnMapping,
    Existing,
    MappedColumn,
    column_converter,
    parse_columns,
    pg_name,
    target_entry,
    type_for_kinds,
)


@dataclass(slots=True)
class VectorTable:
    """One collection and the PostgreSQL table it is written to."""

    collection_id: str
    collection: str
    space: str
    schema: str
    name: str
    dim: int
    vector_type: str
    created: bool
    id_col: str = "id"
    id_type: str = "text"
    embedding_col: str = "embedding"
    document_col: str | None = "document"
    document_not_null: bool = False
    metadata_col: str | None = "metadata"
    mapped: tuple[MappedColumn, ...] = ()
    hnsw: Hnsw | None = None
    """The collection's HNSW settings: the index is built with the same ``m`` / ``ef_construction``."""
    index: VectorIndex | None = None
    """The vector index found on the table (the app's, or syncd's once built)."""
    split: Split | None = None
    """The documents table the items are split with; written and read through syncd's view."""
    _convert_id: Converter = field(default=converter("text"), repr=False)
    _convert_doc: Converter = field(default=converter("text"), repr=False)

    def __post_init__(self) -> None:
        self._convert_id = converter(self.id_type)

    @property
    def qualified(self) -> str:
        """What the items are written to and read from: the table, or the view over a split's tables."""
        return self.split.view_qualified if self.split else self.indexed

    @property
    def indexed(self) -> str:
        """The table that holds the vectors (and their index)."""
        return f"{qi(self.schema)}.{qi(self.name)}"

    @property
    def rel(self) -> tuple[str, str]:
        """(schema, name) of :attr:`qualified`."""
        return (STATE_SCHEMA, self.split.view) if self.split else (self.schema, self.name)

    @property
    def item_text(self) -> str:
        """SQL of a row's Chroma id, as text."""
        if self.split:
            return qi(ITEM_COL)
        return qi(self.id_col) if self.id_type == "text" else f"{qi(self.id_col)}::text"

    @property
    def mapped_keys(self) -> frozenset[str]:
        return frozenset(m.key for m in self.mapped if m.constant is None)

    @property
    def columns(self) -> list[str]:
        """Columns of a full image, in record order."""
        cols = [self.id_col, self.embedding_col]
        if self.document_col:
            cols.append(self.document_col)
        if self.metadata_col:
            cols.append(self.metadata_col)
        return cols + [m.name for m in self.mapped] + ([ITEM_COL] if self.split else [])

    # --- values --------------------------------------------------------------------------

    def convert_id(self, item_id: str) -> Any:
        try:
            return self._convert_id(str(item_key(item_id)) if self.split else item_id)
        except RowError as exc:
            raise RowError(f"column {self.id_col!r}: {exc.message}", column=self.id_col) from None

    def check_vector(self, vector: Vector | None) -> Vector:
        col = self.embedding_col
        if vector is None:
            raise RowError("the item has no embedding", column=col)
        if len(vector) != self.dim:
            raise RowError(f"embedding has {len(vector)} dimensions, but {self.schema}.{self.name}.{col} is "
                           f"{self.vector_type} ({self.dim} dimensions)", column=col)
        finite = np.isfinite(vector)
        if not finite.all():
            bad = np.flatnonzero(~finite)[:5].tolist()
            raise RowError(f"embedding has NaN or infinite values (at positions {bad}); pgvector cannot "
                           "store them", column=col)
        return vector

    def convert_document(self, document: str | None) -> Any:
        if self.document_col is None:
            return None
        if document is None and self.document_not_null:
            raise RowError(f"column {self.document_col!r} is NOT NULL and the item has no document",
                           column=self.document_col)
        try:
            return self._convert_doc(document)
        except RowError as exc:
            raise RowError(f"column {self.document_col!r}: {exc.message}", column=self.document_col) from None

    def convert_mapped(self, column: MappedColumn, value: Any, *, present: bool = True) -> Any:
        if value is None:
            if column.not_null and present:
                raise RowError(f"column {column.name!r} (metadata key {column.key!r}) is NOT NULL and the "
                               "item has no such key", column=column.name)
            return None
        if isinstance(value, float) and not math.isfinite(value):
            raise RowError(f"column {column.name!r}: metadata {column.key!r} = {value!r} is not finite",
                           column=column.name)
        try:
            return column.convert(value)
        except RowError as exc:
            raise RowError(f"column {column.name!r} (metadata key {column.key!r}): {exc.message}",
                           column=column.name) from None

    def rest_json(self, values: Mapping[str, Any]) -> str | None:
        """The unmapped, non-null metadata keys as jsonb text (None when there are none)."""
        if self.metadata_col is None:
            return None
        keys = self.mapped_keys
        rest = {k: v for k, v in values.items() if k not in keys and v is not None}
        if not rest:
            return None
        text = json.dumps(rest, ensure_ascii=False, allow_nan=False) if _finite(rest) else None
        if text is None:
            raise RowError(f"column {self.metadata_col!r}: metadata holds a non-finite number",
                           column=self.metadata_col)
        if "\\u0000" in text:
            raise RowError(f"column {self.metadata_col!r}: jsonb cannot hold \\u0000",
                           column=self.metadata_col)
        return text

    def record(self, item_id: str, vector: Vector | None, document: str | None,
               metadata: Mapping[str, Any]) -> tuple[Any, ...]:
        """A full image in :attr:`columns` order (snapshot, ADD, reconciliation)."""
        out: list[Any] = [self.convert_id(item_id), self.check_vector(vector)]
        if self.document_col:
            out.append(self.convert_document(document))
        if self.metadata_col:
            out.append(self.rest_json(metadata))
        out.extend(self.convert_mapped(m, m.value(metadata)) for m in self.mapped)
        if self.split:
            out.append(item_id)
        return tuple(out)

    def patch(self, item_id: str, vector: Vector | None, has_document: bool, document: str | None,
              metadata: Mapping[str, Any]) -> tuple[Any, ...]:
        """Arguments of :meth:`update_sql` / :meth:`upsert_sql` for an UPDATE / UPSERT."""
        out: list[Any] = [self.convert_id(item_id), None if vector is None else self.check_vector(vector)]
        if self.document_col:
            out += [has_document, self.convert_document(document) if has_document else None]
        if self.metadata_col:
            keys = self.mapped_keys
            out += [self.rest_json(metadata),
                    [k for k, v in metadata.items() if v is None and k not in keys]]
        for m in self.mapped:
            present = m.constant is not None or m.key in metadata
            value = m.value(metadata)
            out += [present, self.convert_mapped(m, value, present=present) if present else None]
        if self.split:
            out.append(item_id)
        return tuple(out)

    # --- SQL -----------------------------------------------------------------------------

    def _casts(self) -> list[str]:
        casts = [self.id_type, self.vector_type]
        if self.document_col:
            casts.append("text")
        if self.metadata_col:
            casts.append("jsonb")
        return casts + [m.pg_type for m in self.mapped] + (["text"] if self.split else [])

    @property
    def add_sql(self) -> str:
        """ADD: insert unless the id exists (no ON CONFLICT: its NOT NULL checks would fire first)."""
        cols = ", ".join(qi(c) for c in self.columns)
        values = ", ".join(f"${i}::{t}" for i, t in enumerate(self._casts(), 1))
        return (f"INSERT INTO {self.qualified} ({cols}) SELECT {values} "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self.qualified} "
                f"WHERE {qi(self.id_col)} = $1::{self.id_type})")

    @property
    def replace_sql(self) -> str:
        """A full image, replacing the row if the id exists (reconciliation)."""
        cols = ", ".join(qi(c) for c in self.columns)
        values = ", ".join(f"${i}::{t}" for i, t in enumerate(self._casts(), 1))
        if self.split:  # a view takes no ON CONFLICT: update, else insert
            sets = ", ".join(f"{qi(c)} = ${i}::{t}" for i, (c, t)
                             in enumerate(zip(self.columns, self._casts(), strict=True), 1) if i > 1)
            return (f"WITH u AS (UPDATE {self.qualified} SET {sets} "
                    f"WHERE {qi(self.id_col)} = $1::{self.id_type} RETURNING 1) "
                    f"INSERT INTO {self.qualified} ({cols}) SELECT {values} "
                    "WHERE NOT EXISTS (SELECT 1 FROM u)")
        sets = ", ".join(f"{qi(c)} = EXCLUDED.{qi(c)}" for c in self.columns[1:])
        return (f"INSERT INTO {self.qualified} ({cols}) VALUES ({values}) "
                f"ON CONFLICT ({qi(self.id_col)}) DO UPDATE SET {sets}")

    def _update_parts(self) -> tuple[list[str], list[str]]:
        """SET clauses of an UPDATE and the values of the matching INSERT, sharing parameters."""
        emb = qi(self.embedding_col)
        sets = [f"{emb} = COALESCE($2::{self.vector_type}, {emb})"]
        values = ["$1::" + self.id_type, f"$2::{self.vector_type}"]
        n = 2
        if self.document_col:
            doc = qi(self.document_col)
            sets.append(f"{doc} = CASE WHEN ${n + 1}::boolean THEN ${n + 2}::text ELSE {doc} END")
            values.append(f"${n + 2}::text")
            n += 2
        if self.metadata_col:
            meta = qi(self.metadata_col)
            sets.append(f"{meta} = NULLIF((COALESCE({meta}, '{{}}'::jsonb) - ${n + 2}::text[]) "
                        f"|| COALESCE(${n + 1}::jsonb, '{{}}'::jsonb), '{{}}'::jsonb)")
            values.append(f"${n + 1}::jsonb")
            n += 2
        for m in self.mapped:
            col = qi(m.name)
            sets.append(f"{col} = CASE WHEN ${n + 1}::boolean THEN ${n + 2}::{m.pg_type} ELSE {col} END")
            values.append(f"${n + 2}::{m.pg_type}")
            n += 2
        if self.split:
            sets.append(f"{qi(ITEM_COL)} = ${n + 1}::text")
            values.append(f"${n + 1}::text")
        return sets, values

    @property
    def update_sql(self) -> str:
        """UPDATE: patch an existing id; a missing id is left alone."""
        sets, _ = self._update_parts()
        return (f"UPDATE {self.qualified} SET {', '.join(sets)} "
                f"WHERE {qi(self.id_col)} = $1::{self.id_type}")

    @property
    def upsert_sql(self) -> str:
        """UPSERT: patch an existing id, or insert a new one."""
        sets, values = self._update_parts()
        cols = ", ".join(qi(c) for c in self.columns)
        return (f"WITH u AS (UPDATE {self.qualified} SET {', '.join(sets)} "
                f"WHERE {qi(self.id_col)} = $1::{self.id_type} RETURNING 1) "
                f"INSERT INTO {self.qualified} ({cols}) SELECT {', '.join(values)} "
                "WHERE NOT EXISTS (SELECT 1 FROM u)")

    @property
    def delete_sql(self) -> str:
        return f"DELETE FROM {self.qualified} WHERE {qi(self.id_col)} = $1::{self.id_type}"


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


# --- planning -------------------------------------------------------------------------------

def plan(info: CollectionInfo, target: Target, existing: dict[str, Existing] | None,
         key_types: Mapping[str, set[str]], warn: Callable[[str], None], *,
         table: str | None = None, split: Split | None = None) -> VectorTable:
    """Map *info* onto a new table (``existing`` None) or adopt an existing one; *table*
    overrides the name from config (the name recorded when the collection was first synced).
    With *split*, *existing* are the columns of its view."""
    entry, index = target_entry(target, info.name)
    mapping = parse_columns(entry, index)
    table = pg_name(table or (entry.table if entry else info.name), "table name")
    assert info.dimension is not None
    dim = info.dimension
    if existing is None:
        mapped = []
        for column, key in mapping.keys:
            pg_type = (target.column_types.get(f"{table}.{column}")
                       or type_for_kinds(key_types.get(key, set())))
            mapped.append(MappedColumn(pg_name(column, "column name"), key, pg_type, False,
                                       column_converter(pg_type)))
        for column, value in mapping.constants:
            pg_type = target.column_types.get(f"{table}.{column}") or "text"
            mapped.append(MappedColumn(pg_name(column, "column name"), "", pg_type, False,
                                       column_converter(pg_type), constant=value))
        return VectorTable(
            collection_id=info.id, collection=info.name, space=info.space, schema=target.schema, name=table,
            dim=dim, vector_type=f"vector({dim})", created=True, id_col=mapping.id, id_type="text",
            embedding_col=mapping.embedding, document_col=mapping.document, metadata_col=mapping.metadata,
            mapped=tuple(mapped), hnsw=info.hnsw)
    adopted = _adopt(info, target, table, mapping, existing, warn, split)
    adopted.split = split
    return adopted


def _adopt(info: CollectionInfo, target: Target, table: str, mapping: ColumnMapping,
           existing: dict[str, Existing], warn: Callable[[str], None],
           split: Split | None = None) -> VectorTable:
    where = f"existing table {target.schema}.{table}"
    if split is not None:
        where = f"existing tables {target.schema}.{split.documents} + {target.schema}.{table}"
    for role, column in (("the item id", mapping.id), ("the embedding", mapping.embedding)):
        if column not in existing:
            raise SchemaError(f"{where} has no column {column!r} for {role} of collection {info.name!r}; "
                              "map it with [[target.collections]] columns, or drop the table so syncd "
                              "creates it")
    emb = existing[mapping.embedding].pg_type
    if not emb.startswith("vector(") or not emb[7:-1].isdigit():
        raise SchemaError(f"{where}.{mapping.embedding} is {emb}; syncd writes float32 vectors bit for bit "
                          "and needs vector(n)")
    dim = int(emb[7:-1])
    assert info.dimension is not None
    if dim != info.dimension:
        warn(f"collection {info.name!r} holds {info.dimension}-dimensional vectors but "
             f"{where}.{mapping.embedding} is {emb}: every item will be rejected until the table or the "
             "collection changes")
    document = mapping.document if mapping.document in existing else None
    if document is None and mapping.document is not None:
        warn(f"{where} has no column {mapping.document!r}: documents of collection {info.name!r} are "
             "not copied")
    metadata = mapping.metadata if mapping.metadata in existing else None
    if metadata is not None and family(existing[metadata].pg_type) != "json":
        raise SchemaError(f"{where}.{metadata} is {existing[metadata].pg_type}; metadata needs jsonb")
    if metadata is None and mapping.metadata is not None:
        warn(f"{where} has no column {mapping.metadata!r}: metadata keys of collection {info.name!r} "
             "not mapped to columns are not copied")
    mapped = []
    for column, key in mapping.keys:
        if column not in existing:
            raise SchemaError(f"{where} has no column {column!r} (mapped from metadata.{key})")
        col = existing[column]
        mapped.append(MappedColumn(column, key, col.pg_type, col.not_null, column_converter(col.pg_type)))
    for column, value in mapping.constants:
        if column not in existing:
            raise SchemaError(f"{where} has no column {column!r} (a constant of collection {info.name!r})")
        col = existing[column]
        mapped.append(MappedColumn(column, "", col.pg_type, col.not_null, column_converter(col.pg_type),
                                   constant=value))
    return VectorTable(
        collection_id=info.id, collection=info.name, space=info.space, schema=target.schema, name=table,
        dim=dim, vector_type=emb, created=False, id_col=mapping.id, id_type=existing[mapping.id].pg_type,
        embedding_col=mapping.embedding, document_col=document,
        document_not_null=bool(document and existing[document].not_null), metadata_col=metadata,
        mapped=tuple(mapped), hnsw=info.hnsw)
