"""verify's own expectation: how each SQLite value must look in PostgreSQL.

verify shares no conversion code with the sink: a bug in a shared converter would be
invisible to both. This module derives, from the SQLite value as SQLite holds it (its
storage class: integer, real, text, blob) and the target column's type, the canonical part
PostgreSQL's side computes in SQL (:mod:`syncd.verify.canon`): mostly PostgreSQL's own text
output (``x::text`` with DateStyle ISO and TimeZone UTC), length-prefixed for free text,
the IEEE bits for floats, the MD5 of the jsonb text for JSON. A value the target type
cannot hold exactly raises :class:`Unfit` (the row must be a reject), unless the operator
chose rounding for the column. The table is in docs/verify.md ("What verify expects").

It uses the schema only (which type each column has), never :mod:`syncd.stores.postgres.types`'s
converters or asyncpg's encoders; the one place a Python value is built from a part is a
key's value for range predicates (:meth:`Expect.key`), and a wrong key there could only
hide rows from a range, which then show up as missing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from syncd.model import InvalidText
from syncd.pg.datetime import INFINITY, MINUS_INFINITY, OutOfRange
from syncd.verify.calendar import DAY, PG_DAYS, clock, day_text, days_from_civil, month_days
from syncd.verify.canon import CanonError, _numeric_text, jsonb_utf8


class Unfit(Exception):
    """The value cannot be stored exactly in the column's type: the row must be a reject."""


Part = Callable[[Any], str]

_BIG = decimal.Context(prec=200_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_SPECIAL = {"nan": "NaN", "infinity": "Infinity", "+infinity": "Infinity", "-infinity": "-Infinity",
            "inf": "Infinity", "+inf": "Infinity", "-inf": "-Infinity"}
_DATETIME = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                       r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?)?\s*")
_TIME = re.compile(r"\s*(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*")
_RAILS_TIME = re.compile(r"\s*2000-01-01[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*")
"""A time of day on Rails' dummy date (what ActiveRecord's sqlite3 adapter writes)."""
_UUID = re.compile(r"\s*\{?([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?"
                   r"([0-9a-fA-F]{12})\}?\s*")
_TRUE, _FALSE = {"1", "true", "t", "yes", "y", "on"}, {"0", "false", "f", "no", "n", "off"}


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _unfit(v: Any, pg_type: str, why: str = "") -> Unfit:
    return Unfit(f"{_short(v)} does not fit {pg_type}{': ' + why if why else ''}")


def kind_of(pg_type: str) -> tuple[str, int | None, int | None]:
    """(kind, first type modifier, second) of a PostgreSQL type name as format_type prints it."""
    t = " ".join(pg_type.lower().split())
    m = re.search(r"\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", t)
    a = int(m.group(1)) if m else None
    b = int(m.group(2)) if m and m.group(2) is not None else None
    base = re.sub(r"\s*\([^)]*\)", "", t)
    kinds = {"bigint": "int8", "int8": "int8", "integer": "int4", "int": "int4", "int4": "int4",
             "smallint": "int2", "int2": "int2", "double precision": "float8", "float8": "float8",
             "real": "float4", "float4": "float4", "numeric": "numeric", "decimal": "numeric",
             "text": "text", "character varying": "varchar", "varchar": "varchar", "character": "bpchar",
             "char": "bpchar", "bpchar": "bpchar", "bytea": "bytea", "boolean": "bool", "bool": "bool",
             "date": "date", "time": "time", "time without time zone": "time", "timestamp": "timestamp",
             "timestamp without time zone": "timestamp", "timestamptz": "timestamptz",
             "timestamp with time zone": "timestamptz", "jsonb": "jsonb", "json": "json", "uuid": "uuid"}
    return kinds.get(base, "other"), a, b


# --- numbers -----------------------------------------------------------------------------------

