"""verify's own calendar: the proleptic Gregorian calendar with astronomical years (year 0 is
1 BC), in integer days and microseconds since 1970-01-01, and PostgreSQL's text output of
dates and times (DateStyle ISO). Years 0 and 10000, which an offset carries a SQLite date/time
into and PostgreSQL holds, need no Python datetime; nothing here is shared with the sink."""

from __future__ import annotations

DAY = 86_400_000_000
PG_DAYS = range(-2_440_588, 106_751_992)
"""The days of PostgreSQL's timestamps since 1970: 4714-11-24 BC up to 294277-01-01 (excluded)."""
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of the civil date (H. Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of *days* since 1970-01-01 (civil_from_days)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1


def month_days(y: int, m: int) -> int:
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return 29 if m == 2 and leap else _MONTH_DAYS[m - 1]


def clock(micros: int) -> str:
    """HH:MM:SS[.ffffff] of microseconds into a day, as PostgreSQL prints it."""
    seconds, micro = divmod(micros, 1_000_000)
    frac = f".{micro:06d}".rstrip("0") if micro else ""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{frac}"


def day_text(days: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, era suffix) as PostgreSQL prints a date: year 0 is ``0001 … BC``."""
    y, m, d = civil(days)
    return (f"{y:04d}-{m:02d}-{d:02d}", "") if y > 0 else (f"{1 - y:04d}-{m:02d}-{d:02d}", " BC")
