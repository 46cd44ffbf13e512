"""The canonical encoding ``syncd verify`` hashes on both sides.

Each column of a row becomes one canonical text ("part"), computed in SQL from the
PostgreSQL value, and in Python from the SQLite value by :mod:`syncd.verify.expect`
(tables; verify's own table) or from a converted value by :class:`ColumnCanon` (Chroma
items), such that the two agree exactly when the values are equal.
A row's text is its parts joined with ``|``; its hash is the first 64 bits of
the MD5 of that text; a range of rows is summarised by its count and the XOR of
its row hashes (``bit_xor`` in PostgreSQL).

Parts, per target type family (NULL is ``N`` everywhere; no other part is):

=============  =========================================  ==================================
family         PostgreSQL                                 Python
=============  =========================================  ==================================
int            ``x::text``                                ``str(v)``
float          ``encode(float8send(x), 'hex')``           IEEE-754 bytes, big-endian, hex
               (``float4send`` for ``real``)              (exact: no decimal formatting)
numeric        ``trim_scale(x)::text``                    rounded to the column's scale,
                                                          trailing zeros dropped
bool           ``x::text``                                ``true`` / ``false``
text           ``length(x) || ':' || x``                  ``f"{len(v)}:{v}"``
bytes          ``encode(x, 'hex')``                       ``v.hex()``
timestamp(tz)  ``x::text`` (DateStyle ISO, TimeZone UTC)  the same layout, fraction trimmed
date, time     ``x::text``                                ISO layout
json           ``md5(x::jsonb::text)``                    MD5 of the text jsonb would print
uuid           ``x::text``                                ``str(v)``
other          ``length(x::text) || ':' || x::text``      ``f"{len(str(v))}:{v}"``
=============  =========================================  ==================================

Free text is length-prefixed and JSON is hashed, so a ``|`` inside a value can
never make two different rows encode alike. The session settings the SQL side
relies on are in :data:`SESSION_SETTINGS`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from syncd.pg.datetime import Infinity
from syncd.pg.families import base_type, family
from syncd.sql import qi
from syncd.stores.postgres.types import ColumnMap
from syncd.verify.jsonb import CanonError, jsonb_text, jsonb_utf8

NULL = "N"
SEP = "|"
MASK64 = (1 << 64) - 1

SESSION_SETTINGS = {"DateStyle": "ISO, YMD", "TimeZone": "UTC", "IntervalStyle": "postgres"}
"""What the SQL canonical forms assume about the verifying connection."""

_DECIMALS = decimal.Context(prec=200_000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


PyCanon = Callable[[Any], str]


# --- Python side ------------------------------------------------------------------------------

def _fraction(micro: int) -> str:
    return ("." + f"{micro:06d}").rstrip("0") if micro else ""


def _time_text(t: dt.time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}{_fraction(t.microsecond)}"


def _py_timestamptz(v: dt.datetime) -> str:
    text = _py_timestamp(v)
    return text if text.endswith("infinity") else text + "+00"


def _numeric_text(d: Decimal) -> str:
    """``trim_scale(x)::text`` of the numeric PostgreSQL stores for *d*."""
    if d.is_nan():
        return "NaN"
    if d.is_infinite():
        return "-Infinity" if d < 0 else "Infinity"
    if d.is_zero():
        return "0"
    text = format(d.normalize(_DECIMALS), "f")
    return text


def _py_numeric(scale: int | None) -> PyCanon:
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def canon(v: Any) -> str:
        d = v if isinstance(v, Decimal) else Decimal(v)
        if quantum is not None and d.is_finite():
            d = d.quantize(quantum, rounding=decimal.ROUND_HALF_UP, context=_DECIMALS)
        return _numeric_text(d)

    return canon




def _py_json(v: Any) -> str:
    return _md5_hex(jsonb_text(v))


def _py_float(fmt: str) -> PyCanon:
    def canon(v: Any) -> str:
        try:
            return struct.pack(fmt, float(v)).hex()
        except (OverflowError, struct.error) as exc:
            raise CanonError(f"{v!r} does not fit {fmt}") from exc
    return canon


def _py_text(strip: bool) -> PyCanon:
    def canon(v: Any) -> str:
        s = str(v)
        if strip:
            s = s.rstrip(" ")
        return f"{len(s)}:{s}"
    return canon


def _py_bool(v: Any) -> str:
    return "true" if v else "false"


def _py_bytes(v: Any) -> str:
    return bytes(v).hex()


def _py_date(v: Any) -> str:
    if isinstance(v, Infinity):
        return str(v)
    if isinstance(v, dt.datetime):
        v = v.date()
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}"


def _py_time(v: Any) -> str:
    return _time_text(v)


def _py_timestamp(v: Any) -> str:
    if isinstance(v, Infinity):
        return str(v)
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    text: str = v.isoformat(sep=" ")  # years below 1000 are zero-padded, as PostgreSQL prints them
    return text.rstrip("0") if v.microsecond else text


def _py_uuid(v: Any) -> str:
    return str(v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)))


def _md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


# --- SQL side ---------------------------------------------------------------------------------

_SCALE = re.compile(r"\(\s*\d+\s*,\s*(-?\d+)\s*\)")
_BLANK_PADDED = {"character", "char", "bpchar", "nchar"}


def _text_sql(expr: str) -> str:
    return f"length({expr})::text || ':' || {expr}"


@dataclass(frozen=True, slots=True)
class ColumnCanon:
    """How one target column is encoded, on both sides."""

    name: str
    pg_type: str
    sql: str
    """Canonical part of the column in SQL (NULL stays NULL; the row expression adds ``N``)."""
    py: PyCanon

    def part(self, value: Any) -> str:
        return NULL if value is None else self.py(value)


def column_canon(col: ColumnMap, ref: str = "") -> ColumnCanon:
    """The encoding of *col* (a target column: its ``pg_type`` is the PostgreSQL type)."""
    x = (ref + "." if ref else "") + qi(col.name)
    fam, base = family(col.pg_type), base_type(col.pg_type)
    sql: str
    py: PyCanon
    if fam == "int":
        sql, py = f"{x}::text", str
    elif fam == "float":
        single = base in ("real", "float4")
        sql = f"encode({'float4send' if single else 'float8send'}({x}), 'hex')"
        py = _py_float(">f" if single else ">d")
    elif fam == "numeric":
        m = _SCALE.search(col.pg_type)
        sql, py = f"trim_scale({x})::text", _py_numeric(int(m.group(1)) if m else None)
    elif fam == "bool":
        sql, py = f"{x}::text", _py_bool
    elif fam == "text":
        padded = base in _BLANK_PADDED
        sql, py = _text_sql(f"{x}::text" if padded else x), _py_text(padded)
    elif fam == "bytes":
        sql, py = f"encode({x}, 'hex')", _py_bytes
    elif fam == "timestamp":
        sql, py = f"{x}::text", _py_timestamp
    elif fam == "timestamptz":
        sql, py = f"{x}::text", _py_timestamptz
    elif fam == "date":
        sql, py = f"{x}::text", _py_date
    elif fam == "time":
        sql, py = f"{x}::text", _py_time
    elif fam == "json":
        sql, py = f"md5({x}::jsonb::text)", _py_json
    elif fam == "uuid":
        sql, py = f"{x}::text", _py_uuid
    else:
        sql, py = _text_sql(f"{x}::text"), _py_text(False)
    return ColumnCanon(col.name, col.pg_type, sql, py)


def row_hash_int(text: str) -> int:
    """First 64 bits of the MD5 of a row's text, unsigned (the SQL side's ``bit(64)``, masked)."""
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


def part_hash(part: str) -> str:
    """Short hash of one part: what the leaf queries return per column."""
    return _md5_hex(part)[:16]


@dataclass(frozen=True, slots=True)
class RowCanon:
    """The encoding of one table's rows: SQL expressions and the Python equivalents."""

    columns: tuple[ColumnCanon, ...]
    key_index: tuple[int, ...]
    fns: tuple[PyCanon, ...] = ()

    @classmethod
    def for_columns(cls, columns: Sequence[ColumnMap], key: Sequence[str]) -> RowCanon:
        names = [c.name for c in columns]
        canons = tuple(column_canon(c) for c in columns)
        return cls(canons, tuple(names.index(k) for k in key), tuple(c.py for c in canons))

    # SQL
    def part_sql(self, i: int) -> str:
        return f"coalesce({self.columns[i].sql}, '{NULL}')"

    def row_text_sql(self) -> str:
        return f" || '{SEP}' || ".join(self.part_sql(i) for i in range(len(self.columns)))

    def hash_sql(self) -> str:
        """Signed 64-bit hash of the row (mask with :data:`MASK64` after reading)."""
        return f"('x' || left(md5({self.row_text_sql()}), 16))::bit(64)::bigint"

    def part_hash_sqls(self) -> list[str]:
        return [f"left(md5({self.part_sql(i)}), 16)" for i in range(len(self.columns))]

    def key_part_sqls(self) -> list[str]:
        return [self.part_sql(i) for i in self.key_index]

    # Python
    def parts(self, converted: Sequence[Any]) -> list[str]:
        """Canonical parts of a converted row; :class:`CanonError` if PostgreSQL could not hold it."""
        return [NULL if v is None else f(v) for f, v in zip(self.fns, converted, strict=True)]

    def key_of(self, parts: Sequence[str]) -> tuple[str, ...]:
        return tuple(parts[i] for i in self.key_index)

    @staticmethod
    def row_hash(parts: Sequence[str]) -> int:
        return row_hash_int(SEP.join(parts))


__all__ = ["MASK64", "NULL", "SESSION_SETTINGS", "CanonError", "ColumnCanon", "RowCanon",
           "column_canon", "jsonb_text", "jsonb_utf8", "part_hash", "row_hash_int"]
