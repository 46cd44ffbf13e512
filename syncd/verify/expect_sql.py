"""verify's expectation (:mod:`syncd.verify.expect`) computed inside SQLite, where SQL can.

For the digest fast path (:mod:`syncd.verify.fastpath`) each column gets one SQLite
expression that yields exactly the part :func:`syncd.verify.expect.expect` would give for
the value, or NULL when SQL cannot decide it (another storage class, an odd layout, a
value the type cannot hold: Python must look at it, and the whole chunk is compared row
by row). The rule is one-sided on purpose: a SQL part is only produced for values whose
Python part is known to be the same text (``tests/unit/verify/test_verify_expect_sql.py`` checks
this against :mod:`syncd.verify.expect` over many values of every kind).

Kinds SQL cannot render exactly (IEEE bits of floats, jsonb's text for JSON) are computed
by the very :class:`~syncd.verify.expect.Expect` part, registered as a SQLite function:
per value, in SQLite's thread, without building rows in Python.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.verify.expect import Expect, Unfit, kind_of

HEX = "[0-9a-f]"
_UUID_GLOB = "-".join(HEX * n for n in (8, 4, 4, 4, 12))
_DIGITS = "[0-9]"
_DATE_GLOB = f"{_DIGITS * 4}-{_DIGITS * 2}-{_DIGITS * 2}"
_CLOCK_GLOB = f"{_DIGITS * 2}:[0-5]{_DIGITS}:[0-5]{_DIGITS}"
_STAMP_GLOB = f"{_DATE_GLOB}[ T]{_CLOCK_GLOB}*"
_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


def _lit(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _no_nul(x: str) -> str:
    return f"instr(CAST({x} AS BLOB), x'00') = 0"


def _int(x: str, bits: int) -> str:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    cond = f"typeof({x}) = 'integer'" + (f" AND {x} BETWEEN {lo} AND {hi}" if bits < 64 else "")
    return f"CASE WHEN {cond} THEN CAST({x} AS TEXT) END"


def _numeric(x: str, precision: int | None, scale: int | None) -> str | None:
    """Integers only: their text is the part (trailing zeros of the scale are trimmed)."""
    if precision is None:
        return f"CASE WHEN typeof({x}) = 'integer' THEN CAST({x} AS TEXT) END"
    s = scale or 0
    if s < 0:
        return None
    digits = precision - s
    if digits <= 0:
        bound = f" AND {x} = 0"
    elif digits >= 19:
        bound = ""
    else:
        bound = f" AND {x} > -{10 ** digits} AND {x} < {10 ** digits}"
    return f"CASE WHEN typeof({x}) = 'integer'{bound} THEN CAST({x} AS TEXT) END"


def _text(x: str, limit: int | None, padded: bool) -> str:
    """Text within the limit (``character`` drops trailing blanks), or an integer's digits.

    A text holding NUL is unfit, and no other part contains NUL: such a row is left to
    Python by :func:`row_digest`, which looks for NUL in the whole row at C speed (a
    per-value ``instr`` scan cost as much as the rest of a 1 KB text's part)."""
    as_int = f"CAST({x} AS TEXT)"
    fits, int_fits = (f" AND length({x}) <= {limit}", f" AND length({as_int}) <= {limit}") \
        if limit is not None else ("", "")
    s = f"rtrim({x}, ' ')" if padded else x
    return (f"CASE WHEN typeof({x}) = 'text'{fits} THEN length({s}) || ':' || {s} "
            f"WHEN typeof({x}) = 'integer'{int_fits} THEN length({as_int}) || ':' || {as_int} END")


def _bool(x: str) -> str:
    word = f"lower(trim({x}))"
    return (f"CASE WHEN typeof({x}) = 'integer' AND {x} = 1 THEN 'true' "
            f"WHEN typeof({x}) = 'integer' AND {x} = 0 THEN 'false' "
            f"WHEN typeof({x}) = 'text' AND {word} IN ({_lit(_TRUE)}) THEN 'true' "
            f"WHEN typeof({x}) = 'text' AND {word} IN ({_lit(_FALSE)}) THEN 'false' END")


def _valid_date(d: str) -> str:
    """*d* (text) is ``YYYY-MM-DD``, a real calendar day from year 1 on.

    Days 01-28 of months 01-12 exist in every year: only days 29-31 ask ``date()``."""
    return (f"{d} GLOB '{_DATE_GLOB}' AND {d} >= '0001-01-01' AND substr({d}, 6, 2) BETWEEN '01' AND '12' "
            f"AND (substr({d}, 9, 2) BETWEEN '01' AND '28' OR date({d}, '+0 days') = {d})")


def _date(x: str) -> str:
    return f"CASE WHEN typeof({x}) = 'text' AND {_valid_date(x)} THEN {x} END"


def _valid_clock(c: str) -> str:
    """*c* (text) is ``HH:MM:SS`` of one day: the GLOB keeps minutes and seconds below 60."""
    return f"{c} GLOB '{_CLOCK_GLOB}' AND {c} < '24'"


def _time(x: str) -> str:
    return f"CASE WHEN typeof({x}) = 'text' AND {_valid_clock(x)} THEN {x} END"


def _timestamp(x: str, precision: int, zone: bool) -> str:
    """``YYYY-MM-DD[ T]HH:MM:SS[.f{1,6}]`` (no offset); the fraction's trailing zeros trimmed.

    One GLOB checks the layout (digits, separators, minutes and seconds below 60); string
    comparisons check month, hour and year; ``date()`` is asked only for days 29-31."""
    day = f"substr({x}, 1, 10)"
    frac = f"substr({x}, 21)"
    spaced = f"CASE WHEN substr({x}, 11, 1) = 'T' THEN {day} || ' ' || substr({x}, 12) ELSE {x} END"
    digits = f"length(rtrim({x}, '0')) - 20"  # of the fraction, trailing zeros trimmed
    fine = "" if precision >= 6 else f" AND {digits} <= {precision}"
    cond = (f"typeof({x}) = 'text' AND length({x}) BETWEEN 19 AND 26 AND {x} GLOB '{_STAMP_GLOB}' "
            f"AND {x} >= '0001-01-01' AND substr({x}, 6, 2) BETWEEN '01' AND '12' "
            f"AND substr({x}, 12, 2) < '24' "
            f"AND (substr({x}, 9, 2) BETWEEN '01' AND '28' OR date({day}, '+0 days') = {day}) "
            f"AND (length({x}) = 19 OR (substr({x}, 20, 1) = '.' AND length({x}) > 20 "
            f"AND NOT {frac} GLOB '*[^0-9]*'{fine}))")
    text = f"CASE WHEN length({x}) = 19 THEN {spaced} ELSE rtrim(rtrim({spaced}, '0'), '.') END"
    zone_sql = " || '+00'" if zone else ""
    return f"CASE WHEN {cond} THEN {text}{zone_sql} END"


def _bytea(x: str) -> str:
    return f"CASE WHEN typeof({x}) IN ('blob', 'text') THEN lower(hex({x})) END"


def _uuid(x: str) -> str:
    h = f"lower(hex({x}))"
    dashed = " || '-' || ".join(f"substr({h}, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4),
                                                                        (21, 12)))
    return (f"CASE WHEN typeof({x}) = 'text' AND lower({x}) GLOB '{_UUID_GLOB}' THEN lower({x}) "
            f"WHEN typeof({x}) = 'blob' AND length({x}) = 16 THEN {dashed} END")


