"""pgvector source for one collection (reverse direction): its table's changes in PostgreSQL.

Reads ``syncd.changelog`` (:class:`syncd.changelog.ChangeReader`) for the one table
the collection was copied to, and turns each row image back into the forward
stream's image shape — ``op`` (``add`` for an INSERT, ``upsert`` for an UPDATE),
``embedding`` (float32), ``document``, ``has_document``, ``metadata``, ``error`` —
so that the Chroma sink and the forward code share one shape. Metadata is the
``metadata`` jsonb plus the lifted columns folded back under their keys (a NULL
column: the key is absent). A table without a document column says
``has_document = False`` (Chroma's document is left alone).

The capture trigger stores ``to_jsonb(NEW)``: a ``vector`` / ``halfvec`` becomes the
JSON string of its text form (``"[1,0.5,-3]"``), which pgvector prints as the
shortest decimal that reads back to the same float32 (float16 for ``halfvec``), with
``-0`` for negative zero; the reader casts it back to the column type, and the binary
codec hands over the bits. A string that still arrives (no codec) is parsed number by
number with ``float()`` (``json.loads`` would turn ``-0`` into the integer 0).

There is no snapshot: a reverse stream starts at the position the cutover records.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from syncd.model import Batch, Change, Key, Op, Position
from syncd.pg.changelog import ChangeReader, LogRow
from syncd.pg.families import family
from syncd.ports import Chunk, Pending
from syncd.stores.pgvector.mapping import MappedColumn
from syncd.stores.pgvector.plan import VectorTable


def parse_vector(value: Any) -> np.ndarray:
    """A vector column's value (pgvector object, text form, list) as float32."""
    if value is None:
        raise ValueError("the row has no embedding")
    if hasattr(value, "to_numpy"):
        return np.asarray(value.to_numpy(), dtype=np.float32)
    if isinstance(value, str):  # "[1,-0,0.33333334]": float() keeps -0, which JSON numbers would not
        text = value.strip()
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError(f"not a vector: {text[:40]!r}")
        body = text[1:-1].strip()
        return np.array([float(x) for x in body.split(",")] if body else [], dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def metadata_value(column: MappedColumn, value: Any) -> Any:
    """A lifted column's value as the metadata value it came from."""
    if value is None:
        return None
    kind = family(column.pg_type)
    if kind == "json":
        return json.loads(value) if isinstance(value, str) else value
    if isinstance(value, bool):
        return value
    if isinstance(value, decimal.Decimal) or kind == "float":
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def decode_row(row: LogRow, table: VectorTable, obj: str) -> Change:
    """One changelog row of *table* as a Change in the forward image shape."""
    key = (str(row.key[0]),)
    if row.op is Op.DELETE or row.row is None:
        return Change(Op.DELETE, obj, key, None, row.position, row.committed_at)
    image = row.row
    error: str | None = None
    vector: np.ndarray | None = None
    try:
        vector = parse_vector(image.get(table.embedding_col))
    except (ValueError, TypeError) as exc:
        error = f"column {table.embedding_col!r}: {exc}"
    metadata: dict[str, Any] = {}
    if table.metadata_col:
        raw = image.get(table.metadata_col)
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            parsed, error = None, error or f"column {table.metadata_col!r}: not JSON: {exc}"
        if isinstance(parsed, dict):
            metadata.update(parsed)
        elif parsed is not None:
            error = error or f"column {table.metadata_col!r} holds {type(parsed).__name__}, not a JSON object"
    for m in table.mapped:
        if m.constant is None:  # a constant is the table's, not the item's
            metadata[m.key] = metadata_value(m, image.get(m.name))
    has_document = table.document_col is not None
    document = image.get(table.document_col) if table.document_col else None
    op = "add" if row.op is Op.INSERT else "upsert"
    out = {"op": op, "embedding": vector, "document": None if document is None else str(document),
           "has_document": has_document, "metadata": metadata, "error": error}
    return Change(Op.INSERT if row.op is Op.INSERT else Op.UPDATE, obj, key, out, row.position,
                  row.committed_at)


class PgvectorSource:
    """One collection's pgvector table, read through the PostgreSQL changelog."""

    def __init__(self, reader: ChangeReader, table: VectorTable) -> None:
        self.reader = reader
        self.table = table

    @property
    def object(self) -> str:
        return self.table.collection_id

    @property
    def tables(self) -> list[str]:
        return [self.table.name]

    async def close(self) -> None:
        await self.reader.close()

    async def head(self) -> Position:
        return await self.reader.head()

    def snapshot_objects(self) -> Sequence[str]:
        return []

    async def count(self, obj: str) -> int:
        return 0

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        return
        yield  # an async generator with nothing in it

    async def changes(self, after: Position, limit: int) -> Batch:
        rows = await self.reader.read(after, limit, self.tables)
        changes = [decode_row(r, self.table, self.object) for r in rows]
        return Batch(changes=changes, position=rows[-1].position if rows else after)

    async def pending(self, after: Position) -> Pending:
        return await self.reader.pending(after, self.tables)

    async def wait(self, timeout: float) -> None:
        await self.reader.wait(timeout)

    async def prune(self, upto: Position) -> int:
        return await self.reader.prune(upto, self.tables)


def folded(table: VectorTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a row of *table* stands for (tests and verification)."""
    change = decode_row(LogRow(Position(1), table.name, Op.UPDATE, (row[table.id_col],), dict(row), 0.0),
                        table, table.collection_id)
    assert change.row is not None
    return {k: v for k, v in change.row["metadata"].items() if v is not None}
