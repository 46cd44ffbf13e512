"""Change capture in SQLite: triggers write full row images into ``_syncd_changelog``.

The triggers run inside the app's own transaction, so a change is logged if and
only if it commits. Row images are JSON objects; values JSON cannot carry
exactly are tagged: a REAL is ``["r", printf('%!.20e', x)]`` (21 significant digits,
exact round trip; ``json_object`` and ``quote`` may keep 15) and a BLOB is ``["b", hex(x)]``.
Tables wider than 60 columns are imaged in parts merged with ``json_patch``,
which leaves out keys whose value is NULL: in an image, an absent column is NULL.

Rows that INSERT OR REPLACE (or UPDATE OR REPLACE) removes because they conflict on a UNIQUE
index, or on a primary key under a NOCASE / RTRIM collation, fire no DELETE trigger (unless the
app enabled ``recursive_triggers``). Which rows those are is SQLite's decision, under its own
comparison (a text ``'k'`` and a blob ``X'6B'`` are different values there, equal in
PostgreSQL), so SQLite makes it: a BEFORE trigger notes the rows holding the new row's unique
values under another key in ``_syncd_replaced``, and the AFTER trigger logs each as a delete
before the insert or update — only if the write happened (an OR IGNORE, a DO NOTHING or a failed
statement logs nothing; what a skipped write noted is dropped by the next write of the same
values, and by the prune).

Origin tagging: syncd's own writes (reverse sync) set ``_syncd_origin.suppress``
to 1 inside their transaction; the triggers skip while it is 1. SQLite has one
writer at a time, so no app write can run while the flag is set, and a crash
rolls the flag back with the transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from syncd.errors import CaptureError
from syncd.ports.tables import Captured, Table
from syncd.sql import qi, ql
from syncd.stores.sqlite import rowids
from syncd.stores.sqlite.schema import CHANGELOG as CHANGELOG  # re-exported
from syncd.stores.sqlite.schema import changelog_head

ORIGIN = "_syncd_origin"
META = "_syncd_meta"
CAPTURED = "_syncd_captured"
"""Per table, when its current triggers were installed: ``since``, the changelog's head then
(changes of the table at or below it may predate the triggers: a column added, a table
rebuilt), and ``epoch``, a counter that every install which changes triggers raises. The sink
copies a table again unless its copy was read after that epoch (``syncd.objects``)."""
REPLACED = "_syncd_replaced"
"""Rows the app's current INSERT / UPDATE is about to replace (table, the write's unique values,
the row's key), noted by a BEFORE trigger for the AFTER trigger to log as deletes."""
TRIGGER_PREFIX = "_syncd_"
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_MAX_PAIRS = 60  # json_object takes at most 127 arguments in older SQLite builds

_CHANGELOG_COLUMNS = """(
    id  INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    op  TEXT NOT NULL,
    pk  TEXT NOT NULL,
    row TEXT,
    ts  REAL NOT NULL
)"""
MIGRATE_ROWS = 100_000
"""An ``AUTOINCREMENT`` changelog of at most this many rows is made a plain one by an install
(:func:`_plain_changelog`); a longer one waits for a later install (the copy holds the write
lock)."""

SETUP = f"""
CREATE TABLE IF NOT EXISTS {CHANGELOG} {_CHANGELOG_COLUMNS};
CREATE TABLE IF NOT EXISTS {ORIGIN} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    suppress INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO {ORIGIN} (id, suppress) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS {META} (
    tbl TEXT PRIMARY KEY,
    signature TEXT NOT NULL
);
INSERT OR IGNORE INTO {META} (tbl, signature) VALUES ('', lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS {REPLACED} (
    tbl  TEXT NOT NULL,
    mark TEXT NOT NULL,
    pk   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {CAPTURED} (
    tbl   TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
"""
GENERATION_KEY = ""
"""The ``_syncd_meta`` row whose signature names this changelog; new on every install."""


def _enc(expr: str) -> str:
    return (f"CASE typeof({expr}) WHEN 'real' THEN json_array('r', printf('%!.20e', {expr})) "
            f"WHEN 'blob' THEN json_array('b', hex({expr})) ELSE {expr} END")


def _key_expr(table: Table, ref: str) -> str:
    if table.synthetic_key:
        return f"json_array({ref}.rowid)"
    return "json_array(" + ", ".join(_enc(f"{ref}.{qi(c)}") for c in table.pk) + ")"


def _row_expr(table: Table, ref: str) -> str:
    pairs = [f"{ql(c)}, {_enc(f'{ref}.{qi(c)}')}" for c in table.column_names]
    objs = ["json_object(" + ", ".join(pairs[i:i + _MAX_PAIRS]) + ")"
            for i in range(0, len(pairs), _MAX_PAIRS)] or ["json_object()"]
    expr = objs[0]
    for o in objs[1:]:
        expr = f"json_patch({expr}, {o})"
    return expr


