"""Snapshot chunks of a Chroma collection as rows of its pgvector table: full images converted
column by column where they need no conversion, encoded for binary COPY (pgvector's binary form,
so the float32 bits are written as read), and copied with bisection isolating the rows
PostgreSQL refuses."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from syncd.errors import RowError
from syncd.pg.connect import transaction, translate
from syncd.pg.families import base_type
from syncd.pg.state import Reject
from syncd.ports.collections import raw_image
from syncd.stores.pgvector.plan import VectorTable

Record = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A snapshot chunk converted off the event loop: full images, the rows they came from,
    the rows that cannot be written, and the images encoded for binary COPY (None when a
    column type has no encoder here: the images then go through asyncpg's codecs)."""

    records: list[Record]
    raws: list[Record]
    rejects: list[Reject]
    payload: list[bytes] | None


def vectors_fit(t: VectorTable, vectors: Sequence[Any]) -> npt.NDArray[np.bool_]:
    """Per vector: of the table's dimension and finite (checked for the whole chunk at once)."""
    fits = np.zeros(len(vectors), dtype=bool)
    index = [k for k, v in enumerate(vectors) if v is not None and len(v) == t.dim]
    if index:
        block = np.stack([vectors[k] for k in index])
        fits[index] = np.isfinite(block).all(axis=1)
    return fits


def plain_texts(values: Sequence[Any]) -> bool:
    """Whether *values* are all str (or None) without NUL: what a text converter returns unchanged."""
    try:
        return "\x00" not in "".join([v for v in values if v is not None])
    except TypeError:
        return False


def full_image(t: VectorTable, item_id: str, vector: Any, document: str | None,
               metadata: Mapping[str, Any], plain_id: bool = False, plain_doc: bool = False) -> Record:
    """:meth:`VectorTable.record` for a vector already checked (:func:`vectors_fit`); *plain_id* /
    *plain_doc*: the id / document is known to need no conversion (:func:`plain_texts`)."""
    out: list[Any] = [item_id if plain_id else t.convert_id(item_id), vector]
    if t.document_col:
        out.append(document if plain_doc and (document is not None or not t.document_not_null)
                   else t.convert_document(document))
    if t.metadata_col:
        out.append(rest_json(t, metadata))
    if t.mapped:
        out.extend(t.convert_mapped(m, m.value(metadata)) for m in t.mapped)
    if t.split:
        out.append(item_id)
    return tuple(out)


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False)


def rest_json(t: VectorTable, metadata: Mapping[str, Any]) -> str | None:
    """:meth:`VectorTable.rest_json` (same result, same errors) with one shared encoder."""
    if t.metadata_col is None:
        return None
    if t.mapped:
        keys = t.mapped_keys
        rest = {k: v for k, v in metadata.items() if k not in keys and v is not None}
    elif any(v is None for v in metadata.values()):
        rest = {k: v for k, v in metadata.items() if v is not None}
    else:
        rest = dict(metadata)
    if not rest:
        return None
    try:
        text = _JSON.encode(rest)
    except ValueError:
        raise RowError(f"column {t.metadata_col!r}: metadata holds a non-finite number",
                       column=t.metadata_col) from None
    if "\\u0000" in text:
        raise RowError(f"column {t.metadata_col!r}: jsonb cannot hold \\u0000", column=t.metadata_col)
    return text


_I32 = struct.Struct(">i").pack
_NULL = _I32(-1)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
FieldEncoder = Callable[[Any], bytes]


def _text_field(value: Any) -> bytes:
    data = str(value).encode()
    return _I32(len(data)) + data


def _jsonb_field(value: Any) -> bytes:
    data = str(value).encode()
    return _I32(len(data) + 1) + b"\x01" + data


def _packed(fmt: str) -> FieldEncoder:
    pack = struct.Struct(">i" + fmt).pack
    size = struct.calcsize(">" + fmt)
    return lambda value: pack(size, value)


def _bool_field(value: Any) -> bytes:
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


_FIELD_ENCODERS: dict[str, FieldEncoder] = {
    "text": _text_field, "character varying": _text_field, "varchar": _text_field,
    "jsonb": _jsonb_field, "json": _text_field,
    "bigint": _packed("q"), "integer": _packed("i"), "smallint": _packed("h"),
    "double precision": _packed("d"), "real": _packed("f"), "boolean": _bool_field,
}


def field_encoders(t: VectorTable) -> list[FieldEncoder] | None:
    """Binary COPY encoders of the non-vector columns, in :attr:`VectorTable.columns` order, or
    None when the column types are not all known here (a table syncd did not create, or a
    lifted column of another type)."""
    if not t.created or t.id_type != "text" or not t.vector_type.startswith("vector("):
        return None
    types = ["text"] + (["text"] if t.document_col else []) + (["jsonb"] if t.metadata_col else [])
    types += [m.pg_type for m in t.mapped]
    encoders = [_FIELD_ENCODERS.get(base_type(pg_type)) for pg_type in types]
    return None if any(e is None for e in encoders) else [e for e in encoders if e is not None]


COPY_MESSAGE = 1 << 19
"""Bytes per CopyData message: PostgreSQL reads a message whole before it parses it, so
messages of this size let it insert while the rest of a chunk is still on the way."""


async def copy_messages(messages: Sequence[bytes]) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


