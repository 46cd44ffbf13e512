"""The SQLite SQL of verify's expectation never disagrees with the Python expectation.

For every target type and many SQLite values of every storage class, the row text SQLite
computes (SQL where it can, the expectation's Python part registered as a function where it
cannot) is the very part :mod:`syncd.verify.expect` gives, and NULL exactly where that calls
the value unfit (the row is then compared row by row; a row whose text holds NUL is
left to Python by the row digest). Common values must be decided by SQL
alone, or the fast path would call Python for no reason.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import pytest

from syncd.verify.expect import Unfit, expect
from syncd.verify.expect_sql import part_sql, row_sql

TYPES = ["bigint", "integer", "smallint", "double precision", "real", "numeric", "numeric(10,2)",
         "numeric(3,0)", "numeric(2,5)", "numeric(25,2)", "text", "character varying(5)", "character(3)",
         "bytea", "boolean", "date", "time without time zone", "time(3) without time zone",
         "timestamp without time zone", "timestamp(3) without time zone", "timestamp(0) without time zone",
         "timestamp with time zone", "jsonb", "json", "uuid", "interval", "text[]"]

U = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
VALUES: list[Any] = [
    0, 1, -1, 7, 100, 2**15 - 1, 2**15, -2**15, -2**15 - 1, 2**31 - 1, 2**31, -2**63, 2**63 - 1, 999, 1000,
    12345678901234567,
    0.0, -0.0, 1.5, 3.0, 0.1, 1e300, -1e-310, float("inf"), 2.0**60, 16777217.0,
    "", "abc", "abcdef", "ü", "a\x00b", "ab  ", " ab", "x" * 300, "12.345", "12", "NaN", "infinity",
    "-infinity",
    "2024-01-02", "2024-02-29", "2023-02-29", "2024-02-30", "0000-01-01", "0001-01-01", "9999-12-31",
    "2024-1-02", " 2024-01-02",
    "2024-01-02 03:04:05", "2024-01-02T03:04:05", "2024-01-02 03:04:05.120", "2024-01-02 03:04:05.000",
    "2024-01-02 03:04:05.1", "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.1234567",
    "2024-01-02 03:04:05.120000", "2024-01-02 03:04:05.", "2024-01-02 03:04:05.12a",
    "2024-01-02 24:00:00", "2024-01-02 23:60:00", "2024-01-02 23:59:60", "2024-01-02 03:04:05Z",
    "2024-01-02 03:04:05+02:00", "2024-01-02 03:04", "0000-12-31 23:59:59", "9999-12-31 23:59:59.999999",
    "2024-01-02x03:04:05",
    "2024-13-01", "2024-00-10", "2024-04-31", "2024-01-00", "2023-12-31", "2024-13-01 00:00:00",
    "2024-00-10 00:00:00", "2024-04-31 00:00:00", "2024-04-30 00:00:00", "2024-01-00 00:00:00",
    "2100-02-29 00:00:00", "2000-02-29 00:00:00", "2024-01-02 03:04:05.1200000", "2024-01-02 19:59:59.",
    "2024-01-02T00:00:00.000001", "2024-01-02 20:00:00.100", "2024-01-02 03:04:5a", "2024-01-02 03:04:05 ",
    "12:34:56", "24:00:00", "23:59:60", "12:34", "12:34:56.5", "1:02:03",
    "true", " TRUE ", "yes", "No", "off", "maybe", "1", "0", "\ttrue", "\u212aes",
    str(U), str(U).upper(), U.hex, "{" + str(U) + "}", str(U) + " ", str(U)[:-1] + "g",
    '{"b": 1, "a": [1.50, 2]}', '{"a":1,"a":2}', "[1e3, -0.0]", "{bad", "null", '"x"',
    b"", b"\x00\x01", U.bytes, b"abc", b"\xff\xfe", "ü".encode(),
]


def _store(values: list[Any]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, x)")  # no affinity: storage classes kept
    conn.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    return conn


def _sql_parts(pg_type: str, conn: sqlite3.Connection, rounded: bool = False) -> list[tuple[Any, str | None]]:
    e = expect("x", pg_type, rounded)
    rs = row_sql([e], ['"x"'], "syncd_t")
    rs.register(conn)
    rows = conn.execute(f"SELECT x, {rs.text}, {rs.digest} FROM t ORDER BY i").fetchall()
    return [(v, None if digest is None else text) for v, text, digest in rows]


def _python_part(pg_type: str, v: Any, rounded: bool = False) -> str | None:
    """The Python part; None where it is unfit, or holds NUL (the row digest leaves such rows
    to the row-by-row path, which decides them with this very part)."""
    try:
        part = expect("x", pg_type, rounded).part(v)
    except Unfit:
        return None
    return None if "\x00" in part else part


@pytest.mark.parametrize("pg_type", TYPES)
def test_the_sql_row_text_is_the_python_part(pg_type: str) -> None:
    conn = _store(VALUES)
    for v, sql in _sql_parts(pg_type, conn):
        assert sql == _python_part(pg_type, v), (pg_type, v)


@pytest.mark.parametrize("pg_type", ["numeric(10,2)", "double precision", "real", "numeric"])
def test_rounded_columns_leave_everything_roundable_to_python(pg_type: str) -> None:
    conn = _store(VALUES)
    for v, sql in _sql_parts(pg_type, conn, rounded=True):
        assert sql == _python_part(pg_type, v, rounded=False), (pg_type, v)  # None where rounded


def test_null_is_n() -> None:
    conn = _store([None])
    assert [p for _, p in _sql_parts("text", conn)] == ["N"]


def _sql_only(pg_type: str, value: Any) -> str | None:
    e = expect("x", pg_type)
    sql = part_sql(e, "?")
    if sql is None:
        return None
    row: tuple[str | None] = sqlite3.connect(":memory:").execute(
        f"SELECT {sql}", [value] * sql.count("?")).fetchone()
    return row[0]


@pytest.mark.parametrize(("pg_type", "value"), [
    ("bigint", 5), ("integer", -7), ("text", "abc"), ("text", "ü"), ("character varying(5)", "abc"),
    ("timestamp without time zone", "2024-01-02 03:04:05.120"),
    ("timestamp with time zone", "2024-01-02T03:04:05"),
    ("boolean", 1), ("boolean", "false"), ("uuid", str(U)), ("uuid", U.bytes), ("date", "2024-01-02"),
    ("bytea", b"\x00\x01"), ("numeric(10,2)", 12), ("time without time zone", "12:34:56"),
    ("interval", "1 day"),
])
def test_common_values_are_decided_in_sql_alone(pg_type: str, value: Any) -> None:
    sql = _sql_only(pg_type, value)
    assert sql is not None and sql == _python_part(pg_type, value)
