"""PostgreSQL values -> SQLite values (the reverse mapping), and its round trip.

The property that matters: a value converted for SQLite, stored by SQLite under the column's
affinity, and mapped forward again (syncd.stores.postgres.types) is the value PostgreSQL held.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.errors import RowError
from syncd.pg.converters import converter
from syncd.ports.tables import ROWID_COLUMN, Column, Table, Unfit
from syncd.stores.postgres.source import ReverseTable, affinity, compact_json, sqlite_datetime, to_sqlite
from syncd.stores.postgres.types import pg_type_for


def through_sqlite(value: Any, declared: str) -> Any:
    """What SQLite holds after storing *value* in a column declared *declared*."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f'CREATE TABLE t (v {declared})')
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        return conn.execute("SELECT v FROM t").fetchone()[0]
    finally:
        conn.close()


def round_trip(value: Any, declared: str, pg_type: str | None = None) -> Any:
    pg_type = pg_type or pg_type_for(declared)
    return converter(pg_type)(through_sqlite(to_sqlite(value, pg_type, declared), declared))


@pytest.mark.parametrize(("declared", "want"), [
    ("INTEGER", "INTEGER"), ("UNSIGNED BIG INT", "INTEGER"), ("VARCHAR(20)", "TEXT"), ("CLOB", "TEXT"),
    ("BLOB", "BLOB"), ("", "BLOB"), ("REAL", "REAL"), ("DOUBLE PRECISION", "REAL"), ("FLOAT", "REAL"),
    ("BOOLEAN", "NUMERIC"), ("DATETIME", "NUMERIC"), ("DECIMAL(10,2)", "NUMERIC"), ("JSON", "NUMERIC"),
])
def test_affinity_follows_sqlite_rules(declared: str, want: str) -> None:
    assert affinity(declared) == want


@pytest.mark.parametrize(("value", "pg_type", "declared", "want"), [
    (None, "bigint", "INTEGER", None),
    (True, "boolean", "BOOLEAN", 1), (False, "boolean", "BOOLEAN", 0),
    (2**63 - 1, "bigint", "INTEGER", 2**63 - 1),
    (5e-324, "double precision", "REAL", 5e-324), (float("-inf"), "double precision", "REAL", float("-inf")),
    (dt.datetime(2024, 1, 2, 3, 4, 5), "timestamp without time zone", "DATETIME", "2024-01-02 03:04:05"),
    (dt.datetime(2024, 1, 2, 3, 4, 5, 7), "timestamp(6) without time zone", "TIMESTAMP",
     "2024-01-02 03:04:05.000007"),
    (dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "timestamp with time zone",
     "TIMESTAMPTZ", "2024-01-02 03:04:05+00:00"),
    (dt.datetime(1970, 1, 2), "timestamp without time zone", "INTEGER", 86400),
    (dt.datetime(1970, 1, 1, 0, 0, 1, 500000), "timestamp without time zone", "INTEGER", 1.5),
    (dt.date(2024, 2, 29), "date", "DATE", "2024-02-29"),
    (dt.time(23, 59, 59, 1), "time without time zone", "TIME", "23:59:59.000001"),
    ('{"a": [1, 2.5, null], "b": "x y"}', "jsonb", "JSON", '{"a":[1,2.5,null],"b":"x y"}'),
    ('{"a" :  1}', "json", "JSON", '{"a" :  1}'),  # json keeps the app's text as written
    (Decimal("12.50"), "numeric", "NUMERIC", 12.5), (Decimal("7.00"), "numeric(10,2)", "DECIMAL(10,2)", 7),
    (Decimal("3.14159265358979323846"), "numeric", "NUMERIC", "3.14159265358979323846"),
    (uuid.UUID(int=1), "uuid", "UUID", "00000000-0000-0000-0000-000000000001"),
    (uuid.UUID(int=1), "uuid", "BLOB", b"\x00" * 15 + b"\x01"),
    (b"\x00\xff", "bytea", "BLOB", b"\x00\xff"),
    ("ü\n'\"", "text", "TEXT", "ü\n'\""),
])
def test_to_sqlite(value: Any, pg_type: str, declared: str, want: Any) -> None:
    got = to_sqlite(value, pg_type, declared)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("value", "pg_type", "match"), [
    (float("nan"), "double precision", "NaN"),
    (Decimal("NaN"), "numeric", "NaN"),
    ([1, 2], "integer[]", r"integer\[\]"),
    (dt.timedelta(seconds=1), "interval", "interval"),
])
def test_values_sqlite_cannot_hold_are_refused(value: Any, pg_type: str, match: str) -> None:
    with pytest.raises(RowError, match=match):
        to_sqlite(value, pg_type, "")