def copy_payload(t: VectorTable, records: Sequence[Record]) -> list[bytes] | None:
    """*records* (full images in :attr:`VectorTable.columns` order, vectors checked) as a
    binary COPY stream, in messages of about :data:`COPY_MESSAGE` bytes. The vectors are
    written as pgvector's binary form — dimensions, a zero, then the float32 values
    big-endian — byte-swapped as one block, so the bits are the ones read."""
    encoders = field_encoders(t)
    if encoders is None or not records:
        return None
    id_field, *rest = encoders
    width = 4 * t.dim
    vector_head = _I32(4 + width) + struct.pack(">hh", t.dim, 0)
    block = np.stack([r[1] for r in records]).astype(np.float32, copy=False)
    block.byteswap(inplace=True)  # np.stack made a copy of its own: big-endian in place
    vectors = block.data.cast("B")
    # column by column, then interleaved row by row, a message's worth of rows at a time
    columns: list[Sequence[bytes] | Sequence[memoryview]] = [
        [id_field(r[0]) for r in records],
        [vectors[at:at + width] for at in range(0, width * len(records), width)]]
    for i, encode in enumerate(rest, start=2):
        columns.append([_NULL if r[i] is None else encode(r[i]) for r in records])
    head = struct.pack(">h", len(t.columns))
    step = max(1, COPY_MESSAGE // (width + 64))
    messages = []
    for at in range(0, len(records), step):
        ids, vecs, *others = (c[at:at + step] for c in columns)
        rows = zip(itertools.repeat(head), ids, itertools.repeat(vector_head), vecs, *others)
        messages.append(b"".join(itertools.chain.from_iterable(rows)))
    messages[0] = COPY_HEADER + messages[0]
    messages.append(COPY_TRAILER)
    return messages


# --- rows of a chunk -------------------------------------------------------------------------

def snapshot_records(t: VectorTable, rows: Sequence[tuple[Any, ...]], start: int | None,
             ) -> tuple[list[Record], list[Record], list[tuple[str, int]], list[Reject]]:
    """Full images of snapshot rows, the rows they came from, the ids to skip in catch-up
    (changed after *start*), and the rows that cannot be written."""
    records: list[tuple[Any, ...]] = []
    raws: list[tuple[Any, ...]] = []
    seen: list[tuple[str, int]] = []
    rejects: list[Reject] = []
    if start is not None:
        seen = [(row[0], row[4]) for row in rows if row[4] > start]
    fits = vectors_fit(t, [row[1] for row in rows])
    # ids and documents that the text converters would return unchanged are taken as they are
    plain_ids = t.id_type == "text" and plain_texts([row[0] for row in rows])
    plain_docs = plain_texts([row[2] for row in rows])
    if plain_ids and plain_docs and fits.all() and not any(row[5] for row in rows):
        whole = plain_records(t, rows)
        if whole is not None:
            return whole, [row[:4] for row in rows], seen, rejects
    for k, (item_id, vector, document, metadata, _seq, error) in enumerate(rows):
        try:
            if error:
                raise RowError(error)
            if not fits[k]:
                t.check_vector(vector)  # raises, naming what is wrong
            records.append(full_image(t, item_id, vector, document, metadata, plain_ids, plain_docs))
            raws.append((item_id, vector, document, metadata))
        except RowError as exc:
            rejects.append(Reject(t.collection, [item_id], raw_image(item_id, vector, document, metadata),
                                  exc.message))
    return records, raws, seen, rejects

def plain_records(t: VectorTable, rows: Sequence[tuple[Any, ...]]) -> list[Record] | None:
    """Full images of rows whose ids, documents and vectors need no conversion, column by
    column, for a table of the default layout; None when a row needs more (a metadata
    value that does not fit): the caller then converts row by row."""
    if t.columns != [t.id_col, t.embedding_col, "document", "metadata"] or t.document_not_null:
        return None
    try:
        metadata = [rest_json(t, row[3]) for row in rows]
    except RowError:
        return None
    return [(row[0], row[1], row[2], m) for row, m in zip(rows, metadata, strict=True)]


# --- copying ---------------------------------------------------------------------------------

async def copy_binary(conn: asyncpg.Connection, t: VectorTable, payload: list[bytes] | None) -> bool:
    """COPY a prepared binary payload under a savepoint; False if there is none or PostgreSQL
    refused a row of it (the caller then copies record by record, isolating the bad ones)."""
    if payload is None:
        return False
    try:
        async with transaction(conn):
            await conn.copy_to_table(t.rel[1], source=copy_messages(payload), columns=t.columns,
                                     schema_name=t.rel[0], format="binary")
    except Exception as exc:
        err = translate(exc, f"copying into {t.qualified}")
        if not isinstance(err, RowError):
            raise err from exc
        return False
    return True


async def copy_isolating(conn: asyncpg.Connection, t: VectorTable, records: list[Record],
                         raws: list[Record], rejects: list[Reject]) -> None:
    if not records:
        return
    try:
        async with transaction(conn):
            await conn.copy_records_to_table(t.rel[1], records=records, columns=t.columns,
                                             schema_name=t.rel[0])
    except Exception as exc:
        err = translate(exc, f"copying into {t.qualified}")
        if not isinstance(err, RowError):
            raise err from exc
        if len(records) == 1:
            # one line: PostgreSQL's DETAIL repeats the whole row, vector included
            rejects.append(Reject(t.collection, [raws[0][0]], raw_image(*raws[0]),
                                  err.message.partition("\n")[0]))
            return
        mid = len(records) // 2
        await copy_isolating(conn, t, records[:mid], raws[:mid], rejects)
        await copy_isolating(conn, t, records[mid:], raws[mid:], rejects)
