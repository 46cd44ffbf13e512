"""Dates and times for the oracle, on plain integers: no ``datetime`` (whose years stop at
1 and 9999, where the interesting cases are) and nothing from syncd.

An instant is ``(days, micros)``: days since 1970-01-01 in the proleptic Gregorian
calendar, and microseconds into that day. PostgreSQL prints years before 1 as ``… BC``
(year 0 is ``0001 BC``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

DAY_US = 86_400 * 10**6
# PostgreSQL's timestamp range: 4713-11-24 BC .. 294276-12-31 (days since 1970-01-01)
PG_TS_MIN_DAYS, PG_TS_MAX_DAYS = -2_440_588, 106_751_991
PG_DATE_MAX_DAYS = 2_146_483_547

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?")
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}(?::?\d{2})?)?")


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (H. Hinnant's algorithm; any year, proleptic Gregorian)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def valid_date(y: int, m: int, d: int) -> bool:
    if not 1 <= m <= 12 or d < 1:
        return False
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[m - 1]


@dataclass(frozen=True)
class Parsed:
    """A parsed ISO-8601 text. ``micros`` is None when the fraction has non-zero digits
    past the sixth (it cannot be stored without rounding)."""

    days: int
    micros: int | None      # into the day, may be >= one day for 24:00:00 or :60
    has_time: bool
    offset_min: int | None  # None: no zone written
    leap: bool              # second 60, or 24:00:00


def _offset(text: str | None) -> int | None:
    if not text:
        return None
    if text == "Z":
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return sign * (int(digits[:2]) * 60 + int(digits[2:4] or 0))


def _micros(h: int, mi: int, s: int, frac: str | None) -> int | None:
    frac = frac or ""
    if len(frac) > 6 and frac[6:].strip("0"):
        return None
    f = int((frac[:6]).ljust(6, "0")) if frac else 0
    return ((h * 60 + mi) * 60 + s) * 10**6 + f


def parse_datetime(text: str) -> Parsed | None:
    """``YYYY-MM-DD[( |T)HH:MM[:SS[.f…]]][Z|±HH[:MM]]``, validated; None if not that."""
    m = _ISO.fullmatch(text)
    if not m:
        return None
    y, mo, d = int(m[1]), int(m[2]), int(m[3])
    if not valid_date(y, mo, d):
        return None
    h, mi, s = int(m[4] or 0), int(m[5] or 0), int(m[6] or 0)
    if mi > 59 or s > 60 or h > 24 or (h == 24 and (mi or s or (m[7] or "").strip("0"))):
        return None
    off = _offset(m[8])
    if off is not None and abs(off) > 15 * 60:
        return None
    return Parsed(days_from_civil(y, mo, d), _micros(h, mi, s, m[7]), m[4] is not None, off,
                  s == 60 or h == 24)


def parse_time(text: str) -> tuple[int | None, int | None, bool] | None:
    """``HH:MM[:SS[.f…]][zone]`` -> (micros, offset minutes, leap); None if not that."""
    m = _TIME.fullmatch(text)
    if not m:
        return None
    h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
    if mi > 59 or s > 60 or h > 24 or (h == 24 and (mi or s or (m[4] or "").strip("0"))):
        return None
    return _micros(h, mi, s, m[4]), _offset(m[5]), s == 60 or h == 24


def utc(p: Parsed) -> tuple[int, int]:
    """(days, micros in day) in UTC, rolled over (24:00, :60, offsets)."""
    assert p.micros is not None
    total = p.days * DAY_US + p.micros - (p.offset_min or 0) * 60 * 10**6
    return divmod(total, DAY_US)


def fmt_date(days: int) -> str:
    y, m, d = civil_from_days(days)
    if y <= 0:
        return f"{1 - y:04d}-{m:02d}-{d:02d} BC"
    return f"{y:04d}-{m:02d}-{d:02d}"


def fmt_time(micros: int) -> str:
    s, us = divmod(micros, 10**6)
    h, rem = divmod(s, 3600)
    text = f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"
    return text + (f".{us:06d}".rstrip("0") if us else "")


def fmt_timestamp(days: int, micros: int, tz: bool = False) -> str:
    """PostgreSQL's ``::text`` of a timestamp (``DateStyle ISO``; ``+00`` when *tz*, UTC)."""
    date = fmt_date(days)
    bc = date.endswith(" BC")
    text = date.removesuffix(" BC") + " " + fmt_time(micros) + ("+00" if tz else "")
    return text + (" BC" if bc else "")


def epoch_instant(value: Decimal) -> tuple[int, int] | None:
    """Unix time as syncd documents it (seconds; milliseconds above 1e11) -> (days, micros);
    None when it is not a whole number of microseconds."""
    us = value * (1000 if abs(value) > 100_000_000_000 else 1_000_000)
    if us != us.to_integral_value():
        return None
    return divmod(int(us), DAY_US)


def in_pg_timestamp_range(days: int) -> bool:
    return PG_TS_MIN_DAYS <= days <= PG_TS_MAX_DAYS
