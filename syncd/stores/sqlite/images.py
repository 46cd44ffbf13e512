"""Changes from ``_syncd_changelog`` rows: the logged images decoded, and a REAL zero given the
sign the trigger could not log (see :func:`zero_signs`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from syncd.model import Change, Key, Op, Position
from syncd.ports.tables import ROWID_COLUMN, Table, affinity
from syncd.sql import qi
from syncd.stores.sqlite import values

_OPS = {"I": Op.INSERT, "U": Op.UPDATE, "D": Op.DELETE}


def decode(conn: sqlite3.Connection, tables: Mapping[str, Table],
           rows: Sequence[tuple[Any, ...]]) -> list[Change]:
    """Changes from changelog rows ``(id, tbl, op, pk, row, ts)``; call it in the read
    transaction that read them when :func:`reads_rows` (for :func:`zero_signs`)."""
    changes: list[Change] = []
    signed: dict[str, tuple[str, ...]] = {}
    for cid, tbl, op, pk, row, ts in rows:
        table = tables.get(tbl)
        if table is None:
            continue  # a table no longer synced: its changes are passed over
        key = values.decode_key(pk)
        image = values.decode_row(row) if row is not None else None
        if image is not None:
            keep = signed.get(tbl)
            if keep is None:
                keep = signed[tbl] = signed_zero_columns(table)
            if keep:
                zero_signs(conn, table, key, image, keep)
            if table.synthetic_key:
                image[ROWID_COLUMN] = key[0]
        changes.append(Change(op=_OPS[op], object=tbl, key=key, row=image,
                              position=Position(cid), committed_at=ts))
    return changes


def reads_rows(tables: Mapping[str, Table]) -> bool:
    """Whether :func:`decode` reads rows of these tables (a column that can keep a ``-0.0``)."""
    return any(signed_zero_columns(t) for t in tables.values())


def signed_zero_columns(table: Table) -> tuple[str, ...]:
    """The columns that can keep a ``-0.0`` (see :func:`zero_signs`)."""
    return tuple(c.name for c in table.columns
                 if affinity(c.declared) == "BLOB" or c.declared.strip().upper() == "ANY")


def zero_signs(conn: sqlite3.Connection, table: Table, key: Key, image: dict[str, Any],
               columns: Sequence[str] | None = None) -> None:
    """Give a REAL zero of the image the sign the row's value has now.

    The trigger prints a REAL with ``printf('%!.20e')``, which drops the sign of ``-0.0``,
    and SQLite's SQL has no other way to see it (``CAST``, ``quote``, ``json_quote`` print
    ``0.0`` too; ``1/x`` is NULL; math functions may be missing from the app's build). Only
    a column of BLOB affinity (no declared type, or BLOB) or a STRICT table's ``ANY`` column
    keeps a ``-0.0``: REAL affinity stores it as the integer 0, NUMERIC and INTEGER make it
    0, TEXT ``'0.0'``. So such a zero is read from the row itself, in the transaction that
    read the change: if the row still holds a REAL zero there, that one is what the key's
    last logged image says (its later changes, if any, are logged at or below the head read
    with this one and come after it), so the end state is exact; an earlier image may carry
    the later sign for a moment.
    """
    if columns is None:
        columns = signed_zero_columns(table)
    zeros = [c for c in columns if type(image.get(c)) is float and image[c] == 0.0]
    if not zeros:
        return
    marks = [values.param(v) for v in key]
    names = ["rowid"] if table.synthetic_key else [qi(k) for k in table.pk]
    where = " AND ".join(f"{n} IS {m}" for n, (m, _) in zip(names, marks, strict=True))
    found = values.fetch_all(conn, f"SELECT {', '.join(qi(c) for c in zeros)} FROM {qi(table.name)} "
                              f"WHERE {where}", [p for _, p in marks])
    now = found[0] if found else None
    for name, value in zip(zeros, now or (), strict=False):
        if type(value) is float and value == 0.0:
            image[name] = value