def _int(bits: int, pg_type: str) -> Part:
    limit = 2 ** (bits - 1)

    def part(v: Any) -> str:
        if type(v) is float and v.is_integer():
            v = int(v)
        if type(v) is not int or not -limit <= v < limit:
            raise _unfit(v, pg_type)
        return str(v)
    return part


def _float(single: bool, pg_type: str, rounded: bool) -> Part:
    fmt = ">f" if single else ">d"

    def part(v: Any) -> str:
        if type(v) not in (int, float):
            raise _unfit(v, pg_type)
        try:
            packed = struct.pack(fmt, v)
        except (OverflowError, struct.error) as exc:
            raise _unfit(v, pg_type, "out of range") from exc
        back = struct.unpack(fmt, packed)[0]
        if back != v and back == back and not rounded:
            raise _unfit(v, pg_type, "not exact")
        return packed.hex()
    return part


def _decimal(v: Any, pg_type: str) -> Decimal:
    if type(v) is int:
        return Decimal(v)
    if type(v) is float:
        return Decimal(repr(v)) if v - v == 0 else Decimal(v)
    if type(v) is str:
        if _NUMBER.fullmatch(v):
            return Decimal(v.strip())
        if v.strip().lower() in _SPECIAL:
            return Decimal(_SPECIAL[v.strip().lower()])
    raise _unfit(v, pg_type)


def _numeric(precision: int | None, scale: int | None, pg_type: str, rounded: bool) -> Part:
    def part(v: Any) -> str:
        d = _decimal(v, pg_type)
        if precision is not None and not d.is_nan():
            s = scale or 0
            if d.is_infinite():
                raise _unfit(v, pg_type, "infinity")
            q = d.quantize(Decimal(1).scaleb(-s), rounding=decimal.ROUND_HALF_UP, context=_BIG)
            if q != d and not rounded:
                raise _unfit(v, pg_type, "needs rounding")
            if abs(q) >= Decimal(10) ** (precision - s):
                raise _unfit(v, pg_type, "too many digits")
            d = q
        return _numeric_text(d)
    return part


# --- text and bytes ----------------------------------------------------------------------------

def _text(limit: int | None, padded: bool, pg_type: str) -> Part:
    def part(v: Any) -> str:
        t = type(v)
        if t is str:
            s = v
        elif t is int:
            s = str(v)
        elif t is float:
            s = repr(v)
        elif t is bytes:
            try:
                s = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _unfit(v, pg_type, "not UTF-8") from exc
        else:
            raise _unfit(v, pg_type)
        if "\x00" in s or (limit is not None and len(s) > limit):
            raise _unfit(v, pg_type)
        if padded:
            s = s.rstrip(" ")
        return f"{len(s)}:{s}"
    return part


def _bytea(v: Any) -> str:
    if type(v) is bytes:
        return v.hex()
    if type(v) is InvalidText:  # SQLite text that is not UTF-8: its bytes
        return v.raw.hex()
    if type(v) is str:
        return v.encode("utf-8").hex()
    raise _unfit(v, "bytea")


def _bool(v: Any) -> str:
    if type(v) is int and v in (0, 1):
        return "true" if v else "false"
    if type(v) is str:
        s = v.strip().lower()
        if s in _TRUE:
            return "true"
        if s in _FALSE:
            return "false"
    raise _unfit(v, "boolean")


# --- dates and times ---------------------------------------------------------------------------

def _frac(digits: str | None, limit: int, v: Any, pg_type: str) -> int:
    if not digits:
        return 0
    micro = int((digits + "000000")[:6])
    if digits[6:].strip("0") or micro % 10 ** (6 - limit):
        raise _unfit(v, pg_type, "finer than the type keeps")
    return micro


