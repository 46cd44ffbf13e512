"""Exact ``date`` / ``timestamp`` / ``timestamptz`` codecs for syncd's PostgreSQL connections.

asyncpg encodes ``datetime.min`` / ``date.min`` as ``-infinity`` and ``datetime.max`` /
``date.max`` as ``infinity``, and decodes PostgreSQL's infinities back into them: a SQLite
``0001-01-01 00:00:00`` would arrive as ``-infinity``, and an ``infinity`` written by the
app would come back as year 9999. syncd registers these codecs (asyncpg's ``tuple``
format: microseconds or days since 2000-01-01) on every connection it opens, so that

- every Python date and datetime is stored as exactly that instant, years 1 and 9999
  included;
- PostgreSQL's ``infinity`` / ``-infinity`` is :data:`INFINITY` / :data:`MINUS_INFINITY`,
  both ways;
- a value outside Python's years 1–9999 (PostgreSQL goes from 4713 BC to 294276 AD) is
  decoded as :class:`OutOfRange` instead of failing the whole query, and an
  :class:`OutOfRange` is written as exactly that value.

One mechanism for every path: binary COPY (snapshot), parameters (stream), and the rows
the reverse stream reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_MICRO = dt.timedelta(microseconds=1)
_I64_MAX, _I64_MIN = 2**63 - 1, -(2**63)
_I32_MAX, _I32_MIN = 2**31 - 1, -(2**31)


@dataclass(frozen=True, slots=True)
class Infinity:
    """PostgreSQL's ``infinity`` or ``-infinity`` of a date or timestamp."""

    negative: bool

    def __str__(self) -> str:
        return "-infinity" if self.negative else "infinity"


INFINITY = Infinity(False)
MINUS_INFINITY = Infinity(True)


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """A PostgreSQL date or timestamp outside Python's years 1–9999, exactly: read from
    PostgreSQL, or built by the sink's converters (a SQLite ``9999-12-31T23:30:00-01:00`` is
    year 10000 in UTC), and written back as it is by these codecs.

    It orders with the dates and datetimes of its type (verify walks keys in order)."""

    type: str
    """``timestamp``, ``timestamptz`` or ``date``."""
    units: int
    """Microseconds (timestamps) or days (dates) since 2000-01-01."""

    def __str__(self) -> str:
        return f"a {self.type} outside the years 1-9999"

    def _other(self, other: object) -> int | None:
        if isinstance(other, OutOfRange) and (other.type == "date") == (self.type == "date"):
            return other.units
        if isinstance(other, dt.datetime) and self.type != "date":
            return encode_timestamptz(other)[0] if other.tzinfo else _micros(other)
        if isinstance(other, dt.date) and not isinstance(other, dt.datetime) and self.type == "date":
            return other.toordinal() - _EPOCH_ORDINAL
        return None

    def __lt__(self, other: object) -> bool:
        units = self._other(other)
        return NotImplemented if units is None else self.units < units

    def __gt__(self, other: object) -> bool:
        units = self._other(other)
        return NotImplemented if units is None else self.units > units

    def __le__(self, other: object) -> bool:
        units = self._other(other)
        return NotImplemented if units is None else self.units <= units

    def __ge__(self, other: object) -> bool:
        units = self._other(other)
        return NotImplemented if units is None else self.units >= units


def _out_of_range(v: OutOfRange, date: bool) -> tuple[int]:
    if (v.type == "date") != date:
        raise TypeError(f"{v} is not a {'date' if date else 'timestamp'}")
    return (v.units,)


def _micros(v: Any) -> int:
    if isinstance(v, dt.datetime):  # its wall-clock time, whatever its zone; field by field, as
        # subtracting datetimes costs four times as much on a snapshot's every value
        days = v.toordinal() - _EPOCH_ORDINAL
        return (((days * 24 + v.hour) * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if isinstance(v, dt.date):
        return (v.toordinal() - _EPOCH_ORDINAL) * 86_400_000_000
    raise TypeError(f"expected a datetime, date or Infinity, got {type(v).__name__}")


def encode_timestamp(v: Any) -> tuple[int]:
    if isinstance(v, Infinity):
        return (_I64_MIN if v.negative else _I64_MAX,)
    if isinstance(v, OutOfRange):
        return _out_of_range(v, date=False)
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        raise TypeError("a timestamp without time zone needs a naive datetime")
    return (_micros(v),)


def encode_timestamptz(v: Any) -> tuple[int]:
    if isinstance(v, Infinity):
        return (_I64_MIN if v.negative else _I64_MAX,)
    if isinstance(v, OutOfRange):
        return _out_of_range(v, date=False)
    if isinstance(v, dt.datetime):
        if v.tzinfo is dt.UTC:  # what the converters give
            return (_micros(v),)
        if v.tzinfo is None:
            v = v.astimezone()  # naive means local time, as asyncpg's own codec has it
        offset = v.utcoffset() or dt.timedelta(0)
        return (_micros(v) - offset // _MICRO,)
    return (_micros(v),)


def _decode_micros(micros: int, aware: bool, type_name: str) -> Any:
    if micros == _I64_MAX:
        return INFINITY
    if micros == _I64_MIN:
        return MINUS_INFINITY
    try:
        value = _EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        return OutOfRange(type_name, micros)
    return value.replace(tzinfo=dt.UTC) if aware else value


def decode_timestamp(t: tuple[int]) -> Any:
    return _decode_micros(t[0], False, "timestamp")


def decode_timestamptz(t: tuple[int]) -> Any:
    return _decode_micros(t[0], True, "timestamptz")


def encode_date(v: Any) -> tuple[int]:
    if isinstance(v, Infinity):
        return (_I32_MIN if v.negative else _I32_MAX,)
    if isinstance(v, OutOfRange):
        return _out_of_range(v, date=True)
    if isinstance(v, dt.date):
        return (v.toordinal() - _EPOCH_ORDINAL,)
    raise TypeError(f"expected a date or Infinity, got {type(v).__name__}")


def decode_date(t: tuple[int]) -> Any:
    days = t[0]
    if days == _I32_MAX:
        return INFINITY
    if days == _I32_MIN:
        return MINUS_INFINITY
    try:
        return dt.date.fromordinal(days + _EPOCH_ORDINAL)
    except (OverflowError, ValueError):
        return OutOfRange("date", days)


async def register(conn: asyncpg.Connection) -> None:
    """Install the exact codecs on *conn* (no round trip: the types are built in)."""
    for name, enc, dec in (("timestamp", encode_timestamp, decode_timestamp),
                           ("timestamptz", encode_timestamptz, decode_timestamptz),
                           ("date", encode_date, decode_date)):
        await conn.set_type_codec(name, schema="pg_catalog", encoder=enc, decoder=dec, format="tuple")


__all__ = ["INFINITY", "MINUS_INFINITY", "Infinity", "OutOfRange", "register"]
