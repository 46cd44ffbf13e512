"""SQLite declared types -> PostgreSQL types, and the per-value converters.

SQLite stores any value in any column; PostgreSQL does not. The *target* type
decides how a value is converted, and a value that does not fit raises
:class:`~syncd.errors.RowError` naming the column (the row goes to the reject
table). Decisions (see docs/mapping.md):

- every SQLite integer type becomes ``bigint`` (SQLite integers are 64-bit);
- ``DATETIME`` / ``TIMESTAMP`` become ``timestamp``; text in any ISO-8601 form is
  accepted, an offset is converted to UTC; a number is Unix time in seconds, or
  in milliseconds when its magnitude is above 1e11 (year 5138 in seconds);
- ``BOOLEAN`` accepts 0/1 and true/false/t/f/yes/no text;
- a column with no declared type becomes ``text`` (numbers are written as text);
- ``VARCHAR(n)`` keeps its length, so longer values are rejected, not cut.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from syncd.errors import RowError

Converter = Callable[[Any], Any]

_PAREN = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(?:\(\s*([^)]*)\))?\s*$")

_EXACT: dict[str, str] = {
    "BOOLEAN": "boolean",
    "BOOL": "boolean",
    "DATETIME": "timestamp",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "DATE": "date",
    "TIME": "time",
    "JSON": "jsonb",
    "JSONB": "jsonb",
    "UUID": "uuid",
    "BLOB": "bytea",
    "BYTEA": "bytea",
    "REAL": "double precision",
    "FLOAT": "double precision",
    "DOUBLE": "double precision",
    "DOUBLE PRECISION": "double precision",
    "NUMERIC": "numeric",
    "DECIMAL": "numeric",
    "TEXT": "text",
    "CLOB": "text",
    "": "text",
}
_VARCHAR = {"VARCHAR", "CHARACTER VARYING", "VARYING CHARACTER", "NVARCHAR", "NATIVE CHARACTER",
            "CHAR", "CHARACTER", "NCHAR"}


def pg_type_for(declared: str) -> str:
    """The PostgreSQL type syncd creates for a SQLite column declared as *declared*."""
    decl = " ".join(declared.upper().split())
    if decl in _EXACT:
        return _EXACT[decl]
    m = _PAREN.match(decl)
    if m:
        base, args = m.group(1).strip(), (m.group(2) or "").replace(" ", "")
        if base in _VARCHAR and args.isdigit():
            return f"varchar({int(args)})"
        if base in ("NUMERIC", "DECIMAL") and re.fullmatch(r"\d+(,\d+)?", args):
            return f"numeric({args})"
        if base in _EXACT and base not in ("TEXT", "CLOB", ""):
            return _EXACT[base]
    # SQLite's own affinity rules (sqlite.org/datatype3.html, 3.1), in its order.
    if "INT" in decl:
        return "bigint"
    if any(s in decl for s in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in decl:
        return "bytea"
    if any(s in decl for s in ("REAL", "FLOA", "DOUB")):
        return "double precision"
    return "numeric"


# --- families: what a target type can hold -----------------------------------------------

_FAMILY: dict[str, str] = {
    "smallint": "int", "integer": "int", "bigint": "int", "int2": "int", "int4": "int",
    "int8": "int", "double precision": "float", "real": "float", "float4": "float",
    "float8": "float", "numeric": "numeric", "text": "text", "character varying": "text",
    "varchar": "text", "character": "text", "char": "text", "bpchar": "text", "bytea": "bytes",
    "boolean": "bool", "timestamp": "timestamp", "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz", "timestamp with time zone": "timestamptz", "date": "date",
    "time": "time", "time without time zone": "time", "jsonb": "json", "json": "json",
    "uuid": "uuid",
}

# source family (from the declared type) -> target families that can hold its values
_CAN_HOLD: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "numeric", "float", "text", "bool", "timestamp", "timestamptz"}),
    "float": frozenset({"float", "numeric", "text"}),
    "numeric": frozenset({"numeric", "float", "int", "text"}),
    "text": frozenset({"text", "json", "uuid", "timestamp", "timestamptz", "date", "time",
                       "numeric", "other"}),
    "bytes": frozenset({"bytes", "uuid"}),
    "bool": frozenset({"bool", "int", "text"}),
    "timestamp": frozenset({"timestamp", "timestamptz", "date", "text"}),
    "timestamptz": frozenset({"timestamp", "timestamptz", "text"}),
    "date": frozenset({"date", "timestamp", "timestamptz", "text"}),
    "time": frozenset({"time", "text"}),
    "json": frozenset({"json", "text"}),
    "uuid": frozenset({"uuid", "text"}),
}


def base_type(pg_type: str) -> str:
    """``character varying(255)`` -> ``character varying``; ``numeric(10,2)`` -> ``numeric``."""
    return pg_type.split("(", 1)[0].strip().lower()


def family(pg_type: str) -> str:
    return _FAMILY.get(base_type(pg_type), "other")


def can_hold(source_pg_type: str, target_pg_type: str) -> bool:
    """Whether a target column of *target_pg_type* can hold what the source maps to."""
    src, dst = family(source_pg_type), family(target_pg_type)
    if src == "other" or dst == src:
        return True
    return dst in _CAN_HOLD.get(src, frozenset())


# --- converters --------------------------------------------------------------------------

def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(value: Any, pg_type: str, why: str = "") -> RowError:
    return RowError(f"value {_describe(value)} does not fit {pg_type}{': ' + why if why else ''}")


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


def _float(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise _fail(v, "double precision")


def _numeric(v: Any) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise _fail(v, "numeric")
    try:
        return Decimal(v) if not isinstance(v, float) else Decimal(repr(v))
    except InvalidOperation as exc:
        raise _fail(v, "numeric") from exc


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
            raise _fail(v, pg_type, "PostgreSQL text cannot contain NUL characters")
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


def _epoch(v: float) -> dt.datetime:
    seconds = v / 1000.0 if abs(v) > 1e11 else float(v)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def _parse_datetime(v: Any, pg_type: str) -> dt.datetime:
    if isinstance(v, int | float) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise _fail(v, pg_type)
        try:
            return _epoch(v)
        except OverflowError as exc:
            raise _fail(v, pg_type, "out of range") from exc
    if isinstance(v, str):
        s = v.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            return dt.datetime.fromisoformat(s)
        except ValueError as exc:
            raise _fail(v, pg_type, "not a valid date/time") from exc
    raise _fail(v, pg_type)


def _timestamp(v: Any) -> dt.datetime:
    d = _parse_datetime(v, "timestamp")
    return d.astimezone(dt.UTC).replace(tzinfo=None) if d.tzinfo else d


def _timestamptz(v: Any) -> dt.datetime:
    d = _parse_datetime(v, "timestamptz")
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def _date(v: Any) -> dt.date:
    if isinstance(v, str) and len(v.strip()) == 10:
        try:
            return dt.date.fromisoformat(v.strip())
        except ValueError as exc:
            raise _fail(v, "date", "not a valid date") from exc
    d = _parse_datetime(v, "date")
    return d.date()


def _time(v: Any) -> dt.time:
    if isinstance(v, str):
        try:
            return dt.time.fromisoformat(v.strip())
        except ValueError as exc:
            raise _fail(v, "time", "not a valid time") from exc
    raise _fail(v, "time")


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
        json.loads(v)
    except ValueError as exc:
        raise _fail(v, "jsonb", f"invalid JSON ({exc.args[0].split(':')[0]})") from exc
    if "\\u0000" in v:
        raise _fail(v, "jsonb", "jsonb cannot hold \\u0000")
    return v


def _uuid(v: Any) -> uuid.UUID:
    try:
        if isinstance(v, bytes) and len(v) == 16:
            return uuid.UUID(bytes=v)
        if isinstance(v, str):
            return uuid.UUID(v)
    except ValueError as exc:
        raise _fail(v, "uuid", "not a valid UUID") from exc
    raise _fail(v, "uuid")


def _passthrough(v: Any) -> Any:
    return v


def converter(pg_type: str) -> Converter:
    """The converter for values going into a column of *pg_type* (NULL passes through)."""
    fam = family(pg_type)
    inner: Converter
    if fam == "int":
        inner = _int(pg_type)
    elif fam == "text":
        inner = _text(pg_type)
    else:
        inner = {
            "float": _float, "numeric": _numeric, "bytes": _bytes, "bool": _bool,
            "timestamp": _timestamp, "timestamptz": _timestamptz, "date": _date,
            "time": _time, "json": _json, "uuid": _uuid,
        }.get(fam, _passthrough)

    def convert(v: Any) -> Any:
        return None if v is None else inner(v)

    return convert


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """One source column and the target column it is written to."""

    name: str
    declared: str
    pg_type: str
    nullable: bool = True

    @property
    def convert(self) -> Converter:
        return converter(self.pg_type)