def _instant(v: Any, limit: int, pg_type: str) -> int:
    """Microseconds since 1970-01-01 of the UTC (or wall-clock, without offset) instant a
    SQLite date/time value means."""
    if type(v) in (int, float):
        if v - v != 0:
            raise _unfit(v, pg_type)
        micros = int((Decimal(v) * (1000 if abs(v) > 1e11 else 1_000_000)).to_integral_value(
            rounding=decimal.ROUND_HALF_EVEN))
    else:
        m = _DATETIME.fullmatch(v) if type(v) is str else None
        if m is None:
            raise _unfit(v, pg_type)
        y, mo, d, h, mi, s, frac, off = m.groups()
        year, month, day, hour, minute, second = (int(x or 0) for x in (y, mo, d, h, mi, s))
        if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= month_days(year, month)
                and hour < 24 and minute < 60 and second < 60):
            raise _unfit(v, pg_type, "not a valid date/time")
        micros = (days_from_civil(year, month, day) * DAY + ((hour * 60 + minute) * 60 + second) * 1_000_000
                  + _frac(frac, limit, v, pg_type))
        if off and off not in "Zz":
            minutes = int(off[1:3]) * 60 + int(off[3:].lstrip(":") or 0)
            micros -= (minutes if off[0] == "+" else -minutes) * 60_000_000
    if micros // DAY not in PG_DAYS:
        raise _unfit(v, pg_type, "out of range")
    return micros


def _infinite(v: Any) -> str | None:
    if type(v) is str and v.strip().lower() in ("infinity", "+infinity", "-infinity"):
        return "-infinity" if v.strip().startswith("-") else "infinity"
    return None


def _timestamp(limit: int, zone: bool, pg_type: str) -> Part:
    def part(v: Any) -> str:
        inf = _infinite(v)
        if inf is not None:
            return inf
        days, micros = divmod(_instant(v, limit, pg_type), DAY)
        date, era = day_text(days)
        return f"{date} {clock(micros)}{'+00' if zone else ''}{era}"
    return part


def _date(v: Any) -> str:
    inf = _infinite(v)
    if inf is not None:
        return inf
    days, micros = divmod(_instant(v, 6, "date"), DAY)
    if micros:
        raise _unfit(v, "date", "has a time of day")
    date, era = day_text(days)
    return date + era


