"""The oracle's rows for dates, times and JSON (the table is in :mod:`tests.fuzz.oracle`)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from tests.fuzz import calendar as cal
from tests.fuzz.oracle import Cell, Expect, exactly, parse_json, real_note, reject, text_of


def _datetime_note(text: str, p: cal.Parsed) -> str:
    y = cal.civil_from_days(p.days)[0]
    if y in (1, 9999):
        return f"year-{y}"
    if p.leap:
        return "leap-second"
    if p.offset_min:
        return "offset"
    return "iso"


def _epoch(cell: Cell) -> tuple[tuple[int, int] | None, str, bool]:
    """(instant, note, exact) of a number read as Unix time; instant None if it cannot be one."""
    if cell.cls == "integer":
        inst = cal.epoch_instant(Decimal(int(cell.value)))
        return inst, "epoch-ms" if abs(cell.value) > 10**11 else "epoch-s", True
    r = float(cell.value)
    if not math.isfinite(r):
        return None, real_note(r), True
    d = Decimal(repr(r))
    inst = cal.epoch_instant(d)
    if inst is not None:
        return inst, "epoch-real", True
    us = d * (1000 if abs(d) > 10**11 else 10**6)
    return divmod(int(us.to_integral_value()), cal.DAY_US), "epoch-real-submicro", False


def infinite(text: str) -> Expect | None:
    """The text ``infinity`` / ``-infinity`` (any case, spaces around, ``+`` allowed), which
    PostgreSQL's own timestamp and date input reads as its infinities: it may be stored as
    that infinity (docs/mapping.md) or rejected. Any other value stored as an infinity —
    year 1 or 9999 through a driver — stays a divergence."""
    word = text.strip().lower()
    if word not in ("infinity", "+infinity", "-infinity"):
        return None
    return exactly("-infinity" if word.startswith("-") else "infinity", "infinity-text", "may")


def to_timestamp(cell: Cell, tz: bool) -> Expect:
    if cell.cls in ("integer", "real"):
        inst, note, exact = _epoch(cell)
        if inst is None or not cal.in_pg_timestamp_range(inst[0]):
            return reject(note + "-range" if inst else note)
        want = cal.fmt_timestamp(*inst, tz=tz)
        if exact:
            return exactly(want, note)
        return Expect("may", lambda t: t is not None and _near(t, inst, tz), want, note)
    if cell.cls != "text":
        return reject("blob")
    text = text_of(cell)
    if text is None:
        return reject("invalid-utf8")
    if (inf := infinite(text)) is not None:
        return inf
    p = cal.parse_datetime(text.strip())
    if p is None:
        return reject("text")
    note = _datetime_note(text, p)
    if p.micros is None:
        return reject("sub-microsecond")
    days, micros = cal.utc(p)
    if not cal.in_pg_timestamp_range(days):
        return reject(note + "-range")
    level = "may" if p.leap or text != text.strip() else "must"
    return exactly(cal.fmt_timestamp(days, micros, tz=tz), note, level)


def _near(text: str, inst: tuple[int, int], tz: bool) -> bool:
    """Within one microsecond of *inst* (a double's Unix time has no exact microsecond)."""
    days, micros = inst
    total = days * cal.DAY_US + micros
    return any(text == cal.fmt_timestamp(*divmod(total + d, cal.DAY_US), tz=tz) for d in (-1, 0, 1))


def to_date(cell: Cell) -> Expect:
    if cell.cls in ("integer", "real"):
        inst, note, _ = _epoch(cell)
        if inst is None or inst[1] != 0 or not cal.in_pg_timestamp_range(inst[0]):
            return reject(note + "-not-midnight")
        return exactly(cal.fmt_date(inst[0]), note, "may")
    if cell.cls != "text":
        return reject("blob")
    text = text_of(cell)
    if text is None:
        return reject("invalid-utf8")
    if (inf := infinite(text)) is not None:
        return inf
    p = cal.parse_datetime(text.strip())
    if p is None:
        return reject("text")
    note = _datetime_note(text, p)
    if not p.has_time:
        return exactly(cal.fmt_date(p.days), note, "must" if text == text.strip() else "may")
    if p.micros is None:
        return reject("date-with-time")
    days, micros = cal.utc(p)
    if micros:
        return reject("date-with-time")
    return exactly(cal.fmt_date(days), "date-time-midnight", "may")


def to_time(cell: Cell) -> Expect:
    if cell.cls != "text":
        return reject(cell.cls)
    text = text_of(cell)
    if text is None:
        return reject("invalid-utf8")
    t = cal.parse_time(text.strip())
    if t is None:
        p = cal.parse_datetime(text.strip())
        if p is None or not p.has_time or p.offset_min is not None or p.micros is None:
            return reject("text")
        if cal.civil_from_days(p.days) != (2000, 1, 1) or p.leap:
            return reject("time-with-date")
        return exactly(cal.fmt_time(p.micros), "rails-time")
    micros, off, leap = t
    if micros is None:
        return reject("sub-microsecond")
    if off is not None:
        return exactly(cal.fmt_time((micros - off * 60 * 10**6) % cal.DAY_US), "time-zone", "may")
    if leap:
        return exactly(cal.fmt_time(micros), "leap-second", "may")  # 23:59:60 -> 24:00:00
    return exactly(cal.fmt_time(micros), "time", "must" if text == text.strip() else "may")


def canon_json(v: Any) -> Any:
    """A type-strict, order-free form of a parsed JSON value (``true`` is not ``1``)."""
    if isinstance(v, bool) or v is None:
        return ("c", v)
    if isinstance(v, Decimal):
        return ("n", v)
    if isinstance(v, str):
        return ("s", v)
    if isinstance(v, list):
        return ("a", tuple(canon_json(x) for x in v))
    return ("o", tuple(sorted((k, canon_json(x)) for k, x in v.items())))


def _bad_strings(v: Any) -> bool:
    """JSON PostgreSQL's jsonb refuses: NUL or a lone surrogate in a string or key."""
    if isinstance(v, str):
        return "\x00" in v or any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, list):
        return any(_bad_strings(x) for x in v)
    if isinstance(v, dict):
        return any(_bad_strings(k) or _bad_strings(x) for k, x in v.items())
    return False


def _same_json(want: Any) -> Any:
    def ok(t: str | None) -> bool:
        if t is None:
            return False
        try:
            return bool(canon_json(parse_json(t)) == want)
        except ValueError:
            return False
    return ok


def to_json(cell: Cell) -> Expect:
    if cell.cls == "integer":
        return Expect("may", _same_json(("n", Decimal(int(cell.value)))), None, "int")
    if cell.cls == "real":
        r = float(cell.value)
        if not math.isfinite(r):
            return reject(real_note(r))
        return Expect("may", _same_json(("n", Decimal(repr(r)))), None, real_note(r))
    text = text_of(cell)
    if text is None:
        return reject("invalid-utf8")
    try:
        doc = parse_json(text)
    except (ValueError, RecursionError):
        return reject("invalid-json")
    if _bad_strings(doc):
        return reject("json-nul-or-surrogate")
    note = "json-null" if doc is None else "json"
    return Expect("must" if cell.cls == "text" else "may", _same_json(canon_json(doc)), None, note)
