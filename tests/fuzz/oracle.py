"""The oracle: for one SQLite value and the PostgreSQL column type, what ``value::text`` in
PostgreSQL must be, or that the row must be a reject. It shares nothing with syncd.

A SQLite value is a :class:`Cell`: its storage class (``typeof()``) and its value, text as
raw bytes (text need not be valid UTF-8). The verdict is an :class:`Expect` of one of three
levels:

- ``must``: the value fits; PostgreSQL's text must satisfy ``ok`` (a reject is allowed,
  and reported as a needless one);
- ``may``: the value can be written in a way that is documented or harmless (a spelling
  of a boolean, ``24:00:00``, a number in a JSON column); stored, it must satisfy ``ok``;
- ``reject``: the value does not fit the type without changing it; the row must be in
  ``syncd.rejects``.

The table, by target type (PostgreSQL session with ``DateStyle=ISO, YMD``,
``TimeZone=UTC``; NULL is NULL everywhere; a blob is a reject unless said otherwise):

- ``bigint``: integer must be itself; an integral real must be the integer (``-0.0`` is
  ``0``), other reals reject; text may be an integer literal, else reject.
- ``double precision``: a real must keep its 64 bits (``-0``, subnormals, ±Infinity); an
  integer must when a double holds it exactly, else reject; text may be a float literal.
- ``numeric``: an integer must be itself; a real must be a decimal reading back as the same
  double (``-0.0`` as ``0``; ±Infinity may); text may be a numeric literal.
  ``numeric(p,s)``: only when the integer, or the real's shortest decimal, has at most
  ``s`` decimals and ``p - s`` digits before the point; otherwise reject (no rounding).
- ``text``, ``varchar(n)``: text must be itself (reject with NUL, invalid UTF-8, or more
  than n characters); an integer its decimal text; a real any text reading back as the
  same double; a blob may be its UTF-8 text. Text that is not UTF-8 is a reject in every
  type but ``bytea``.
- ``bytea``: a blob or text must be its bytes (text that is not UTF-8 too: the operator maps
  such a column to bytea to keep them); a number may be its ASCII text.
- ``boolean``: integer 0/1 must; other integers reject; reals 0.0/1.0 and the texts
  true/false/t/f/yes/no/on/off/y/n/1/0 may.
- ``timestamp``, ``timestamptz``: ISO-8601 text must (``T`` or space, at most 6 fraction
  digits, a zone converted to UTC; years 1 and 9999 exactly, BC and year 10000 after a
  zone too); ``:60`` and ``24:00`` may (PostgreSQL rolls them over); more fraction digits,
  invalid dates and other text reject. A number is Unix time as syncd documents it
  (seconds; milliseconds when its magnitude is above 1e11): must when it is a whole number
  of microseconds, may (±1 µs) when not; ±inf reject.
- ``date``: ``YYYY-MM-DD`` must; a date-time or a Unix time may only when it is midnight
  UTC, else reject: the time would be lost.
- ``time``: ``HH:MM[:SS[.f]]`` must, and Rails' ``2000-01-01 HH:MM:SS.f``; a zone may
  (converted to UTC); another date, or a number, reject.
- ``json``, ``jsonb``: text must be the same JSON value (numbers compared exactly, the
  last duplicate key winning, ``null`` is JSON null, not SQL NULL); invalid JSON, NaN,
  ``\\u0000`` and lone surrogates reject; numbers may be JSON numbers (not ±inf).
- ``uuid``: canonical text in any case must be its lower-case form; braces or no hyphens
  may; a 16-byte blob must be that UUID; else reject.
"""

from __future__ import annotations

import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Ok = Callable[[str | None], bool]
INT64 = 2**63
_NUMLIT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTLIT = re.compile(r"[+-]?\d+")
_BOOLS = {"true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
          "false": False, "f": False, "no": False, "n": False, "off": False, "0": False}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_LOOSE = re.compile(r"\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                         r"[0-9a-fA-F]{12}\}?")


@dataclass(frozen=True)
class Cell:
    """A SQLite value: ``typeof()`` and the value (text as raw bytes)."""

    cls: str  # null | integer | real | text | blob
    value: Any

    def show(self) -> str:
        if self.cls == "text":
            try:
                return f"text {self.value.decode()!r}"[:120]
            except UnicodeDecodeError:
                return f"text (invalid UTF-8) X'{self.value.hex()}'"
        if self.cls == "blob":
            return f"blob X'{self.value.hex()[:80]}'"
        return f"{self.cls} {self.value!r}"


@dataclass(frozen=True)
class Expect:
    level: str          # must | may | reject
    ok: Ok
    want: str | None    # PostgreSQL's text when there is exactly one, else None
    note: str           # the shape of the value, for grouping ("year-1", "decimal-scale"…)


