"""The rowid references account for every logged change, and only a renumbering breaks them.

Real SQLite files: random inserts, deletes, updates and rowid changes through the capture
triggers, with the changelog pruned (references folded forward) at random points; the check
must find nothing. Then a ``VACUUM`` after deletes must be found, and nothing else.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from syncd.ports.tables import Table
from syncd.stores.sqlite import capture, rowids
from syncd.stores.sqlite.schema import CHANGELOG, describe


def setup(path: Path) -> tuple[sqlite3.Connection, list[Table]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE loose (a TEXT, b INTEGER)")
    conn.execute("CREATE TABLE keyed (id INTEGER PRIMARY KEY, a TEXT)")
    tables = [describe(conn, t, no_primary_key="rowid") for t in ("loose", "keyed")]
    capture.install(conn, tables)
    return conn, tables


def prune(conn: sqlite3.Connection, upto: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    rowids.advance(conn, upto)
    # as the source prunes: the newest row stays, so no id is given out twice
    conn.execute(f"DELETE FROM {CHANGELOG} WHERE id <= ? AND id < (SELECT max(id) FROM {CHANGELOG})",
                 (upto,))
    conn.execute("COMMIT")


def test_logged_changes_keep_the_reference(tmp_path: Path) -> None:
    rng = random.Random(11)
    conn, tables = setup(tmp_path / "r.sqlite")
    for step in range(3000):
        ids = [r[0] for r in conn.execute("SELECT rowid FROM loose")]
        op = rng.random()
        if op < 0.45 or not ids:
            conn.execute("INSERT INTO loose VALUES (?, ?)", (f"v{step}", step))
        elif op < 0.65:
            conn.execute("DELETE FROM loose WHERE rowid = ?", (rng.choice(ids),))
        elif op < 0.85:
            conn.execute("UPDATE loose SET b = b + 1 WHERE rowid = ?", (rng.choice(ids),))
        else:  # a new rowid, far or near: logged as a delete and an insert
            new = rng.choice([rng.randrange(1, 2**40), max(ids) + 1, -rng.randrange(1, 1000)])
            conn.execute("UPDATE OR IGNORE loose SET rowid = ? WHERE rowid = ?", (new, rng.choice(ids)))
        if rng.random() < 0.01:
            head = conn.execute(f"SELECT max(id) FROM {CHANGELOG}").fetchone()[0] or 0
            prune(conn, rng.randrange(0, head + 1))
    assert rowids.renumbered(conn, tables) == {}
    conn.execute("DELETE FROM loose WHERE rowid IN (SELECT rowid FROM loose ORDER BY rowid LIMIT 5)")
    assert rowids.renumbered(conn, tables) == {}
    conn.execute("VACUUM")
    found = rowids.renumbered(conn, tables)
    assert list(found) == ["loose"], found
    assert "renumbered" in found["loose"]
    capture.copy_again(conn, list(found), tables)
    assert rowids.renumbered(conn, tables) == {}
    conn.close()


def test_a_row_replaced_away_is_logged_and_one_vanished_is_reported(tmp_path: Path) -> None:
    """INSERT OR REPLACE over a UNIQUE index drops a row without its DELETE trigger: capture logs
    that delete itself, so the rowids add up. A row gone with no delete logged at all (a write
    made while capture is suppressed) is reported: not silent."""
    conn, tables = setup(tmp_path / "r.sqlite")
    conn.execute("CREATE UNIQUE INDEX loose_a ON loose (a)")
    tables = [describe(conn, "loose", no_primary_key="rowid"), tables[1]]
    capture.install(conn, tables)
    conn.execute("INSERT INTO loose VALUES ('x', 1), ('y', 2)")
    assert rowids.renumbered(conn, tables) == {}
    conn.execute("INSERT OR REPLACE INTO loose VALUES ('x', 3)")
    logged = conn.execute("SELECT op, pk FROM _syncd_changelog WHERE tbl = 'loose' ORDER BY id").fetchall()
    assert logged[-2:] == [("D", "[1]"), ("I", "[3]")], logged
    assert rowids.renumbered(conn, tables) == {}
    conn.execute("UPDATE _syncd_origin SET suppress = 1")
    conn.execute("DELETE FROM loose WHERE a = 'y'")
    conn.execute("UPDATE _syncd_origin SET suppress = 0")
    assert "without a logged change" in rowids.renumbered(conn, tables)["loose"]
    conn.close()