def _other(x: str) -> str:
    as_int = f"CAST({x} AS TEXT)"
    return (f"CASE WHEN typeof({x}) = 'text' AND {_no_nul(x)} THEN length({x}) || ':' || {x} "
            f"WHEN typeof({x}) = 'integer' THEN length({as_int}) || ':' || {as_int} END")


def part_sql(e: Expect, x: str, rounded: bool = False) -> str | None:
    """SQLite SQL for the part of the (non-NULL) value *x*, NULL where SQL cannot decide;
    None when the kind has no SQL form at all (the part is computed by a registered function)."""
    kind, a, b = kind_of(e.pg_type)
    if kind in ("int8", "int4", "int2"):
        return _int(x, {"int8": 64, "int4": 32, "int2": 16}[kind])
    if kind == "numeric":
        return _numeric(x, a, b if a is not None else None)
    if kind in ("text", "varchar", "bpchar"):
        return _text(x, a if kind == "varchar" else (a or 1) if kind == "bpchar" else None, kind == "bpchar")
    if kind == "bool":
        return _bool(x)
    if kind == "date":
        return _date(x)
    if kind == "time":
        return _time(x)
    if kind in ("timestamp", "timestamptz"):
        return _timestamp(x, 6 if a is None else a, kind == "timestamptz")
    if kind == "bytea":
        return _bytea(x)
    if kind == "uuid":
        return _uuid(x)
    if kind in ("float8", "float4", "json", "jsonb") or rounded:
        return None
    return _other(x)