def exactly(text: str | None, note: str, level: str = "must") -> Expect:
    return Expect(level, lambda t: t == text, text, note)


def reject(note: str) -> Expect:
    return Expect("reject", lambda t: False, None, note)


def _bits(x: float) -> bytes:
    return struct.pack(">d", x)


def as_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


def same_double(r: float) -> Ok:
    def ok(t: str | None) -> bool:
        f = as_float(t)
        return f is not None and _bits(f) == _bits(r)
    return ok


def same_decimal(d: Decimal) -> Ok:
    def ok(t: str | None) -> bool:
        try:
            return t is not None and Decimal(t) == d
        except InvalidOperation:
            return False
    return ok


def real_note(r: float) -> str:
    if math.isinf(r):
        return "inf"
    if r == 0 and math.copysign(1, r) < 0:
        return "neg-zero"
    if r != 0 and abs(r) < 2.2250738585072014e-308:
        return "subnormal"
    return "integral" if r == int(r) else "fraction"


def text_of(cell: Cell) -> str | None:
    """The cell's text, or None when its bytes are not UTF-8."""
    try:
        return str(cell.value.decode("utf-8"))
    except UnicodeDecodeError:
        return None


# --- per target family ----------------------------------------------------------------------

def to_int(cell: Cell, bits: int = 64) -> Expect:
    lim = 2 ** (bits - 1)
    if cell.cls == "integer":
        v = int(cell.value)
        return exactly(str(v), "int") if -lim <= v < lim else reject("int-range")
    if cell.cls == "real":
        r = float(cell.value)
        if math.isfinite(r) and r == int(r) and -lim <= int(r) < lim:
            return exactly(str(int(r)), real_note(r))
        return reject(real_note(r))
    if cell.cls == "text":
        s = text_of(cell)
        if s is not None and _INTLIT.fullmatch(s.strip()) and -lim <= int(s) < lim:
            return exactly(str(int(s)), "int-text", "may")
        return reject("text")
    return reject("blob")


def to_double(cell: Cell) -> Expect:
    if cell.cls == "integer":
        v = int(cell.value)
        if float(v) == v:
            return Expect("must", same_double(float(v)), None, "int")
        return reject("int-not-exact-double")
    if cell.cls == "real":
        r = float(cell.value)
        return Expect("must", same_double(r), None, real_note(r))
    if cell.cls == "text":
        s = text_of(cell)
        f = as_float(s) if s is not None else None
        if f is not None and not math.isnan(f):
            return Expect("may", same_double(f), None, "float-text")
        return reject("text")
    return reject("blob")


def digits(d: Decimal) -> tuple[int, int]:
    """(digits before the point, digits after it) of *d* written without trailing zeros."""
    _, ds, exp = d.as_tuple()
    assert isinstance(exp, int)
    ds_list = list(ds)
    while len(ds_list) > 1 and ds_list[-1] == 0:
        ds_list.pop()
        exp += 1
    if ds_list == [0]:
        return 0, 0
    return max(0, len(ds_list) + exp), max(0, -exp)


def _fits(d: Decimal, p: int | None, s: int | None) -> bool:
    if p is None or s is None:
        return True
    whole, frac = digits(d)
    return frac <= s and whole <= p - s


def _numeric_note(d: Decimal, p: int | None, s: int | None) -> str:
    return "decimal-scale" if digits(d)[0] <= (p or 0) - (s or 0) else "decimal-precision"


_NUMERIC_WORDS = {"nan": "NaN", "infinity": "Infinity", "+infinity": "Infinity", "-infinity": "-Infinity",
                  "inf": "Infinity", "+inf": "Infinity", "-inf": "-Infinity"}


def to_numeric(cell: Cell, p: int | None, s: int | None) -> Expect:
    if cell.cls == "integer":
        d = Decimal(int(cell.value))
        return Expect("must", same_decimal(d), None, "int") if _fits(d, p, s) else reject("decimal-precision")
    if cell.cls == "real":
        r = float(cell.value)
        if math.isinf(r):
            if p is not None:
                return reject("inf")
            return exactly("Infinity" if r > 0 else "-Infinity", "inf", "may")
        d = Decimal(repr(r))
        if not _fits(d, p, s):
            return reject(_numeric_note(d, p, s))
        if p is not None:
            return Expect("must", same_decimal(d), None, real_note(r))
        return Expect("must", lambda t: (f := as_float(t)) is not None and f == r, None, real_note(r))
    if cell.cls == "text":
        txt = text_of(cell)
        special = _NUMERIC_WORDS.get(txt.strip().lower()) if txt is not None else None
        if special is not None:  # PostgreSQL's own numeric input reads these words; a
            # numeric(p,s) holds NaN but no infinity
            return reject("numeric-special-text") if p is not None and special != "NaN" else \
                exactly(special, "numeric-special-text", "may")
        if txt is not None and _NUMLIT.fullmatch(txt.strip()):
            d = Decimal(txt.strip())
            return Expect("may", same_decimal(d), None, "numeric-text") if _fits(d, p, s) \
                else reject("numeric-text")
        return reject("text")
    return reject("blob")


