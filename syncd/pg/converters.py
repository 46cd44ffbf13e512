"""Per-value converters into a PostgreSQL target type (see docs/mapping.md): a value that does
not fit raises :class:`~syncd.errors.RowError` (the row goes to the reject table); a value the
type cannot hold exactly is refused unless the operator chose rounding for the column."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from syncd.errors import RowError
from syncd.model import InvalidText
from syncd.pg.datetime import INFINITY, MINUS_INFINITY, Infinity, OutOfRange
from syncd.pg.families import base_type, family

Converter = Callable[[Any], Any]

ROUNDED = " rounded"
"""Suffix of a ``[target.column_types]`` value that lets syncd round values to the type."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(value: Any, pg_type: str, why: str = "") -> RowError:
    return RowError(f"{_describe(value)} does not fit {pg_type}{': ' + why if why else ''}")


def _round_hint(value: Any, pg_type: str, keep: str) -> RowError:
    return RowError(f"{_describe(value)} does not fit {pg_type} without rounding; map the column to {keep} "
                    f"in [target.column_types] to keep it, or to \"{pg_type}{ROUNDED}\" to round it")


_INT_RANGE = {"smallint": 2**15, "integer": 2**31, "int2": 2**15, "int4": 2**31}


def _int(pg_type: str) -> Converter:
    limit = _INT_RANGE.get(base_type(pg_type), 2**63)

    def convert(v: Any) -> int:
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int):
            raise _fail(v, pg_type)
        if not -limit <= v < limit:
            raise _fail(v, pg_type, "out of range")
        return v

    return convert


def _float(pg_type: str, rounded: bool) -> Converter:
    single = base_type(pg_type) in ("real", "float4")

    def convert(v: Any) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise _fail(v, pg_type)
        f = float(v)
        if single and math.isfinite(f):
            try:
                f = struct.unpack(">f", struct.pack(">f", f))[0]
            except OverflowError as exc:
                raise _fail(v, pg_type, "out of range") from exc
        exact = f == v if isinstance(v, float) else (math.isfinite(f) and int(f) == v)
        if not exact and not rounded:
            raise _round_hint(v, pg_type, "double precision" if single else "numeric")
        return f

    return convert


_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_SPECIAL = {"nan": "NaN", "infinity": "Infinity", "+infinity": "Infinity", "-infinity": "-Infinity",
            "inf": "Infinity", "+inf": "Infinity", "-inf": "-Infinity"}
_DECIMALS = decimal.Context(prec=200_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_TYPMOD = re.compile(r"\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)")


def _numeric(pg_type: str, rounded: bool) -> Converter:
    m = _TYPMOD.search(pg_type)
    precision, scale = (int(m.group(1)), int(m.group(2) or 0)) if m else (None, None)
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def parse(v: Any) -> Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise _fail(v, pg_type)
        if isinstance(v, int):
            return Decimal(v)
        if isinstance(v, float):
            return Decimal(repr(v)) if math.isfinite(v) else Decimal(v)
        if _NUMBER.fullmatch(v):
            return Decimal(v.strip())
        special = _SPECIAL.get(v.strip().lower())
        if special is None:
            raise _fail(v, pg_type, "not a number")
        return Decimal(special)

    def convert(v: Any) -> Decimal:
        d = parse(v)
        if quantum is None or precision is None or scale is None or d.is_nan():
            return d
        if d.is_infinite():
            raise _fail(v, pg_type, "a numeric with a precision cannot hold infinity")
        q = d.quantize(quantum, rounding=decimal.ROUND_HALF_UP, context=_DECIMALS)
        if q != d and not rounded:
            raise _round_hint(v, pg_type, "numeric or double precision")
        if abs(q) >= Decimal(10) ** (precision - scale):
            raise _fail(v, pg_type, f"out of range: at most {precision - scale} digits before the point")
        return q

    return convert


def _text(pg_type: str) -> Converter:
    m = re.search(r"\((\d+)\)", pg_type)
    limit = int(m.group(1)) if m else None

    def convert(v: Any) -> str:
        if type(v) is str and "\x00" not in v and (limit is None or len(v) <= limit):
            return v
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fail(v, pg_type, "a blob that is not UTF-8 text") from exc
        elif isinstance(v, float):
            v = repr(v)
        elif isinstance(v, int):
            v = str(v)
        if not isinstance(v, str):
            raise _fail(v, pg_type)
        if "\x00" in v:
            raise _fail(v, pg_type, "PostgreSQL text cannot contain NUL characters; map the column "
                        "to bytea in [target.column_types] to keep them")
        if limit is not None and len(v) > limit:
            raise _fail(v, pg_type, f"{len(v)} characters, longer than {limit}")
        return v

    return convert


def _bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    raise _fail(v, "bytea")


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _fail(v, "boolean")


# --- dates and times ---------------------------------------------------------------------

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


_PLAIN_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?")
"""The shape apps write most (``YYYY-MM-DD HH:MM:SS[.ffffff]``, ASCII digits, no offset), which
:meth:`datetime.fromisoformat` reads as :func:`_parse_micros` does: the wall-clock time, the
fraction padded to microseconds."""


def _plain(v: Any, zone: bool) -> dt.datetime | None:
    """*v* read by the fast path (as UTC if *zone*), or None for the full rules (another shape,
    or a value ``fromisoformat`` refuses, whose message :func:`_parse_micros` gives)."""
    if isinstance(v, str) and _PLAIN_DATETIME.fullmatch(v):
        try:
            return dt.datetime.fromisoformat(v + "+00:00" if zone else v)
        except ValueError:
            return None
    return None


def _timestamp(pg_type: str, zone: bool = False) -> Converter:
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


def _timestamptz(pg_type: str) -> Converter:
    return _timestamp(pg_type, zone=True)


def _date(v: Any) -> dt.date | Infinity | OutOfRange:
    inf = _infinity(v)
    if inf is not None:
        return inf
    days, rest = divmod(_parse_micros(v, "date"), _DAY)
    if rest:
        raise _fail(v, "date", "has a time of day, which a date would drop; map the column to "
                    "timestamp in [target.column_types]")
    value = _instant(days * _DAY, "date")
    return value.date() if isinstance(value, dt.datetime) else OutOfRange("date", days)


def _time(pg_type: str) -> Converter:
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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_no_constant)
"""One decoder for every value (``json.loads`` with an option builds a new one per call)."""


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in value.items())
    if isinstance(value, list):
        return any(_has_nul(x) for x in value)
    return False


