"""The timestamp converters read the common ``YYYY-MM-DD HH:MM:SS[.ffffff]`` shape with
``datetime.fromisoformat``; whatever that path returns or refuses must be what the full rules
(:func:`syncd.pg.time_converters._parse_micros`) give for the same text."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from syncd.errors import RowError
from syncd.pg import converters, time_converters


def _full_rules(pg_type: str, v: str) -> object:
    try:
        micros = time_converters._parse_micros(v, pg_type)
        value = time_converters._instant(micros, pg_type)
    except RowError as exc:
        return ("refused", exc.message)
    if pg_type == "timestamptz" and isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC)
    return value


def _converted(pg_type: str, v: str) -> object:
    try:
        return converters.converter(pg_type)(v)
    except RowError as exc:
        return ("refused", exc.message)


def _texts(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)

    def two(hi: int) -> str:
        return f"{rnd.randint(0, hi):02d}"

    out = []
    for _ in range(n):
        year = rnd.choice(["0000", "0001", "1899", "1970", "2000", "2024", "9999"])
        fraction = rnd.choice(["", "." + "".join(rnd.choices("0123456789", k=rnd.randint(1, 7)))])
        out.append(f"{year}-{two(13)}-{two(32)}{rnd.choice(' T')}{two(25)}:{two(61)}:{two(61)}{fraction}")
    return [*out, "2024-02-29 23:59:59.999999", "2023-02-29 00:00:00", "2024-01-01 24:00:00",
            "2024-01-01T00:00:60", "٢٠٢٤-01-01 00:00:00", "2024-01-01 00:00:00.0000000"]


@pytest.mark.parametrize("pg_type", ["timestamp", "timestamptz"])
def test_the_fast_path_reads_and_refuses_what_the_full_rules_do(pg_type: str) -> None:
    for text in _texts(20261206, 40_000):
        full, fast = _full_rules(pg_type, text), _converted(pg_type, text)
        assert fast == full, text
        if isinstance(full, dt.datetime):
            assert isinstance(fast, dt.datetime) and fast.tzinfo is full.tzinfo, text


def test_a_type_with_fewer_fractional_digits_still_refuses_finer_values() -> None:
    with pytest.raises(RowError, match="more fractional digits"):
        converters.converter("timestamp(3)")("2024-01-01 00:00:00.1234")
    assert converters.converter("timestamp(3)")("2024-01-01 00:00:00.123") == dt.datetime(
        2024, 1, 1, 0, 0, 0, 123000)


def test_json_is_still_validated_with_one_shared_decoder() -> None:
    jsonb = converters.converter("jsonb")
    assert jsonb('{"a": [1, 2]}') == '{"a": [1, 2]}'
    for bad in ('{"a": NaN}', "[Infinity]", '{"a": 1', '"\\u0000"'):
        with pytest.raises(RowError):
            jsonb(bad)


def test_the_timestamp_codec_counts_microseconds_as_datetime_arithmetic_does() -> None:
    from syncd.pg import datetime as pgdatetime

    rnd = random.Random(7)
    epoch = dt.datetime(2000, 1, 1)
    for _ in range(20_000):
        naive = dt.datetime(rnd.randint(1, 9999), rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23),
                            rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999_999))
        micros = (naive - epoch) // dt.timedelta(microseconds=1)
        assert pgdatetime.encode_timestamp(naive) == (micros,)
        assert pgdatetime.encode_timestamptz(naive.replace(tzinfo=dt.UTC)) == (micros,)
        east = naive.replace(tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
        assert pgdatetime.encode_timestamptz(east) == (micros - 19_800_000_000,)  # 5 h 30 min


def test_json_accepted_or_refused_as_the_stdlib_parser_does() -> None:
    import json

    jsonb = converters.converter("jsonb")
    texts = ['{"a": 1, "a": 2}', "[1e400]", '"\\ud800"', " [1] ", "[1,]", '"a\tb"', "NaN", "-0",
             '{"k": "\\u00e9\\n"}', "1" * 40, "[" * 50 + "]" * 50, '{"a": [true, false, null]}', ""]
    for text in texts:
        try:
            json.loads(text, parse_constant=converters._no_constant)
            stdlib_accepts = "\\u0000" not in text
        except ValueError:
            stdlib_accepts = False
        try:
            assert jsonb(text) == text
            accepted = True
        except RowError:
            accepted = False
        assert accepted == stdlib_accepts, text