def to_text(cell: Cell, n: int | None) -> Expect:
    def sized(text: str, note: str, level: str = "must") -> Expect:
        if n is not None and len(text) > n:
            return reject("too-long")
        return exactly(text, note, level)
    if cell.cls == "integer":
        return sized(str(cell.value), "int")
    if cell.cls == "real":
        r = float(cell.value)
        level = "must" if n is None else "may"
        return Expect(level, same_double(r), None, real_note(r))
    s = text_of(cell)
    if s is None:
        return reject("invalid-utf8" if cell.cls == "text" else "blob")
    if "\x00" in s:
        return reject("nul")
    return sized(s, "text" if cell.cls == "text" else "blob", "must" if cell.cls == "text" else "may")


def to_bytea(cell: Cell) -> Expect:
    if cell.cls in ("blob", "text"):
        note = "invalid-utf8" if cell.cls == "text" and text_of(cell) is None else cell.cls
        return exactly("\\x" + bytes(cell.value).hex(), note)
    if cell.cls == "integer":
        return exactly("\\x" + str(cell.value).encode().hex(), "int", "may")
    r = float(cell.value)

    def ok(t: str | None) -> bool:
        try:
            return t is not None and _bits(float(bytes.fromhex(t[2:]).decode())) == _bits(r)
        except ValueError:
            return False
    return Expect("may", ok, None, real_note(r))


def to_bool(cell: Cell) -> Expect:
    if cell.cls == "integer":
        return exactly("true" if cell.value else "false", "int") if cell.value in (0, 1) else reject("int")
    if cell.cls == "real":
        r = float(cell.value)
        return exactly("true" if r else "false", "real", "may") if r in (0.0, 1.0) else reject(real_note(r))
    if cell.cls == "text":
        s = (text_of(cell) or "\x00").strip().lower()
        if s in _BOOLS:
            return exactly("true" if _BOOLS[s] else "false", "bool-text", "may")
        return reject("text")
    return reject("blob")


def to_uuid(cell: Cell) -> Expect:
    if cell.cls == "blob":
        b = bytes(cell.value)
        return exactly(str(uuid.UUID(bytes=b)), "uuid-bytes") if len(b) == 16 else reject("blob")
    if cell.cls != "text":
        return reject(cell.cls)
    s = text_of(cell) or ""
    if _UUID.fullmatch(s):
        return exactly(s.lower(), "uuid" if s == s.lower() else "uuid-upper")
    if _UUID_LOOSE.fullmatch(s) and s.count("{") == s.count("}"):
        return exactly(str(uuid.UUID(s)), "uuid-loose", "may")
    return reject("text")


def dispatch(cell: Cell, pg_type: str) -> Expect:
    """The verdict for *cell* in a PostgreSQL column of type *pg_type* (``format_type``)."""
    from tests.fuzz.oracle_time import to_date, to_json, to_time, to_timestamp
    if cell.cls == "null":
        return exactly(None, "null")
    base, args = _split(pg_type)
    if cell.cls == "text" and text_of(cell) is None and base != "bytea":
        return reject("invalid-utf8")
    if base == "bigint":
        return to_int(cell)
    if base in ("integer", "smallint"):
        return to_int(cell, 32 if base == "integer" else 16)
    if base == "double precision":
        return to_double(cell)
    if base == "numeric":
        return to_numeric(cell, *(args if len(args) == 2 else (args[0], 0) if args else (None, None)))
    if base in ("text", "character varying"):
        return to_text(cell, args[0] if args else None)
    if base == "bytea":
        return to_bytea(cell)
    if base == "boolean":
        return to_bool(cell)
    if base in ("timestamp without time zone", "timestamp with time zone"):
        return to_timestamp(cell, tz=base.endswith("with time zone"))
    if base == "date":
        return to_date(cell)
    if base == "time without time zone":
        return to_time(cell)
    if base in ("json", "jsonb"):
        return to_json(cell)
    if base == "uuid":
        return to_uuid(cell)
    return Expect("may", lambda t: True, None, f"unknown-type {pg_type}")


def _split(pg_type: str) -> tuple[str, tuple[int, ...]]:
    m = re.fullmatch(r"(.*?)\(([\d, ]+)\)(.*)", pg_type)
    if not m:
        return pg_type, ()
    return (m[1] + m[3]).strip(), tuple(int(a) for a in m[2].split(","))


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN / Infinity), numbers as Decimal, the last duplicate key winning."""
    def no_constant(name: str) -> Any:
        raise ValueError(name)
    return json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=no_constant)
