"""The SQLite side of verify's digests: key-range cuts and per-range digests.

A range's digest computed inside SQLite (SQL parts, registered Python parts, row MD5s,
``group_concat``) must be the digest of the rows as the Python expectation renders them —
the same text PostgreSQL's side hashes — and must say when a row needs Python.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sqlite3
from pathlib import Path
from typing import Any

from syncd.ports.tables import Table
from syncd.sql import qi
from syncd.stores.sqlite.schema import describe
from syncd.verify.canon import NULL, SEP
from syncd.verify.expect import Expect, Unfit, expect
from syncd.verify.sqlite import Bounds, SqliteReader
from syncd.verify.sqlite_digest import RowSpec

COLUMNS = [("id", "bigint"), ("name", "text"), ("score", "double precision"),
           ("at", "timestamp without time zone"), ("meta", "jsonb"), ("flag", "boolean")]


def _row(i: int) -> tuple[Any, ...]:
    return (i, f"name {i} ü", i / 7, f"2024-01-{1 + i % 28:02d} 10:00:{i % 60:02d}.{i % 1000:03d}",
            f'{{"i": {i}, "b": [1.50, "x"]}}', i % 2)


def _database(path: Path, rows: list[tuple[Any, ...]]) -> Table:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, at DATETIME, meta JSON, "
                 "flag BOOLEAN)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    table = describe(conn, "t", no_primary_key="rowid")
    conn.close()
    return table


def _expects() -> list[Expect]:
    return [expect(name, pg_type) for name, pg_type in COLUMNS]


def _spec(table: Table) -> RowSpec:
    return RowSpec(tuple((name, pg_type, False) for name, pg_type in COLUMNS),
                   tuple(qi(c) for c in table.column_names))


def _python_digest(rows: list[tuple[Any, ...]]) -> tuple[int, str | None]:
    """The digest from the Python expectation: MD5 over the MD5s of the row texts, in key order."""
    hashes = []
    for raw in sorted(rows):
        parts = [NULL if v is None else e.part(v) for e, v in zip(_expects(), raw, strict=True)]
        hashes.append(hashlib.md5(SEP.join(parts).encode()).hexdigest())
    return len(rows), hashlib.md5("".join(hashes).encode()).hexdigest() if hashes else None


async def test_cuts_and_digests_agree_with_the_python_expectation(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(1, 1001)] + [(2000, None, None, None, None, None)]
    table = _database(tmp_path / "a.sqlite", rows)
    reader = SqliteReader(tmp_path / "a.sqlite")
    try:
        cuts = await reader.cuts(table, 300)
        assert cuts == [(300,), (600,), (900,)]
        spec = _spec(table)
        edges: list[tuple[Any, ...] | None] = [None, *cuts, None]
        total = 0
        for lo, hi in itertools.pairwise(edges):
            d = await reader.digest(table, Bounds(lo, hi), spec)
            inside = [r for r in rows if (lo is None or r[0] > lo[0]) and (hi is None or r[0] <= hi[0])]
            assert (d.rows, d.md5) == _python_digest(inside)
            assert d.decided == d.rows
            total += d.rows
        assert total == len(rows)
        empty = await reader.digest(table, Bounds((5000,), None), spec)
        assert (empty.rows, empty.decided, empty.md5) == (0, 0, None)
    finally:
        await reader.close()


async def test_a_value_python_must_judge_is_not_decided(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(1, 101)]
    rows[41] = (42, "x", 1.5, "2024-02-30 00:00:00", "{}", 1)  # not a day: unfit for timestamp
    rows[60] = (61, "x", 1.5, "2024-01-01 00:00:00", "{bad json", 1)  # unfit for jsonb
    table = _database(tmp_path / "b.sqlite", rows)
    for bad in ("2024-02-30 00:00:00", "{bad json"):
        try:
            (expect("at", "timestamp") if bad[0] == "2" else expect("m", "jsonb")).part(bad)
            raise AssertionError("the value should be unfit")
        except Unfit:
            pass
    reader = SqliteReader(tmp_path / "b.sqlite")
    try:
        spec = _spec(table)
        d = await reader.digest(table, Bounds(None, None), spec)
        assert (d.rows, d.decided) == (100, 98)
    finally:
        await reader.close()


async def test_one_ulp_changes_the_digest(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(1, 201)]
    digests = []
    for n, score in enumerate((rows[99][2], math.nextafter(rows[99][2], math.inf))):
        changed = list(rows)
        changed[99] = (*rows[99][:2], score, *rows[99][3:])
        table = _database(tmp_path / f"c{n}.sqlite", changed)
        reader = SqliteReader(tmp_path / f"c{n}.sqlite")
        try:
            spec = _spec(table)
            digests.append((await reader.digest(table, Bounds(None, None), spec)).md5)
        finally:
            await reader.close()
    assert digests[0] != digests[1]


async def test_worker_processes_give_the_same_digests(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(1, 1001)]
    rows[500] = (501, "a\x00b", 1.5, "2024-01-01 00:00:00", "{}", 1)  # NUL: Python must look
    table = _database(tmp_path / "w.sqlite", rows)
    here, pooled = SqliteReader(tmp_path / "w.sqlite"), SqliteReader(tmp_path / "w.sqlite", workers=2)
    try:
        spec = _spec(table)
        for lo, hi in [(None, (300,)), ((300,), (600,)), ((600,), None)]:
            mine = await here.digest(table, Bounds(lo, hi), spec)
            theirs = await pooled.digest(table, Bounds(lo, hi), spec, parallel=True)
            assert (mine.rows, mine.decided, mine.md5, mine.head) == \
                (theirs.rows, theirs.decided, theirs.md5, theirs.head)
            assert mine.decided == mine.rows - (lo == (300,))
    finally:
        await here.close()
        await pooled.close()