def _unique_sets(table: Table) -> list[tuple[tuple[str, str], ...]]:
    """Per UNIQUE constraint whose conflicts REPLACE resolves by deleting another row: its
    (column, collation) pairs. The primary key counts when a collation other than BINARY
    compares it ('Bob' and 'bob' are one key there, two in PostgreSQL); rowid keys never do."""
    sets = [tuple(zip(idx.columns, idx.collations or ("BINARY",) * len(idx.columns), strict=True))
            for idx in table.indexes if idx.unique]
    if not table.rowid_key and any(c != "BINARY" for c in table.pk_collations):
        sets.append(tuple(zip(table.pk, table.pk_collations, strict=True)))
    return sets


def _mark_expr(table: Table) -> str:
    """The write's unique values (the same in its BEFORE and AFTER triggers; an automatic
    rowid is not known before the insert, so it is left out)."""
    cols = sorted({c for s in _unique_sets(table) for c, _ in s}
                  | (set() if table.rowid_key else set(table.pk)))
    return "json_array(" + ", ".join(_enc(f"NEW.{qi(c)}") for c in cols) + ")"


def _identity(table: Table, ref: str) -> str:
    """The row of the table in the FROM clause is the row *ref* (NEW or OLD) names."""
    if table.rowid_key:
        return f"rowid IS {ref}.rowid"
    return " AND ".join(f"{qi(c)} IS {ref}.{qi(c)} COLLATE BINARY" for c in table.pk)


def _note_replaced(table: Table, event: str) -> list[str]:
    """The statements of the BEFORE trigger: note the rows the write is about to replace."""
    t, name, mark = qi(table.name), ql(table.name), _mark_expr(table)
    others = f"NOT ({_identity(table, 'NEW')})"
    if event == "UPDATE":
        others += f" AND NOT ({_identity(table, 'OLD')})"
    selects = [f"SELECT {_key_expr(table, t)} AS k FROM {t} WHERE "
               + " AND ".join(f"{qi(c)} = NEW.{qi(c)} COLLATE {qi(coll)}" for c, coll in cols)
               + f" AND {others}" for cols in _unique_sets(table)]
    return [f"DELETE FROM {REPLACED} WHERE tbl = {name} AND mark = {mark}",
            f"INSERT INTO {REPLACED} (tbl, mark, pk) SELECT {name}, {mark}, k FROM ("
            + " UNION ".join(selects) + ")"]


def _log_replaced(table: Table, log: str) -> str:
    """The AFTER trigger's first statements: the noted rows are gone, log their deletes."""
    name, mark = ql(table.name), _mark_expr(table)
    return (f"{log} SELECT {name}, 'D', pk, NULL, {_NOW} FROM {REPLACED} "
            f"WHERE tbl = {name} AND mark = {mark} ORDER BY rowid; "
            f"DELETE FROM {REPLACED} WHERE tbl = {name} AND mark = {mark}; ")


CAPTURE_VERSION = 2
"""Bumped when the trigger bodies change, so that `syncd init` rebuilds older ones. (A table
whose triggers' text differs from what :func:`trigger_ddl` makes now is rebuilt anyway, and
copied again: the REPLACE triggers reach only tables with a unique constraint that way.)"""


def signature(table: Table) -> str:
    return f"v{CAPTURE_VERSION}|{table.signature()}"


def trigger_names(table: Table) -> list[str]:
    kinds = ["ins", "upd", "del"] + (["rins", "rupd"] if _unique_sets(table) else [])
    return [f"{TRIGGER_PREFIX}{kind}_{table.name}" for kind in kinds]


