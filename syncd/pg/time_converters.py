"""Converters of dates and times (``timestamp``, ``timestamptz``, ``date``, ``time``): the text
layouts and Unix times apps write, read to the microsecond PostgreSQL keeps (see
docs/mapping.md); the rest of the per-value converters are in :mod:`syncd.pg.converters`."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from decimal import Decimal
from typing import Any

from syncd.pg.datetime import INFINITY, MINUS_INFINITY, Infinity, OutOfRange
from syncd.pg.refusals import Converter
from syncd.pg.refusals import fail as _fail

_DATETIME = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?)?\s*")
_TIME = re.compile(r"\s*(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*")
_EPOCH = dt.datetime(2000, 1, 1)
"""PostgreSQL's epoch: values are microseconds (days for a date) since it."""
_MICRO = dt.timedelta(microseconds=1)
_DAY = 86_400_000_000
_UNIX = -946_684_800_000_000
"""1970-01-01 in microseconds since 2000-01-01."""
_PG_TIMESTAMPS = range(-211_813_488_000_000_000, 9_223_371_331_200_000_000)
"""PostgreSQL's timestamps: 4714-11-24 BC 00:00 up to (not including) 294277-01-01 00:00."""
_RAILS_DATE = re.compile(r"\s*2000-01-01[T ](?=\d)(.*)", re.S)
"""Rails' dummy date: the ActiveRecord sqlite3 adapter writes a ``time`` column's value as
``2000-01-01 HH:MM:SS.ffffff``; that date and no other is taken as a time of day."""


def _infinity(v: Any) -> Infinity | None:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("infinity", "+infinity"):
            return INFINITY
        if s == "-infinity":
            return MINUS_INFINITY
    return None


def _fraction(digits: str | None, v: Any, pg_type: str) -> int:
    """Microseconds of a fraction of a second; finer digits must be zeros."""
    if not digits:
        return 0
    if len(digits) > 6 and digits[6:].strip("0"):
        raise _fail(v, pg_type, "finer than a microsecond; PostgreSQL keeps microseconds")
    return int((digits + "000000")[:6])


def _precision(micro: int, v: Any, pg_type: str) -> int:
    m = re.search(r"\((\d)\)", pg_type)
    if m and int(m.group(1)) < 6 and micro % 10 ** (6 - int(m.group(1))):
        raise _fail(v, pg_type, "more fractional digits than the type keeps")
    return micro


def _parse_micros(v: Any, pg_type: str) -> int:
    """Microseconds since 2000-01-01 of the instant *v* means: UTC when it carries an offset
    (or is a Unix time), its wall-clock time otherwise. An offset may carry it out of Python's
    years 1-9999 (``9999-12-31T23:30:00-01:00``), which PostgreSQL holds; a value outside
    PostgreSQL's range is refused."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise _fail(v, pg_type)
        exact = Decimal(v) * (1000 if abs(v) > 1e11 else 1_000_000)
        micros = _UNIX + int(exact.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
    else:
        if not isinstance(v, str):
            raise _fail(v, pg_type)
        m = _DATETIME.fullmatch(v)
        if m is None:
            raise _fail(v, pg_type, "not a valid date/time")
        y, mo, d, h, mi, sec, frac, off = m.groups()
        try:
            value = dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0),
                                _fraction(frac, v, pg_type))
        except ValueError as exc:
            raise _fail(v, pg_type, "not a valid date/time") from exc
        micros = (value - _EPOCH) // _MICRO
        if off is not None and off not in ("Z", "z"):
            sign = -1 if off[0] == "-" else 1
            digits = off[1:].replace(":", "")
            micros -= sign * (int(digits[:2]) * 60 + int(digits[2:] or 0)) * 60_000_000
    if micros not in _PG_TIMESTAMPS:
        raise _fail(v, pg_type, "out of range: PostgreSQL's timestamps go from 4713 BC to 294276 AD")
    return micros


def _instant(micros: int, type_name: str) -> dt.datetime | OutOfRange:
    """The naive datetime of *micros* (since 2000-01-01), or, outside Python's years 1-9999,
    the exact :class:`OutOfRange` the connection's codec writes as it is."""
    try:
        return _EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        return OutOfRange(type_name, micros)


_PLAIN_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?")
"""The shape apps write most (``YYYY-MM-DD HH:MM:SS[.ffffff]``, ASCII digits, no offset), which
:meth:`datetime.fromisoformat` reads as :func:`_parse_micros` does: the wall-clock time, the
fraction padded to microseconds. Hours 24 and seconds 60 are left to the full rules, whatever a
later Python's ``fromisoformat`` makes of them."""


def _plain(v: Any, zone: bool) -> dt.datetime | None:
    """*v* read by the fast path (as UTC if *zone*), or None for the full rules (another shape,
    or a value ``fromisoformat`` refuses, whose message :func:`_parse_micros` gives)."""
    if isinstance(v, str) and _PLAIN_DATETIME.fullmatch(v):
        try:
            return dt.datetime.fromisoformat(v + "+00:00" if zone else v)
        except ValueError:
            return None
    return None


def timestamp(pg_type: str, zone: bool = False) -> Converter:
    whole = re.search(r"\((\d)\)", pg_type) is None  # no fractional digits to check

    def convert(v: Any) -> dt.datetime | Infinity | OutOfRange:
        plain = _plain(v, zone) if whole else None
        if plain is not None:
            return plain
        inf = _infinity(v)
        if inf is not None:
            return inf
        micros = _parse_micros(v, pg_type)
        _precision(micros % 1_000_000, v, pg_type)
        value = _instant(micros, "timestamptz" if zone else "timestamp")
        return value.replace(tzinfo=dt.UTC) if zone and isinstance(value, dt.datetime) else value

    return convert


def timestamptz(pg_type: str) -> Converter:
    return timestamp(pg_type, zone=True)


def date(v: Any) -> dt.date | Infinity | OutOfRange:
    inf = _infinity(v)
    if inf is not None:
        return inf
    days, rest = divmod(_parse_micros(v, "date"), _DAY)
    if rest:
        raise _fail(v, "date", "has a time of day, which a date would drop; map the column to "
                    "timestamp in [target.column_types]")
    value = _instant(days * _DAY, "date")
    return value.date() if isinstance(value, dt.datetime) else OutOfRange("date", days)


def time(pg_type: str) -> Converter:
    def convert(v: Any) -> dt.time:
        rails = _RAILS_DATE.fullmatch(v) if isinstance(v, str) else None
        m = _TIME.fullmatch(rails.group(1) if rails else v) if isinstance(v, str) else None
        if m is None:
            raise _fail(v, pg_type, "not a valid time (HH:MM[:SS[.ffffff]], or Rails' "
                        "2000-01-01 HH:MM:SS[.ffffff]; no other date, no offset)")
        h, mi, sec, frac = m.groups()
        try:
            value = dt.time(int(h), int(mi), int(sec or 0), _fraction(frac, v, pg_type))
        except ValueError as exc:
            raise _fail(v, pg_type, "not a valid time") from exc
        _precision(value.microsecond, v, pg_type)
        return value

    return convert
