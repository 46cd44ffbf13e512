"""Per-value converters into a PostgreSQL target type (see docs/mapping.md): a value that does
not fit raises :class:`~syncd.errors.RowError` (the row goes to the reject table); a value the
type cannot hold exactly is refused unless the operator chose rounding for the column."""

from __future__ import annotations

import decimal
import json
import math
import re
import struct
import uuid
from decimal import Decimal
from typing import Any

import orjson

from syncd.model import InvalidText
from syncd.pg import time_converters
from syncd.pg.families import base_type, family
from syncd.pg.refusals import ROUNDED, Converter
from syncd.pg.refusals import fail as _fail
from syncd.pg.refusals import round_hint as _round_hint

__all__ = ["ROUNDED", "Converter", "converter"]

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
        inner = time_converters.timestamp(pg_type)
    elif fam == "timestamptz":
        inner = time_converters.timestamptz(pg_type)
    elif fam == "time":
        inner = time_converters.time(pg_type)
    else:
        inner = {
            "bytes": _bytes, "bool": _bool, "date": time_converters.date, "json": _json, "uuid": _uuid,
        }.get(fam, _passthrough)

    def convert(v: Any) -> Any:
        if isinstance(v, InvalidText):
            if fam == "bytes":
                return v.raw
            raise _fail(v, pg_type, "PostgreSQL text cannot hold bytes that are not UTF-8; map the "
                        "column to bytea in [target.column_types] to keep them")
        return None if v is None else inner(v)

    return convert