def _json(v: Any) -> str:
    if isinstance(v, bytes):
        v = _text("jsonb")(v)
    if isinstance(v, bool) or v is None:
        raise _fail(v, "jsonb")
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise _fail(v, "jsonb", "JSON has no infinity")
        return json.dumps(v)
    if not isinstance(v, str):
        raise _fail(v, "jsonb")
    try:
        parsed = orjson.loads(v)  # strict RFC 8259, three times as fast; what it refuses (NaN,
    except orjson.JSONDecodeError:  # a lone surrogate, 1e400), the stdlib parser judges
        try:
            parsed = _JSON.decode(v)
        except ValueError as exc:
            raise _fail(v, "jsonb", f"invalid JSON ({exc.args[0].split(':')[0]})") from exc
    if "\\u0000" in v and _has_nul(parsed):
        raise _fail(v, "jsonb", "jsonb cannot hold \\u0000")
    return v


_UUID = re.compile(r"\s*\{?[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?\s*")


def _uuid(v: Any) -> uuid.UUID:
    if isinstance(v, bytes) and len(v) == 16:
        return uuid.UUID(bytes=v)
    if isinstance(v, str):
        if not _UUID.fullmatch(v):
            raise _fail(v, "uuid", "not a valid UUID")
        return uuid.UUID(v.strip())
    raise _fail(v, "uuid")


def _passthrough(v: Any) -> Any:
    return v


def converter(pg_type: str, *, rounded: bool = False) -> Converter:
    """The converter for values going into a column of *pg_type* (NULL passes through).

    *rounded*: the operator chose rounding for this column (``"numeric(10,2) rounded"`` in
    ``[target.column_types]``); otherwise a value the type cannot hold exactly is refused.
    """
    fam = family(pg_type)
    inner: Converter
    if fam == "int":
        inner = _int(pg_type)
    elif fam == "text":
        inner = _text(pg_type)
    elif fam == "float":
        inner = _float(pg_type, rounded)
    elif fam == "numeric":
        inner = _numeric(pg_type, rounded)
    elif fam == "timestamp":
        inner = _timestamp(pg_type)
    elif fam == "timestamptz":
        inner = _timestamptz(pg_type)
    elif fam == "time":
        inner = _time(pg_type)
    else:
        inner = {
            "bytes": _bytes, "bool": _bool, "date": _date, "json": _json, "uuid": _uuid,
        }.get(fam, _passthrough)

    def convert(v: Any) -> Any:
        if isinstance(v, InvalidText):
            if fam == "bytes":
                return v.raw
            raise _fail(v, pg_type, "PostgreSQL text cannot hold bytes that are not UTF-8; map the "
                        "column to bytea in [target.column_types] to keep them")
        return None if v is None else inner(v)

    return convert