def trigger_ddl(table: Table) -> list[str]:
    t, name = qi(table.name), ql(table.name)
    ins, upd, dele, *before = (qi(n) for n in trigger_names(table))
    when = f"WHEN (SELECT suppress FROM {ORIGIN}) = 0"
    log = f"INSERT INTO {CHANGELOG} (tbl, op, pk, row, ts)"
    if table.synthetic_key:
        key_changed = "OLD.rowid IS NOT NEW.rowid"
        # a new rowid is logged as an insert, so the changelog accounts for the set of rowids
        new_op = f"CASE WHEN {key_changed} THEN 'I' ELSE 'U' END"
    else:
        # BINARY: under a NOCASE key, 'Alice' -> 'alice' is a new key in PostgreSQL
        key_changed = " OR ".join(f"OLD.{qi(c)} IS NOT NEW.{qi(c)} COLLATE BINARY" for c in table.pk)
        new_op = "'U'"
    replaced = _log_replaced(table, log) if before else ""
    ddl = [
        f"CREATE TRIGGER {ins} AFTER INSERT ON {t} {when} BEGIN {replaced}"
        f"{log} VALUES ({name}, 'I', {_key_expr(table, 'NEW')}, {_row_expr(table, 'NEW')}, {_NOW}); END",
        f"CREATE TRIGGER {upd} AFTER UPDATE ON {t} {when} BEGIN {replaced}"
        f"{log} SELECT {name}, 'D', {_key_expr(table, 'OLD')}, NULL, {_NOW} WHERE {key_changed}; "
        f"{log} VALUES ({name}, {new_op}, {_key_expr(table, 'NEW')}, {_row_expr(table, 'NEW')}, {_NOW}); END",
        f"CREATE TRIGGER {dele} AFTER DELETE ON {t} {when} BEGIN "
        f"{log} VALUES ({name}, 'D', {_key_expr(table, 'OLD')}, NULL, {_NOW}); END",
    ]
    for trig, event in zip(before, ("INSERT", "UPDATE")[:len(before)], strict=True):
        ddl.append(f"CREATE TRIGGER {trig} BEFORE {event} ON {t} {when} BEGIN "
                   + "; ".join(_note_replaced(table, event)) + "; END")
    return ddl


def install(conn: sqlite3.Connection, tables: Iterable[Table]) -> list[str]:
    """Create the changelog and (re)create triggers whose table changed; return tables touched."""
    return install_tables(conn, lambda: list(tables))[0]


def install_tables(conn: sqlite3.Connection, describe: Callable[[], list[Table]]
                   ) -> tuple[list[str], list[Table], int]:
    """:func:`install` for the tables *describe* returns, called under the write lock so that
    no schema change can slip in between; return the tables touched, the tables, and the
    schema version this leaves (read before the commit).

    Runs in one IMMEDIATE transaction: either all triggers exist afterwards or none changed.
    Each table whose triggers are (re)created is recorded in ``_syncd_captured`` with the
    changelog's head: the point from which its changes are complete. A table keyed by rowid
    also gets its rowid reference (:mod:`syncd.stores.sqlite.rowids`) at that head.
    """
    changed: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SETUP.split(";"):
            if statement.strip():
                conn.execute(statement)
        _plain_changelog(conn)
        tables = describe()
        head, epoch, file = _head(conn), _next_epoch(conn), rowids.file_id(conn)
        for table in tables:
            if not _stale(conn, table):
                continue
            for trig in trigger_names(table):
                conn.execute(f"DROP TRIGGER IF EXISTS {qi(trig)}")
            for ddl in trigger_ddl(table):
                conn.execute(ddl)
            conn.execute(f"INSERT OR REPLACE INTO {META} (tbl, signature) VALUES (?, ?)",
                         (table.name, signature(table)))
            conn.execute(f"INSERT OR REPLACE INTO {CAPTURED} (tbl, since, epoch) VALUES (?, ?, ?)",
                         (table.name, head, epoch))
            if table.synthetic_key:
                rowids.anchor(conn, table.name, head, file)
            changed.append(table.name)
        version = schema_version(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changed, tables, version


def _plain_changelog(conn: sqlite3.Connection) -> None:
    """Make a changelog an older syncd created ``AUTOINCREMENT`` a plain rowid table (every
    captured write then skips the rewrite of its ``sqlite_sequence`` row), in the caller's
    write transaction: its rows keep their ids, and when every row was pruned, a row with no
    table holds the last id given out (the head; readers pass over a table they do not sync),
    so ids go on from there. The triggers that write it are dropped and created again with the
    same text (their install records stand: nothing is copied again)."""
    row = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?",
                       (CHANGELOG,)).fetchone()
    if not row or "AUTOINCREMENT" not in str(row[0]).upper():
        return
    if int(conn.execute(f"SELECT count(*) FROM {CHANGELOG}").fetchone()[0]) > MIGRATE_ROWS:
        return
    head = _head(conn)
    triggers = conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' "
                            "AND instr(sql, ?) > 0", (CHANGELOG,)).fetchall()
    for name, _ in triggers:
        conn.execute(f"DROP TRIGGER {qi(name)}")
    # copied through a temporary table: ALTER TABLE RENAME would check (and could refuse) the
    # app's whole schema
    copy, columns = f"temp.{CHANGELOG}_copy", "id, tbl, op, pk, row, ts"
    conn.execute(f"DROP TABLE IF EXISTS {copy}")
    conn.execute(f"CREATE TABLE {copy} AS SELECT {columns} FROM {CHANGELOG}")
    conn.execute(f"DROP TABLE {CHANGELOG}")  # and its sqlite_sequence row
    conn.execute(f"CREATE TABLE {CHANGELOG} {_CHANGELOG_COLUMNS}")
    conn.execute(f"INSERT INTO {CHANGELOG} ({columns}) SELECT {columns} FROM {copy} ORDER BY id")
    conn.execute(f"DROP TABLE {copy}")
    if head and changelog_head(conn) != head:
        conn.execute(f"INSERT INTO {CHANGELOG} ({columns}) VALUES (?, '', 'D', '[]', NULL, {_NOW})",
                     (head,))
    for _, sql in triggers:
        conn.execute(sql)


