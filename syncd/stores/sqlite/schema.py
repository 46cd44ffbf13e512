"""What a SQLite database holds: tables, columns, keys, indexes, foreign keys."""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from syncd.errors import SchemaError
from syncd.ports.tables import ROWID_COLUMN, Column, ForeignKey, Index, Table
from syncd.sql import qi

INTERNAL_PREFIXES = ("sqlite_", "_syncd_")
CHANGELOG = "_syncd_changelog"
"""syncd's change log in the SQLite database (:mod:`syncd.stores.sqlite.capture`)."""


def changelog_head(conn: sqlite3.Connection) -> int | None:
    """The last id the changelog gave out (0 before the first change), None without a
    changelog. A changelog made by an older syncd is ``AUTOINCREMENT`` (``sqlite_sequence`` keeps the
    last id even once every row is pruned); a newer one is not (keeping ``sqlite_sequence``
    costs each captured write ~5 µs): the prune keeps its newest row, so ``max(id)`` never goes
    down and no id is given out twice."""
    have = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN (?, 'sqlite_sequence')",
        (CHANGELOG,))}
    if CHANGELOG not in have:
        return None
    head = int(conn.execute(f"SELECT coalesce(max(id), 0) FROM {CHANGELOG}").fetchone()[0])
    if "sqlite_sequence" in have:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGELOG,)).fetchone()
        head = max(head, int(row[0]) if row else 0)
    return head


def uri(path: str | Path, mode: str) -> str:
    """A ``file:`` URI that opens exactly *path* (``#``, ``?``, ``%`` and spaces escaped), in *mode*
    (``ro``, ``rw``)."""
    return f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode={mode}"


def list_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows if not r[0].startswith(INTERNAL_PREFIXES)]


def _is_virtual(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT sql FROM sqlite_schema WHERE type='table' AND name=?", (name,)).fetchone()
    return bool(row and row[0] and row[0].lstrip().upper().startswith("CREATE VIRTUAL"))


def describe(conn: sqlite3.Connection, name: str, *, no_primary_key: str) -> Table:
    """Read one table's structure; refuse what cannot be captured, with the reason."""
    if _is_virtual(conn, name):
        raise SchemaError(f"table {name!r} is a virtual table (FTS/R-tree): triggers cannot capture it; "
                          "add it to source.sqlite.exclude")
    cols = conn.execute(f"PRAGMA table_xinfo({qi(name)})").fetchall()
    if not cols:
        raise SchemaError(f"table {name!r} does not exist in the SQLite database")
    columns = tuple(
        Column(name=c[1], declared=c[2] or "", notnull=bool(c[3]), pk_index=c[5])
        for c in cols if c[6] == 0  # hidden == 0: skip generated columns' hidden kinds
    )
    generated = [c[1] for c in cols if c[6] in (2, 3)]
    if generated:
        raise SchemaError(f"table {name!r} has generated columns {generated}: not supported yet; "
                          "add the table to source.sqlite.exclude")
    pk_cols = tuple(c.name for c in sorted((c for c in columns if c.pk_index), key=lambda c: c.pk_index))
    without_rowid = bool(conn.execute(
        "SELECT 1 FROM pragma_table_list WHERE name = ? AND wr = 1", (name,)
    ).fetchone()) if _has_table_list(conn) else False
    integer_pk = (len(pk_cols) == 1 and not without_rowid
                  and next(c for c in columns if c.name == pk_cols[0]).declared.upper() == "INTEGER")
    if not pk_cols:
        if no_primary_key == "refuse":
            raise SchemaError(f"table {name!r} has no primary key; give it one, exclude it, or set "
                              "source.sqlite.no_primary_key = \"rowid\" to key it by rowid")
        pk: tuple[str, ...] = (ROWID_COLUMN,)
        rowid_key = True
    else:
        pk = pk_cols
        rowid_key = integer_pk

    indexes: list[Index] = []
    skipped: list[str] = []
    pk_collations: tuple[str, ...] = ()
    for _seq, iname, unique, origin, partial in conn.execute(f"PRAGMA index_list({qi(name)})"):
        info = conn.execute(f"PRAGMA index_xinfo({qi(iname)})").fetchall()
        keycols = [r for r in info if r[5] == 1]
        if origin == "pk":
            by_col = {r[2]: str(r[4]).upper() for r in keycols}
            pk_collations = tuple(by_col.get(c, "BINARY") for c in pk_cols)
            continue
        if partial or any(r[1] < 0 for r in keycols):
            skipped.append(iname)
            continue
        idx_cols = tuple(r[2] for r in keycols)
        indexes.append(Index(name=iname if origin == "c" else f"{name}_{'_'.join(idx_cols)}_key",
                             columns=idx_cols, unique=bool(unique),
                             collations=tuple(str(r[4]).upper() for r in keycols)))
    fks: dict[int, list[tuple[str, str, str, str, str]]] = {}
    for row in conn.execute(f"PRAGMA foreign_key_list({qi(name)})"):
        fk_id, _seq, ref_table, from_col, to_col, on_update, on_delete = row[:7]
        fks.setdefault(fk_id, []).append((from_col, ref_table, to_col, on_update, on_delete))
    foreign_keys = []
    for parts in fks.values():
        ref_table = parts[0][1]
        ref_cols = tuple(p[2] for p in parts)
        if any(c is None for c in ref_cols):  # REFERENCES parent (no columns): the parent's PK
            ref_cols = tuple(r[1] for r in sorted(
                (r for r in conn.execute(f"PRAGMA table_info({qi(ref_table)})") if r[5]),
                key=lambda r: r[5]))
        foreign_keys.append(ForeignKey(columns=tuple(p[0] for p in parts), ref_table=ref_table,
                                       ref_columns=ref_cols, on_update=parts[0][3],
                                       on_delete=parts[0][4]))
    return Table(name=name, columns=columns, pk=pk, rowid_key=rowid_key, without_rowid=without_rowid,
                 indexes=tuple(indexes), foreign_keys=tuple(foreign_keys),
                 skipped_indexes=tuple(skipped), pk_collations=pk_collations)


def _has_table_list(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1 FROM pragma_table_list LIMIT 1").fetchall()
        return True
    except sqlite3.OperationalError:
        return False


def discover(conn: sqlite3.Connection, *, tables: tuple[str, ...] | None, exclude: tuple[str, ...],
             no_primary_key: str) -> list[Table]:
    """The tables to sync, described; names given in config must exist."""
    present = list_tables(conn)
    if tables is not None:
        missing = [t for t in tables if t not in present]
        if missing:
            raise SchemaError(f"source.sqlite.tables names {missing}, not in the database "
                              f"(it has {present})")
        chosen = list(tables)
    else:
        chosen = [t for t in present if t not in exclude]
    return [describe(conn, t, no_primary_key=no_primary_key) for t in chosen]