def test_compact_json_keeps_strings_and_numbers_as_written() -> None:
    text = '{"k": "a  b\\" c", "n": 1' + "0" * 50 + ', "f": 0.10, "l": [1, {"x": null}]}'
    assert compact_json(text) == '{"k":"a  b\\" c","n":1' + "0" * 50 + ',"f":0.10,"l":[1,{"x":null}]}'
    assert json.loads(compact_json(text)) == json.loads(text)


def test_sqlite_datetime_is_what_the_forward_mapping_parses() -> None:
    for value in (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)):
        assert converter("timestamp")(sqlite_datetime(value)) == value


@given(st.floats(allow_nan=False))
def test_floats_round_trip_exactly(value: float) -> None:
    got = round_trip(value, "REAL")
    assert got == value and (math.copysign(1, got) == math.copysign(1, value) or value == 0)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_round_trip(value: int) -> None:
    assert round_trip(value, "INTEGER") == value


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_timestamps_round_trip(value: dt.datetime) -> None:
    assert round_trip(value, "DATETIME") == value


@given(st.text())
def test_text_round_trips(value: str) -> None:
    if "\x00" not in value:  # PostgreSQL text cannot hold NUL
        assert round_trip(value, "TEXT") == value


@given(st.binary())
def test_blobs_round_trip(value: bytes) -> None:
    assert round_trip(value, "BLOB") == value


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-10**12, max_value=10**12))
def test_decimals_with_two_places_round_trip(value: Decimal) -> None:
    assert round_trip(value, "DECIMAL(10,2)", "numeric") == value


@given(st.booleans() | st.none())
def test_booleans_round_trip(value: bool | None) -> None:
    assert round_trip(value, "BOOLEAN") is value


def test_round_trip_of_json_uuid_date() -> None:
    doc = '{"a": [1, 2.5, null], "big": 100000000000000000000000000, "s": "é\\n"}'
    assert json.loads(round_trip(doc, "JSON")) == json.loads(doc)
    assert round_trip(uuid.UUID(int=12345), "UUID") == uuid.UUID(int=12345)
    assert round_trip(uuid.UUID(int=12345), "BLOB", "uuid") == uuid.UUID(int=12345)
    assert round_trip(dt.date(2024, 2, 29), "DATE") == dt.date(2024, 2, 29)


def _table(*columns: tuple[str, str], rowid: bool = False) -> Table:
    cols = tuple(Column(n, d, False, 0 if rowid else int(i == 0)) for i, (n, d) in enumerate(columns))
    pk = (ROWID_COLUMN,) if rowid else (columns[0][0],)
    return Table(name="t", columns=cols, pk=pk, rowid_key=rowid, without_rowid=False, indexes=(),
                 foreign_keys=())


def test_reverse_table_marks_unfit_values_and_keeps_sqlite_columns_only() -> None:
    table = ReverseTable(_table(("id", "INTEGER"), ("r", "REAL"), ("only_sqlite", "TEXT")),
                         {"id": "bigint", "r": "double precision"})
    image = table.convert({"id": 1, "r": float("nan"), "pg_only": "x"})
    assert set(image) == {"id", "r"} and image["id"] == 1
    assert isinstance(image["r"], Unfit) and "column 'r'" in image["r"].error
    assert table.convert_key((1,)) == (1,)


def test_rowid_tables_carry_the_rowid() -> None:
    table = ReverseTable(_table(("a", "TEXT"), rowid=True), {ROWID_COLUMN: "bigint", "a": "text"})
    assert table.convert({ROWID_COLUMN: 7, "a": "x"}) == {ROWID_COLUMN: 7, "a": "x"}
    assert table.convert_key((7,)) == (7,)
