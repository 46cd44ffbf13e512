"""verify's own expectation table against PostgreSQL's own input and output.

Each case is a SQLite value, its target type, and the PostgreSQL literal that means the same
value: PostgreSQL parses the literal (no syncd code involved) and computes its canonical part
in SQL; verify's expectation of the SQLite value must be exactly that part. Values that do not
fit must be Unfit.
"""

from __future__ import annotations

import asyncpg
import pytest

from syncd.stores.postgres.types import ColumnMap
from syncd.verify.canon import SESSION_SETTINGS, RowCanon
from syncd.verify.expect import Unfit, expect

# (target type, SQLite value, PostgreSQL literal of the same value)
EQUAL: list[tuple[str, object, str]] = [
    ("bigint", 2**63 - 1, "9223372036854775807"),
    ("bigint", 3.0, "3"),
    ("smallint", -32768, "-32768"),
    ("double precision", 0.1, "0.1"),
    ("double precision", -0.0, "-0"),
    ("double precision", 5e-324, "5e-324"),
    ("double precision", float("inf"), "Infinity"),
    ("double precision", 2**53, "9007199254740992"),
    ("real", 0.5, "0.5"),
    ("real", float("-inf"), "-Infinity"),
    ("numeric", 0.1, "0.1"),
    ("numeric", "1e3", "1000"),
    ("numeric", "NaN", "NaN"),
    ("numeric", 7, "7"),
    ("numeric(10,2)", 12.34, "12.34"),
    ("numeric(10,2)", "-0.000", "0"),
    ("numeric(10,2)", 99999999.99, "99999999.99"),
    ("text", "a|b\n", "a|b\n"),
    ("text", 42, "42"),
    ("text", 1.5, "1.5"),
    ("text", b"utf8 \xc3\xa9", "utf8 é"),
    ("varchar(3)", "abc", "abc"),
    ("character(5)", "ab", "ab"),
    ("bytea", b"\x00\xff", "\\x00ff"),
    ("bytea", "é", "\\xc3a9"),
    ("boolean", 1, "true"),
    ("boolean", " No ", "false"),
    ("date", "0001-01-01", "0001-01-01"),
    ("date", "9999-12-31", "9999-12-31"),
    ("date", "infinity", "infinity"),
    ("date", "2024-01-02T00:00:00Z", "2024-01-02"),
    ("time", "10:11:12.5", "10:11:12.5"),
    ("time", "23:59", "23:59:00"),
    ("time", "2000-01-01 12:34:56.000000", "12:34:56"),  # Rails' dummy date
    ("time", "2000-01-01T08:15:00.250000", "08:15:00.25"),
    ("timestamp", "0001-01-01 00:00:00", "0001-01-01 00:00:00"),
    ("timestamp", "9999-12-31T23:59:59.999999", "9999-12-31 23:59:59.999999"),
    ("timestamp", "2024-01-02T03:04:05+02:00", "2024-01-02 01:04:05"),
    ("timestamp", "-infinity", "-infinity"),
    ("timestamp", 1700000000, "2023-11-14 22:13:20"),
    ("timestamp", 1700000000123, "2023-11-14 22:13:20.123"),
    ("timestamp(3)", "2024-01-02 03:04:05.120", "2024-01-02 03:04:05.12"),
    ("timestamptz", "2024-01-02 03:04:05", "2024-01-02 03:04:05+00"),
    ("timestamptz", "0001-01-01T00:00:00Z", "0001-01-01 00:00:00+00"),
    ("jsonb", '{"b": 1, "a": [1.50, -0.0, 1e3]}', '{"a": [1.50, -0.0, 1e3], "b": 1}'),
    ("jsonb", 5, "5"),
    # jsonb's text of JSON orjson parses (syncd.verify.canon): big integers, number layouts,
    # escapes, duplicate keys, separators inside strings, key order by bytes
    *(("jsonb", j, j) for j in [
        '{"a": 18446744073709551616, "b": 18446744073709551615, "c": -9223372036854775809}',
        "[123456789012345678901234567890, -0, 0, 7]", '{"x": 1.50}', '{"x": 1.5}',
        "[-0.0, 1e3, 1E-2, 2.5e+10, 0.1, 100.000]", '{"x": 1.50, "y": {"z": [1, 2]}}',
        '{"s": "\\u00e9\\u0041\\n\\t\\"\\\\\\u001f\\ud83d\\ude00\\u007f/"}',
        '{"a": 1, "a": 2, "b": {"x": [1], "x": {"y": 3}}}', '{"k:1": "v,2", "k": [",", ":", ", "]}',
        '{"\u00e9": 1, "ab": 2, "z": 3, "\u20ac\u20ac": 4, "aaa": 5, "\u00e9\u00e9": 6}',
        '  [ {"b":1,"a":2} , [] , {} , "x" , true , false , null ]  ', '"top, level: string"', "null",
    ]),
    ("uuid", "{5F0C3A52-8F7E-4C1D-9A3B-2D6E1F0A9B8C}", "5f0c3a52-8f7e-4c1d-9a3b-2d6e1f0a9b8c"),
]
UNFIT: list[tuple[str, object]] = [
    ("bigint", 1.5), ("bigint", "12"), ("smallint", 40000), ("double precision", 2**53 + 1),
    ("real", 0.1), ("real", 1e39), ("numeric(10,2)", 12.345), ("numeric(10,2)", 123456789.0),
    ("numeric(10,2)", "Infinity"), ("numeric", "12a"), ("text", "nul\x00"), ("varchar(3)", "abcd"),
    ("bytea", 5), ("boolean", 2), ("boolean", "maybe"), ("date", "2024-01-02 10:00:00"),
    ("time", "10:00:00+02:00"), ("time", "10:00:00.1234567"), ("time", "2000-01-02 12:00:00"),
    ("time", "1999-12-31 12:00:00.000000"), ("time", "2000-01-01"), ("time", "2000-01-01 12:00:00+02:00"),
    ("timestamp", "2024-01-02 00:00:00.1234567"),
    ("timestamp", "2024-02-30"), ("timestamp(3)", "2024-01-02 03:04:05.1234"), ("jsonb", '{"a": NaN}'),
    ("jsonb", "{bad"), ("uuid", "not-a-uuid"), ("uuid", 7),
]


async def test_expectation_is_what_postgresql_prints(pg: asyncpg.Connection) -> None:
    for name, value in SESSION_SETTINGS.items():
        await pg.execute("SELECT set_config($1, $2, false)", name, value)
    failures = []
    for pg_type, value, literal in EQUAL:
        canon = RowCanon.for_columns([ColumnMap("v", "", pg_type)], ["v"])
        sql = f"SELECT {canon.part_sql(0)} FROM (SELECT $1::text::{pg_type} AS v) s"
        part = await pg.fetchval(sql, literal)
        try:
            mine = expect("v", pg_type).part(value)
        except Unfit as exc:
            mine = f"Unfit: {exc}"
        if mine != part:
            failures.append(f"{pg_type} {value!r}: PostgreSQL {part!r}, verify {mine!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("pg_type", "value"), UNFIT)
def test_values_that_do_not_fit_are_unfit(pg_type: str, value: object) -> None:
    with pytest.raises(Unfit):
        expect("v", pg_type).part(value)


def test_rounding_chosen_gives_the_rounded_part() -> None:
    e = expect("v", "numeric(10,2)", rounded=True)
    assert e.part(12.345) == "12.35" and e.part(-0.005) == "-0.01"
    assert e.strict is not None
    with pytest.raises(Unfit):
        e.strict(12.345)
