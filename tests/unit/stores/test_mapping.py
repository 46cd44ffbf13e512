from __future__ import annotations

import datetime as dt

import pytest

from syncd.errors import RowError, redact
from syncd.pg.converters import converter
from syncd.pg.families import can_hold
from syncd.stores.postgres.types import pg_type_for


@pytest.mark.parametrize(("declared", "pg"), [
    ("INTEGER", "bigint"), ("int", "bigint"), ("UNSIGNED BIG INT", "bigint"), ("TINYINT", "bigint"),
    ("REAL", "double precision"), ("DOUBLE PRECISION", "double precision"), ("FLOAT", "double precision"),
    ("TEXT", "text"), ("CLOB", "text"), ("VARCHAR(255)", "varchar(255)"),
    ("VARYING CHARACTER(255)", "varchar(255)"), ("NATIVE CHARACTER(70)", "varchar(70)"),
    ("character varying(50)", "varchar(50)"), ("BLOB", "bytea"), ("", "text"),
    ("BOOLEAN", "boolean"), ("DATETIME", "timestamp"), ("TIMESTAMP", "timestamp"), ("DATE", "date"),
    ("JSON", "jsonb"), ("NUMERIC", "numeric"), ("DECIMAL(10,5)", "numeric(10,5)"), ("UUID", "uuid"),
    ("STRING", "numeric"),  # SQLite's own rule: no INT/CHAR/CLOB/TEXT/BLOB/REAL... -> NUMERIC
])
def test_declared_types(declared: str, pg: str) -> None:
    assert pg_type_for(declared) == pg


def test_converters_accept_what_sqlite_holds() -> None:
    assert converter("timestamp")("2024-01-02 03:04:05.123") == dt.datetime(2024, 1, 2, 3, 4, 5, 123000)
    assert converter("timestamp")("2024-01-02T05:04:05+02:00") == dt.datetime(2024, 1, 2, 3, 4, 5)
    assert converter("timestamp")(0) == dt.datetime(1970, 1, 1)
    assert converter("timestamp")(1_700_000_000_000) == converter("timestamp")(1_700_000_000)
    assert converter("boolean")("TRUE") is True and converter("boolean")(0) is False
    assert converter("bigint")(3.0) == 3 and converter("text")(12) == "12"
    assert converter("integer")(None) is None


@pytest.mark.parametrize(("pg", "value", "words"), [
    ("bigint", "12a", "does not fit bigint"), ("integer", 2**31, "out of range"),
    ("bigint", 1.5, "does not fit"), ("timestamp", "2024-13-01", "not a valid"),
    ("jsonb", "{", "invalid JSON"), ("varchar(3)", "abcd", "longer than 3"),
    ("text", "a\x00b", "NUL"), ("boolean", 2, "boolean"), ("uuid", "nope", "UUID"),
    ("text", b"\xff\xfe", "not UTF-8"), ("jsonb", '"\\u0000"', "\\u0000"),
])
def test_converters_refuse_with_reason(pg: str, value: object, words: str) -> None:
    with pytest.raises(RowError) as err:
        converter(pg)(value)
    assert words in str(err.value)


def test_can_hold() -> None:
    assert can_hold("bigint", "integer") and can_hold("text", "character varying(255)")
    assert can_hold("timestamp", "timestamp with time zone") and can_hold("text", "uuid")
    assert not can_hold("text", "integer") and not can_hold("bytea", "boolean")
    assert not can_hold("double precision", "boolean")


def test_redact() -> None:
    assert redact("postgresql://app:pa:ss@db:5432/x failed") == "postgresql://app:***@db:5432/x failed"
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"
