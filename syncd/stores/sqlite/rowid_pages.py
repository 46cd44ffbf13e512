"""The snapshot of a rowid table with a declared key, read in rowid order and guarded.

Paging by the declared key (a TEXT UUID, say) walks its index and fetches each row from the
table by rowid, in random order; paging by rowid reads the table's own B-tree in order: 1.3 s
against 2.8–4.2 s for the 500,000 documents of the benchmark (docs/benchmarks.md). But a rowid
is not a key: a row can be read twice or not at all when it moves between reads, and the copy
reads in many transactions and resumes after a SIGKILL. A row moves

- by a logged write (``INSERT OR REPLACE`` of a key, a delete and an insert of the same key, an
  ``UPDATE`` of the rowid): the catch-up replays that change anyway, so the copy skips every
  row whose key was logged since this copy of the table began (``since``) — which also keeps
  such a row from being read twice (a second ``COPY`` of one key would be refused);
- with no trigger at all, when the rowids are renumbered (``VACUUM`` may renumber the rowids of
  any table without an INTEGER PRIMARY KEY; SQLite 3.40 does it only to tables with no index,
  other versions may do more; a ``.dump`` reloaded numbers every row again). Rows would then
  cross the cursor unseen.

So the cursor (:class:`~syncd.model.RowidCursor`) carries, besides the last rowid read, the
declared key of that row (the *anchor*), ``PRAGMA schema_version`` (which ``VACUUM`` raises)
and the table's capture epoch. Each read checks, in its own read transaction, that the row at
the last rowid still has the anchor's key — or that the anchor's key was logged (moved by the
app) and the schema version did not move. Otherwise the rowids were renumbered: the table is
recorded to be copied again (a new capture epoch, :func:`capture.copy_again`) and
:class:`SchemaChanged` makes the stream re-open its sink; this pass then ends at once (its
epoch is behind), and once the snapshot is done the sink empties the table and copies it
afresh (:mod:`syncd.stores.postgres.schema_change`). Renumbering keeps the rows' order (both
re-insert the rows in rowid order), so a row still at the anchor's rowid means the rows after
it are still after it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SchemaChanged
from syncd.model import Key, RowidCursor
from syncd.ports.tables import Table
from syncd.sql import qi
from syncd.stores.sqlite import capture, values
from syncd.stores.sqlite.schema import CHANGELOG


def by_rowid(table: Table) -> bool:
    """Whether the snapshot pages *table* by rowid rather than by its declared key: a rowid table
    whose key is declared and is not the rowid (tables keyed by the rowid page by it already)."""
    return not table.rowid_key and not table.without_rowid


@dataclass
class Logged:
    """The keys of one table logged after ``since`` (read up to changelog id ``upto``)."""

    since: int
    upto: int
    keys: set[Key] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[Any, ...]]
    """The rows to copy, in target-column order (the rows whose key was logged left out)."""
    cursor: RowidCursor
    anchor: Key
    """The declared key of the last row read (copied or not)."""
    full: bool
    """As many rows were read as asked for: there may be more."""


def _logged(conn: sqlite3.Connection, table: Table, since: int, logged: Logged | None) -> Logged:
    if logged is None or logged.since != since:
        logged = Logged(since, since)
    for cid, pk in values.fetch_all(conn, f"SELECT id, pk FROM {CHANGELOG} WHERE id > ? AND tbl = ? "
                                          "ORDER BY id", (logged.upto, table.name)):
        logged.keys.add(values.decode_key(pk))
        logged.upto = int(cid)
    return logged


def read(conn: sqlite3.Connection, table: Table, after: Key | None, rows: int, head: int,
         tables: list[Table], logged: Logged | None) -> tuple[Page | None, Logged | None]:
    """The next page after *after* (``(cursor, *anchor)``, or None to begin), in one read
    transaction; None when this pass is over. *head* reads the changelog head. Raises
    :class:`SchemaChanged` when the rowids were renumbered, once the table is recorded to be
    copied again."""
    cursor = after[0] if after else None
    assert cursor is None or isinstance(cursor, RowidCursor)
    anchor = tuple(after[1:]) if after else ()
    conn.execute("BEGIN")
    try:
        version = capture.schema_version(conn)
        current = capture.captured_since(conn).get(table.name)
        epoch = current.epoch if current else 0
        if cursor is None:
            cursor = RowidCursor(rowid=0, since=head, schema_version=version, epoch=epoch)
        elif epoch > cursor.epoch:
            return None, logged  # recorded to be copied again: this pass is over
        logged = _logged(conn, table, cursor.since, logged)
        renumbered = cursor.rowid > 0 and not _anchored(conn, table, cursor, anchor, version, logged)
        if not renumbered:
            cols = ", ".join(qi(c) for c in table.column_names)
            batch = values.fetch_all(
                conn, f"SELECT {cols}, rowid FROM {qi(table.name)} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (cursor.rowid, rows))
    finally:
        conn.execute("COMMIT")
    if renumbered:
        capture.copy_again(conn, [table.name], tables)
        raise SchemaChanged(
            f"SQLite table {table.name}: its rowids were renumbered while it was copied by rowid "
            "(VACUUM?); syncd copies it again")
    if not batch:
        return None, logged
    pk = [table.column_names.index(k) for k in table.pk]
    last = batch[-1]
    page_cursor = RowidCursor(int(last[-1]), cursor.since, version, cursor.epoch)
    anchor = tuple(last[i] for i in pk)
    if logged.keys:
        kept = [r[:-1] for r in batch if tuple(r[i] for i in pk) not in logged.keys
                or any(r[i] is None for i in pk)]
    else:
        kept = [r[:-1] for r in batch]
    return Page(kept, page_cursor, anchor, len(batch) == rows), logged


def _anchored(conn: sqlite3.Connection, table: Table, cursor: RowidCursor, anchor: Key, version: int,
              logged: Logged) -> bool:
    """The rows after the cursor are still the rows after it: the row at its rowid is the anchor,
    or the anchor was moved by a logged write and nothing renumbered rowids since (a VACUUM raises
    the schema version)."""
    cols = ", ".join(qi(k) for k in table.pk)
    row = values.fetch_all(conn, f"SELECT {cols} FROM {qi(table.name)} WHERE rowid = ?", (cursor.rowid,))
    if row and tuple(row[0]) == anchor:
        return True
    return anchor in logged.keys and version == cursor.schema_version