def part_function(e: Expect) -> Callable[[Any], str | None]:
    """The expectation's own part as a SQLite function: the part, or NULL when the value is unfit
    (or, in a column rounded on purpose, when it was rounded: the row-by-row path shows it).

    JSON parts are remembered by text (:func:`_remembered`): app columns such as settings
    repeat a few values over many rows, and jsonb's text costs microseconds per value."""
    part, strict = e.part, e.strict

    def fn(v: Any) -> str | None:
        if v is None:
            return None
        try:
            if strict is not None:
                strict(v)
            return part(v)
        except Unfit:
            return None
    return _remembered(fn) if kind_of(e.pg_type)[0] in ("json", "jsonb") else fn


REMEMBERED = 4096
"""Distinct texts a JSON part function keeps (the first ones seen; then it only looks up)."""
REMEMBERED_CHARS = 1024
"""Longer texts are not kept."""
_MISS = object()


def _remembered(fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """*fn* with its results kept for up to :data:`REMEMBERED` texts (keyed by the exact text:
    the part is a function of it alone; other storage classes are not kept, ``1`` and ``1.0``
    being equal keys with different parts)."""
    kept: dict[str, str | None] = {}

    def remembered(v: Any) -> str | None:
        if type(v) is not str or len(v) > REMEMBERED_CHARS:
            return fn(v)
        out = kept.get(v, _MISS)
        if out is _MISS:
            out = fn(v)
            if len(kept) < REMEMBERED:
                kept[v] = out
        return out  # type: ignore[return-value]  # _MISS was replaced
    return remembered


def row_digest(*parts: bytes | None) -> str | None:
    """MD5 (hex) of a row's canonical text (its parts joined with ``|``), NULL when Python must
    look at the row: a part is NULL, or the text holds NUL.

    No part verify decides contains NUL (text holding NUL is unfit; every other part is
    digits, hex or words), so a NUL anywhere means a text value SQL let through unchecked.
    The parts come as separate BLOB arguments: SQLite's ``||`` would copy the growing row text
    once per column."""
    if None in parts:
        return None
    text = b"|".join(parts)  # type: ignore[arg-type]  # no None left
    if b"\x00" in text:
        return None
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


ROW_DIGEST = "syncd_row_md5"


@dataclass(frozen=True, slots=True)
class RowSql:
    """A table's canonical row text as SQLite expressions, and the functions they call."""

    parts: tuple[str, ...]
    """Each column's part (NULL when a value is unfit, or rounded on purpose)."""
    functions: dict[str, Callable[..., str | None]]

    def register(self, conn: sqlite3.Connection) -> None:
        """Make the functions known to *conn*."""
        for name, fn in self.functions.items():
            conn.create_function(name, -1 if name == ROW_DIGEST else 1, fn, deterministic=True)

    @property
    def text(self) -> str:
        """The row's parts joined with ``|``."""
        return " || '|' || ".join(self.parts)

    @property
    def digest(self) -> str:
        """The row's MD5 (hex), NULL when Python must decide the row (:func:`row_digest`)."""
        return f"{ROW_DIGEST}({', '.join(f'CAST({p} AS BLOB)' for p in self.parts)})"


def row_sql(expects: Sequence[Expect], sources: Sequence[str], prefix: str) -> RowSql:
    """*sources*: the SQLite expression of each column, in the order of *expects*.

    SQL decides the part where it can; the expectation's Python part (a registered function,
    called only for the values SQL leaves open) decides the rest.
    """
    parts: list[str] = []
    functions: dict[str, Callable[..., str | None]] = {ROW_DIGEST: row_digest}
    for i, (e, x) in enumerate(zip(expects, sources, strict=True)):
        name = f"{prefix}_{i}"
        functions[name] = part_function(e)
        sql = part_sql(e, x, e.strict is not None)
        call = f"{name}({x})" if sql is None else f"coalesce({sql}, {name}({x}))"
        parts.append(f"CASE WHEN {x} IS NULL THEN 'N' ELSE {call} END")
    return RowSql(tuple(parts), functions)


__all__ = ["ROW_DIGEST", "RowSql", "part_function", "part_sql", "row_digest", "row_sql"]
