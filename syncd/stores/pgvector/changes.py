"""Chroma changes as statements on a collection's pgvector table: each change as the statement
that applies it (or the reject it becomes), and the changes of one id in a batch coalesced: runs
of consecutive changes replaced by one change with the same effect under Chroma's semantics (ADD
of an existing id and UPDATE of a missing id do nothing; UPSERT patches or creates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from syncd.errors import RowError
from syncd.model import Change, Op
from syncd.pg.state import Reject
from syncd.ports.collections import Item, raw_image
from syncd.stores.pgvector.copy import Record
from syncd.stores.pgvector.plan import VectorTable

Prepared = tuple[str, Record, Change]
"""The statement kind (a key of :attr:`PgvectorSink._sql`), its arguments, and the change."""

KIND_ORDER = {"delete": 0, "replace": 1, "add": 2, "update": 3, "upsert": 4}


def _kind(ch: Change) -> str | None:
    """The Chroma operation of a change; None for one that is not merged (it carries an error)."""
    if ch.op is Op.DELETE or ch.row is None:
        return "delete"
    if ch.row.get("error") or ch.row.get("op") not in ("add", "update", "upsert", "replace"):
        return None
    return str(ch.row["op"])


def _image(op: str, embedding: Any, document: Any, has_document: bool,
           metadata: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, "embedding": embedding, "document": document, "has_document": has_document,
            "metadata": metadata, "error": None}


def _patched(base: Mapping[str, Any], patch: Mapping[str, Any], op: str) -> dict[str, Any]:
    """*base* followed by the UPDATE / UPSERT *patch*: vector and document if given, metadata keys
    set (a null removes the key). A whole image (``replace``) drops removed keys; a patch keeps
    the nulls, which remove the keys from the row it is applied to."""
    metadata = dict(base.get("metadata") or {})
    for key, value in (patch.get("metadata") or {}).items():
        if value is None and op == "replace":
            metadata.pop(key, None)
        else:
            metadata[key] = value
    has_document = bool(patch["has_document"])
    return _image(op, patch["embedding"] if patch["embedding"] is not None else base["embedding"],
                  patch["document"] if has_document else base["document"],
                  has_document or bool(base["has_document"]), metadata)


def _whole(row: Mapping[str, Any]) -> dict[str, Any]:
    """The item an ADD / UPSERT creates where the id is missing."""
    metadata = {k: v for k, v in (row.get("metadata") or {}).items() if v is not None}
    document = row["document"] if row["has_document"] else None
    return _image("replace", row["embedding"], document, True, metadata)


def merge(first: Change, then: Change) -> Change | None:
    """One change with the effect of *first* followed by *then* (same id), whether or not the
    id exists before them; None when there is none. Chroma's rules: ADD of an existing id and
    UPDATE of a missing id do nothing; UPSERT patches an existing id or creates it."""
    a, b = _kind(first), _kind(then)
    if a is None or b is None:
        return None
    if b in ("delete", "replace"):
        return then
    row_a, row_b = first.row or {}, then.row or {}
    image: Mapping[str, Any] | None = None
    if a == "delete":  # the id is missing now
        if b == "update":
            return first
        image = _whole(row_b)
    elif a == "replace":  # the id exists with a known image
        image = row_a if b == "add" else _patched(row_a, row_b, "replace")
    elif a in ("add", "upsert") and b == "add":
        return first  # the id exists after either: the ADD does nothing
    elif (a, b) in (("update", "update"), ("upsert", "update"), ("upsert", "upsert")):
        image = _patched(row_a, row_b, a)
    if image is None:
        return None  # ADD then UPDATE / UPSERT, UPDATE then ADD / UPSERT: the result depends on the row
    return Change(Op.UPDATE, then.object, then.key, dict(image), then.position, then.committed_at)


def coalesce_changes(changes: Sequence[Change]) -> list[tuple[Change, list[Change]]]:
    """Per id, runs of consecutive changes replaced by one change with the same effect
    (:func:`merge`); each with the changes it stands for. The result keeps the order of
    each id's changes (not the order across ids)."""
    by_id: dict[str, list[tuple[Change, list[Change]]]] = {}
    for ch in changes:
        runs = by_id.setdefault(str(ch.key[0]), [])
        if runs:
            merged = merge(runs[-1][0], ch)
            if merged is not None:
                runs[-1] = (merged, [*runs[-1][1], ch])
                continue
        runs.append((ch, [ch]))
    return [run for runs in by_id.values() for run in runs]


# --- one change -------------------------------------------------------------------------------

def prepare_change(t: VectorTable, ch: Change) -> Prepared:
    """A change as the statement that applies it and its arguments."""
    item_id = str(ch.key[0])
    if ch.op is Op.DELETE or ch.row is None:
        return "delete", (t.convert_id(item_id),), ch
    row = ch.row
    if row.get("error"):
        raise RowError(str(row["error"]))
    op = row["op"]
    meta = row.get("metadata") or {}
    if op == "add":
        return "add", t.record(item_id, row["embedding"], row["document"], meta), ch
    if op == "replace":  # a whole image (coalesced changes that follow a DELETE)
        return "replace", t.record(item_id, row["embedding"], row["document"], meta), ch
    if op == "upsert" and row["embedding"] is None:
        raise RowError("an upsert without an embedding")
    if op in ("update", "upsert"):
        args = t.patch(item_id, row["embedding"], bool(row["has_document"]), row["document"], meta)
        return op, args, ch
    raise RowError(f"unknown operation {op!r}")


def refresh_image(t: VectorTable, ch: Change, item: Item | None) -> Prepared:
    """The current image of an id with an open reject, as a full write (or a delete)."""
    if item is None:
        return "delete", (t.convert_id(str(ch.key[0])),), ch
    if item.error:
        raise RowError(item.error)
    return "replace", t.record(item.id, item.vector, item.document, item.metadata), ch


def change_reject(t: VectorTable, ch: Change, error: str) -> Reject:
    row = ch.row or {}
    image = raw_image(str(ch.key[0]), row.get("embedding"), row.get("document"), row.get("metadata"),
                      row.get("op", "delete"))
    return Reject(t.collection, [str(ch.key[0])], image, error, ch.position)


def convertible(t: VectorTable, item_id: str) -> bool:
    """Whether *item_id* converts to the table's id type (else no row can hold it)."""
    try:
        t.convert_id(item_id)
    except RowError:
        return False
    return True
