"""Rowids renumbered under syncd: noticed, so that the table is copied again.

A table without a primary key is keyed by its rowid (``_syncd_rowid`` in PostgreSQL), and
SQLite renumbers such rowids without firing a trigger: ``VACUUM`` compacts those of a table
without an index (SQLite 3.40; other versions may do more), a ``.dump`` reloaded into a new
file numbers every such table from 1, a ``VACUUM INTO`` copy swapped in may do either.

Each such table has a *reference* in ``_syncd_rowids``: at changelog id ``at``, in the file
whose inode was ``file``, it held ``n`` rows whose rowids add up to ``lo + hi·2³¹`` (two sums,
so that neither overflows). The changes logged after ``at`` say how that must have moved —
an insert adds its rowid, a delete removes one, an update keeps the set (the triggers of these
tables log a rowid change as a delete and an insert). So in one read transaction, reference +
logged changes == what the table holds, unless rowids changed with no trigger: a renumbering
keeps the count and lowers the sum (rows keep their order), a reloaded file has another inode.

The check scans each such table once (a count and two sums over its rowids), so it runs when
a renumbering is possible, not on every read: at start, when ``PRAGMA schema_version`` moved
(``VACUUM`` raises it), and when the file's inode changed. Pruning the changelog moves the
references forward in the same write, so the changes after ``at`` are always still there.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from syncd.ports.tables import Table
from syncd.sql import qi
from syncd.stores.sqlite.schema import CHANGELOG

ROWIDS = "_syncd_rowids"
SETUP = f"""CREATE TABLE IF NOT EXISTS {ROWIDS} (
    tbl  TEXT PRIMARY KEY,
    at   INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    lo   INTEGER NOT NULL,
    hi   INTEGER NOT NULL,
    file INTEGER NOT NULL
)"""
_LOW = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Tally:
    """A multiset of rowids, summed: how many, and their sum as ``lo + hi * 2**31``."""

    n: int = 0
    lo: int = 0
    hi: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.n + other.n, self.lo + other.lo, self.hi + other.hi)


def file_id(conn: sqlite3.Connection) -> int:
    """The inode of the main database file of *conn* (0 for an in-memory database)."""
    path = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    return os.stat(path).st_ino if path else 0


def tally(conn: sqlite3.Connection, table: str) -> Tally:
    """What *table* holds now (a scan of its rowids)."""
    n, lo, hi = conn.execute(f"SELECT count(*), coalesce(sum(rowid & {_LOW}), 0), "
                             f"coalesce(sum(rowid >> 31), 0) FROM {qi(table)}").fetchone()
    return Tally(int(n), int(lo), int(hi))


def _exists(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                        (ROWIDS,)).fetchone() is not None


def _logged(conn: sqlite3.Connection, upto: int | None) -> dict[str, Tally]:
    """Per referenced table, what its logged changes after its ``at`` (up to *upto*) did."""
    k = "json_extract(c.pk, '$[0]')"
    sign = "CASE c.op WHEN 'I' THEN 1 WHEN 'D' THEN -1 ELSE 0 END"
    bound = "" if upto is None else "AND c.id <= ?"
    rows = conn.execute(
        f"SELECT r.tbl, sum({sign}), sum({sign} * ({k} & {_LOW})), sum({sign} * ({k} >> 31)) "
        f"FROM {ROWIDS} r JOIN {CHANGELOG} c ON c.tbl = r.tbl AND c.id > r.at {bound} GROUP BY r.tbl",
        () if upto is None else (upto,)).fetchall()
    return {str(t): Tally(int(n), int(lo), int(hi)) for t, n, lo, hi in rows}


def anchor(conn: sqlite3.Connection, table: str, at: int, file: int) -> None:
    """Take *table*'s reference at changelog id *at*. The caller holds the write lock."""
    conn.execute(SETUP)
    t = tally(conn, table)
    conn.execute(f"INSERT OR REPLACE INTO {ROWIDS} (tbl, at, n, lo, hi, file) VALUES (?, ?, ?, ?, ?, ?)",
                 (table, at, t.n, t.lo, t.hi, file))


def advance(conn: sqlite3.Connection, upto: int) -> None:
    """Fold the changes up to *upto* into the references, before they are pruned. The caller
    holds the write lock."""
    if not _exists(conn):
        return
    for table, d in _logged(conn, upto).items():
        conn.execute(f"UPDATE {ROWIDS} SET n = n + ?, lo = lo + ?, hi = hi + ? WHERE tbl = ?",
                     (d.n, d.lo, d.hi, table))
    conn.execute(f"UPDATE {ROWIDS} SET at = ? WHERE at < ?", (upto, upto))


def renumbered(conn: sqlite3.Connection, tables: Iterable[Table]) -> dict[str, str]:
    """The tables keyed by rowid whose rowids are not those the changelog accounts for, each
    with the likely reason. One read transaction; *conn* must not be in one."""
    names = [t.name for t in tables if t.synthetic_key]
    if not names:
        return {}
    file = file_id(conn)
    out: dict[str, str] = {}
    conn.execute("BEGIN")
    try:
        refs: dict[str, tuple[Tally, int]] = {}
        logged: dict[str, Tally] = {}
        if _exists(conn):
            refs = {str(r[0]): (Tally(int(r[1]), int(r[2]), int(r[3])), int(r[4])) for r in conn.execute(
                f"SELECT tbl, n, lo, hi, file FROM {ROWIDS}")}
            logged = _logged(conn, None)
        for name in names:
            if name not in refs:
                out[name] = "syncd has no record of its rowids yet"
                continue
            ref, ref_file = refs[name]
            if ref_file != file:
                out[name] = f"the database file was replaced (inode {ref_file} -> {file})"
                continue
            expected, actual = ref + logged.get(name, Tally()), tally(conn, name)
            if actual == expected:
                continue
            if actual.n == expected.n:
                out[name] = "its rowids were renumbered with no trigger firing (VACUUM?)"
            else:
                moved = "went" if actual.n < expected.n else "came"
                out[name] = (f"{abs(expected.n - actual.n)} row(s) {moved} without a logged change "
                             "(INSERT OR REPLACE over a UNIQUE index, or a write while capture was off); "
                             "rowids may also have been renumbered")
    finally:
        conn.execute("COMMIT")
    return out
