"""The queries that read a table in key order, a chunk at a time: the export's, and the snapshot's
of tables keyed by the rowid and WITHOUT ROWID tables (a rowid table with a declared key is
copied in rowid order: :mod:`~syncd.stores.sqlite.rowid_pages`).

A table is read in the order of its key (the rowid, or the declared primary key), each chunk
after the last key of the one before, so that a resume reads on from a recorded key. A declared
primary key of a rowid table may hold NULLs in SQLite (:attr:`Table.nullable_key`): no key orders
those rows, and ``key > NULL`` is never true, so the keyed reads skip them and they come last, in
one read of their own (PostgreSQL rejects each; an app has few).
"""

from __future__ import annotations

from typing import Any

from syncd.model import Key
from syncd.ports.tables import Table
from syncd.sql import qi
from syncd.stores.sqlite import values


def keyed_select(table: Table, after: Key | None, *, limit: bool) -> tuple[str, list[Any]]:
    """The rows after *after* in key order (NULL keys left out); ``LIMIT ?`` last when *limit*."""
    cols = ", ".join(qi(c) for c in table.column_names)
    if table.synthetic_key:
        cols = "rowid, " + cols
    marks, params = zip(*(values.param(v) for v in after or ()), strict=True) if after else ((), ())
    if table.rowid_key:
        order = "rowid"
        where = "" if after is None else "WHERE rowid > ?"
    else:
        order = ", ".join(qi(k) for k in table.pk)
        conds = [f"{qi(k)} IS NOT NULL" for k in table.pk] if table.nullable_key else []
        if after is not None:
            conds.append(f"({order}) > ({', '.join(marks)})")
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
    sql = f"SELECT {cols} FROM {qi(table.name)} {where} ORDER BY {order}"
    return (sql + " LIMIT ?" if limit else sql), list(params)


def null_key_select(table: Table) -> str:
    """The rows whose key holds a NULL, in rowid order."""
    cols = ", ".join(qi(c) for c in table.column_names)
    nulls = " OR ".join(f"{qi(k)} IS NULL" for k in table.pk)
    return f"SELECT {cols} FROM {qi(table.name)} WHERE {nulls} ORDER BY rowid"


def holds_null(key: Key | list[Any] | None) -> bool:
    """A last key read from the NULL-key rows (a resume there reads them all again)."""
    return key is not None and any(v is None for v in key)
