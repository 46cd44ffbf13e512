"""verify's own calendar against Python's (years 1-9999) and PostgreSQL's printed edges; the
sink's converters hand years 0 and 10000 to the codecs as exact values."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from syncd.pg.converters import converter
from syncd.pg.datetime import OutOfRange, decode_timestamp, encode_date, encode_timestamp
from syncd.verify.calendar import civil, day_text, days_from_civil
from syncd.verify.expect import expect

UNIX = dt.date(1970, 1, 1).toordinal()


def test_days_agree_with_pythons_calendar() -> None:
    rng = random.Random(11)
    days = [0, -1, 1, dt.date(1, 1, 1).toordinal() - UNIX, dt.date(9999, 12, 31).toordinal() - UNIX]
    days += [rng.randrange(1, 3_652_060) - UNIX for _ in range(20_000)]
    for n in days:
        d = dt.date.fromordinal(n + UNIX)
        assert civil(n) == (d.year, d.month, d.day)
        assert days_from_civil(d.year, d.month, d.day) == n


def test_days_go_on_past_pythons_years() -> None:
    assert civil(days_from_civil(0, 12, 31)) == (0, 12, 31)
    assert days_from_civil(1, 1, 1) - days_from_civil(0, 12, 31) == 1
    assert days_from_civil(10000, 1, 1) - days_from_civil(9999, 12, 31) == 1
    assert days_from_civil(0, 3, 1) - days_from_civil(0, 2, 28) == 2  # year 0 (1 BC) is a leap year
    assert day_text(days_from_civil(0, 12, 31)) == ("0001-12-31", " BC")
    assert day_text(days_from_civil(-4713, 11, 24)) == ("4714-11-24", " BC")


@pytest.mark.parametrize(("value", "pg_type", "want"), [
    ("9999-12-31T23:30:00-01:00", "timestamp", "10000-01-01 00:30:00"),
    ("0001-01-01T00:30:00+01:00", "timestamp", "0001-12-31 23:30:00 BC"),
    ("0001-01-01 00:00:00.000001+14:00", "timestamptz", "0001-12-31 10:00:00.000001+00 BC"),
    ("9999-12-31T23:00:00-01:00", "date", "10000-01-01"),
    (253402300800000, "timestamp", "10000-01-01 00:00:00"),
    (-62135596800001, "timestamp", "0001-12-31 23:59:59.999 BC"),
])
def test_verify_expects_years_0_and_10000_as_postgresql_prints_them(value: object, pg_type: str,
                                                                    want: str) -> None:
    assert expect("c", pg_type).part(value) == want


@pytest.mark.parametrize(("value", "pg_type", "units"), [
    ("9999-12-31T23:30:00-01:00", "timestamp", (dt.datetime(9999, 12, 31, 23, 30) - dt.datetime(2000, 1, 1))
     // dt.timedelta(microseconds=1) + 3_600_000_000),
    ("0001-01-01T00:30:00+01:00", "timestamp with time zone",
     (dt.datetime(1, 1, 1) - dt.datetime(2000, 1, 1)) // dt.timedelta(microseconds=1) - 1_800_000_000),
    ("9999-12-31T23:00:00-01:00", "date", (dt.date(9999, 12, 31) - dt.date(2000, 1, 1)).days + 1),
])
def test_the_sink_passes_such_values_exactly(value: object, pg_type: str, units: int) -> None:
    got = converter(pg_type)(value)
    assert isinstance(got, OutOfRange) and got.units == units
    encode = encode_date if pg_type == "date" else encode_timestamp
    assert encode(got) == (units,)


def test_out_of_range_orders_with_datetimes() -> None:
    far = decode_timestamp((encode_timestamp(dt.datetime(9999, 12, 31))[0] + 86_400_000_000,))
    assert isinstance(far, OutOfRange)
    assert dt.datetime(9999, 12, 31) < far and far > dt.datetime(1, 1, 1)
    assert sorted([far, dt.datetime(2024, 1, 1)]) == [dt.datetime(2024, 1, 1), far]
    with pytest.raises(TypeError):
        encode_date(far)


def test_postgresqls_range_ends_are_rejects() -> None:
    with pytest.raises(Exception, match="out of range"):
        converter("timestamp")(10**19)  # Unix milliseconds far past 294276 AD


def test_a_reject_row_image_keeps_such_a_value_exactly() -> None:
    from syncd.pg.state import jsonable

    value = converter("timestamp")("9999-12-31T23:30:00-01:00")
    assert isinstance(value, OutOfRange)
    assert jsonable({"at": value}) == {"at": {"$timestamp": value.units}}