def forget_notes(conn: sqlite3.Connection) -> None:
    """Drop what BEFORE triggers noted for writes that did not happen (an OR IGNORE, a DO
    NOTHING): a note lives within one statement of the app, so under the write lock the caller
    holds, none is pending."""
    if conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                    (REPLACED,)).fetchone():
        conn.execute(f"DELETE FROM {REPLACED}")


def _head(conn: sqlite3.Connection) -> int:
    return changelog_head(conn) or 0


def _next_epoch(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT coalesce(max(epoch), 0) + 1 FROM {CAPTURED}").fetchone()[0])


def copy_again(conn: sqlite3.Connection, names: Iterable[str], tables: Iterable[Table]) -> None:
    """Record *names* as captured anew (a new epoch in ``_syncd_captured``, their triggers
    untouched), so that the sink copies them again; re-take the rowid references of those keyed
    by rowid. One IMMEDIATE transaction."""
    by_name = {t.name: t for t in tables}
    conn.execute("BEGIN IMMEDIATE")
    try:
        head, epoch, file = _head(conn), _next_epoch(conn), rowids.file_id(conn)
        for name in names:
            conn.execute(f"INSERT OR REPLACE INTO {CAPTURED} (tbl, since, epoch) VALUES (?, ?, ?)",
                         (name, head, epoch))
            if by_name[name].synthetic_key:
                rowids.anchor(conn, name, head, file)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _stale(conn: sqlite3.Connection, table: Table) -> bool:
    """The table's capture triggers are missing, or are not the ones syncd would create now
    (other columns, another primary key, an older version, recreated from an old definition
    by a migration), or were built for other declared types."""
    row = conn.execute(f"SELECT signature FROM {META} WHERE tbl = ?", (table.name,)).fetchone()
    present = dict(conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?", (table.name,)))
    wanted = zip(trigger_names(table), trigger_ddl(table), strict=True)
    return not (row and row[0] == signature(table) and all(present.get(n) == sql for n, sql in wanted))


def stale(conn: sqlite3.Connection, tables: Iterable[Table]) -> list[str]:
    """The tables whose capture must be (re)installed; raise if there is no changelog at all."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if CHANGELOG not in have or META not in have:
        raise CaptureError("change capture is not installed in the SQLite database: run `syncd init`")
    return [t.name for t in tables if _stale(conn, t)]


def captured_since(conn: sqlite3.Connection) -> dict[str, Captured]:
    """``_syncd_captured``, by table."""
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                        (CAPTURED,)).fetchone():
        return {}
    return {str(t): Captured(int(n), int(e)) for t, n, e in conn.execute(
        f"SELECT tbl, since, epoch FROM {CAPTURED}")}


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def uninstall(conn: sqlite3.Connection) -> list[str]:
    """Drop every syncd trigger and table from the database; return the triggers dropped."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        triggers = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_syncd\\_%' ESCAPE '\\'")]
        for trig in triggers:
            conn.execute(f"DROP TRIGGER {qi(trig)}")
        for tbl in (CHANGELOG, ORIGIN, META, CAPTURED, REPLACED, rowids.ROWIDS):
            conn.execute(f"DROP TABLE IF EXISTS {tbl}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return triggers


def check_installed(conn: sqlite3.Connection, tables: Iterable[Table]) -> None:
    """Raise :class:`CaptureError` unless capture is installed and current for every table."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type IN ('table','trigger')")}
    if CHANGELOG not in have:
        raise CaptureError("change capture is not installed in the SQLite database: run `syncd init`")
    for table in tables:
        if not set(trigger_names(table)) <= have:
            raise CaptureError(f"capture triggers for table {table.name!r} are missing: run `syncd init`")
        if _stale(conn, table):
            raise CaptureError(
                f"table {table.name!r} changed since `syncd init` (columns now: "
                f"{', '.join(table.column_names)}); run `syncd init` again to update capture")


def generation(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(f"SELECT signature FROM {META} WHERE tbl = ?", (GENERATION_KEY,)).fetchone()
    return str(row[0]) if row else None