def _time(limit: int, pg_type: str) -> Part:
    def part(v: Any) -> str:
        m = (_TIME.fullmatch(v) or _RAILS_TIME.fullmatch(v)) if type(v) is str else None
        if m is None:
            raise _unfit(v, pg_type)
        h, mi, s, frac = m.groups()
        try:
            t = dt.time(int(h), int(mi), int(s or 0), _frac(frac, limit, v, pg_type))
        except ValueError as exc:
            raise _unfit(v, pg_type) from exc
        return clock(((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond)
    return part


# --- JSON, uuid, anything else -----------------------------------------------------------------

def _json(v: Any) -> str:
    if type(v) is bytes:
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _unfit(v, "jsonb", "not UTF-8") from exc
    if type(v) is int or (type(v) is float and v - v == 0):
        v = repr(v)
    if type(v) is not str:
        raise _unfit(v, "jsonb")
    try:
        return hashlib.md5(jsonb_utf8(v), usedforsecurity=False).hexdigest()
    except CanonError as exc:
        raise _unfit(v, "jsonb", str(exc)) from None


def _uuid(v: Any) -> str:
    if type(v) is bytes and len(v) == 16:
        return str(uuid.UUID(bytes=v))
    m = _UUID.fullmatch(v) if type(v) is str else None
    if m is None:
        raise _unfit(v, "uuid")
    return "-".join(m.groups()).lower()


def _other(v: Any) -> str:
    if type(v) is InvalidText:
        raise _unfit(v, "text", "not UTF-8")
    s = v if type(v) is str else str(v)
    return f"{len(s)}:{s}"


# --- keys: a Python value for the range predicates, from the part ------------------------------

_PART = re.compile(r"(\d{4,})-(\d\d)-(\d\d)(?: (\d\d):(\d\d):(\d\d)(?:\.(\d+))?)?(\+00)?( BC)?")
_PG_EPOCH_DAYS = 10_957
"""2000-01-01 in days since 1970-01-01."""


def _part_value(p: str, kind: str) -> Any:
    """A date/timestamp part as the value the connection's codecs write: a date or datetime,
    an infinity, or, outside Python's years 1-9999, the exact :class:`OutOfRange`."""
    if p in ("infinity", "-infinity"):
        return INFINITY if p == "infinity" else MINUS_INFINITY
    m = _PART.fullmatch(p)
    if m is None:
        raise ValueError(f"not a {kind} part: {p!r}")
    y, mo, d, h, mi, s, frac, _zone, bc = m.groups()
    year = 1 - int(y) if bc else int(y)
    days = days_from_civil(year, int(mo), int(d))
    if kind == "date":
        return dt.date(year, int(mo), int(d)) if 1 <= year <= 9999 \
            else OutOfRange("date", days - _PG_EPOCH_DAYS)
    micros = (((int(h) * 60 + int(mi)) * 60 + int(s)) * 1_000_000 + int(((frac or "") + "000000")[:6]))
    if not 1 <= year <= 9999:
        return OutOfRange(kind, (days - _PG_EPOCH_DAYS) * DAY + micros)
    value = dt.datetime(year, int(mo), int(d)) + dt.timedelta(microseconds=micros)
    return value.replace(tzinfo=dt.UTC) if kind == "timestamptz" else value


def _key_value(kind: str) -> Callable[[str], Any]:
    table: dict[str, Callable[[str], Any]] = {
        "int8": int, "int4": int, "int2": int, "numeric": Decimal,
        "float8": lambda p: struct.unpack(">d", bytes.fromhex(p))[0],
        "float4": lambda p: struct.unpack(">f", bytes.fromhex(p))[0],
        "bytea": bytes.fromhex, "bool": lambda p: p == "true", "uuid": uuid.UUID,
        "time": dt.time.fromisoformat,
    }
    if kind in ("date", "timestamp", "timestamptz"):
        return lambda p: _part_value(p, kind)
    return table.get(kind, lambda p: p.split(":", 1)[1])


@dataclass(frozen=True, slots=True)
class Expect:
    """verify's expectation for one target column."""

    name: str
    pg_type: str
    part: Part
    """SQLite value (not NULL) -> canonical part; :class:`Unfit` when it cannot be stored exactly."""
    key: Callable[[str], Any]
    strict: Part | None = None
    """For a column rounded on purpose: the part without rounding (raises when it rounds)."""


def _plain_text(rounded: bool) -> Part:
    return _other


def expect(name: str, pg_type: str, rounded: bool = False) -> Expect:
    kind, a, b = kind_of(pg_type)
    parts: dict[str, Callable[[bool], Part]] = {
        "int8": lambda r: _int(64, pg_type), "int4": lambda r: _int(32, pg_type),
        "int2": lambda r: _int(16, pg_type),
        "float8": lambda r: _float(False, pg_type, r), "float4": lambda r: _float(True, pg_type, r),
        "numeric": lambda r: _numeric(a, b if a is not None else None, pg_type, r),
        "text": lambda r: _text(None, False, pg_type), "varchar": lambda r: _text(a, False, pg_type),
        "bpchar": lambda r: _text(a or 1, True, pg_type), "bytea": lambda r: _bytea,
        "bool": lambda r: _bool, "date": lambda r: _date,
        "time": lambda r: _time(6 if a is None else a, pg_type),
        "timestamp": lambda r: _timestamp(6 if a is None else a, False, pg_type),
        "timestamptz": lambda r: _timestamp(6 if a is None else a, True, pg_type),
        "jsonb": lambda r: _json, "json": lambda r: _json, "uuid": lambda r: _uuid,
    }
    make = parts.get(kind, _plain_text)
    return Expect(name, pg_type, make(rounded), _key_value(kind), make(False) if rounded else None)


__all__ = ["Expect", "Unfit", "expect", "kind_of"]
