"""Random values: what each ORM writes into a column, its edge cases, and anything at all.

A value is a Python value bound as a parameter, or :class:`Raw`, an SQL expression
written into the statement (text that is not valid UTF-8 cannot be bound from Python).
SQLite then applies the column's affinity; the oracle reads back what it stored.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import string
import uuid
from typing import Any

from tests.fuzz.model import Column, Raw

EPOCH = dt.datetime(1970, 1, 1)
INTS = (0, 1, -1, 2**31 - 1, 2**31, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63), 10**11, 10**11 + 1)
REALS = (0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, float("inf"),
         float("-inf"), 0.1, 1 / 3, 1e16, 12.345, 123456789.123456789, -2.5, 1e-7, 2.0**53)
TEXTS = ("", " ", "a", "NULL", "null", "0", "007", "1e5", " 12 ", "0x1F", "true", "日本語テキスト",
         "emoji 😀🎉", "e\u0301", "\u05e9\u05dc\u05d5\u05dd", "tab\there", "line\nbreak", "back\\slash",
         "quote ' \" `", "trailing  ", "a\x00b", "\x00", "\u2028\u2029", "\ufeffbom", "{\"a\": 1}",
         "[1,2]", "0001-01-01", "9999-12-31 23:59:59.999999", "2016-12-31 23:59:60",
         "Infinity", "-0", "NaN", "x" * 3000, "é" * 300)
BLOBS = (b"", b"\x00", b"\xff\xfe\xfd", b"plain ascii", "ütf-8 text".encode(), uuid.UUID(int=7).bytes,
         bytes(range(256)))
BAD_UTF8 = (Raw("CAST(X'C328' AS TEXT)"), Raw("CAST(X'FF' AS TEXT)"), Raw("CAST(X'EDA080' AS TEXT)"))
DATETIME_TEXT = (
    "0001-01-01 00:00:00", "0001-01-01 00:00:00.000000", "9999-12-31 23:59:59.999999",
    "9999-12-31 23:59:59", "9999-12-31", "0001-01-01", "2016-12-31 23:59:60", "2024-02-29 12:00:00",
    "2023-02-29 12:00:00", "2024-01-01T00:00:00Z", "2024-06-30T23:30:00-12:00",
    "2024-01-01T00:00:00+14:00", "2024-03-10T02:30:00+05:30", "0001-01-01T00:30:00+01:00",
    "9999-12-31T23:30:00-01:00", "2024-01-02 03:04:05.1234567", "2024-01-02T03:04:05.123456789Z",
    "2024-01-02 03:04:05.1230000", "1969-12-31 23:59:59.999999", "1970-01-01 00:00:00",
    "2024-01-02 24:00:00", "2024-13-01 00:00:00", "now", "", "2024-01-02 03:04", "2024-01-02T03:04:05",
    "2024-01-02 00:00:00", "2000-01-01 12:34:56.000000", "1900-02-29 00:00:00", "2000-02-29 00:00:00",
)
TIME_TEXT = ("00:00:00", "23:59:59.999999", "24:00:00", "23:59:60", "12:00:00+02:00", "12:00:00Z",
             "12:34:56.1234567", "25:00:00", "12:34", "2000-01-01 12:34:56.000000",
             "2024-05-05 12:00:00", "noon", "", "12:60:00")
EPOCHS = (0, -1, 1700000000, 1700000000000, 253402300799, 253402300799999, -62135596800,
          -62135596800000, 100000000000, 100000000001, 2**63 - 1, -(2**63), 1700000000.5,
          1700000000.123, 1.5, -0.0, float("inf"), 1e300)
JSON_TEXT = ('{"a": 1, "b": [true, false, null]}', "null", "true", "0", "-0", "1e400", "1.0",
             '"just a string"', "[]", "{}", '{"a": 1, "a": 2}', '{"b": 1, "a": 2}', '"\\u0000"',
             '"\\ud800"', '"\\ud83d\\ude00"', "NaN", "{bad json}", "", " [1] ", '{"n": 12345678901234567890}',
             '{"x": 0.1, "y": 1E+2, "z": -0.0}', "[" * 50 + "]" * 50, '"tab\there"', "'single'",
             '{"k": "é😀"}')
UUID_TEXT = ("00000000-0000-0000-0000-000000000000", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
             "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
             "not-a-uuid", "", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1")
BOOL_ODD = (2, -1, "yes", "no", "true", "FALSE", "t", "f", "on", "maybe", 0.5, 1.0, "", " 1 ")


class ValueGen:
    """Values for columns; ``wild`` is the chance that a cell gets an edge or foreign value."""

    def __init__(self, rng: random.Random, wild: float) -> None:
        self.rng = rng
        self.wild = wild

    def value(self, col: Column) -> Any:
        rng = self.rng
        if not col.not_null and rng.random() < 0.08:
            return None
        r = rng.random()
        if r < self.wild * 0.6:
            return self.edge(col)
        if r < self.wild:
            return self.anything()
        return self.typical(col)

    def anything(self) -> Any:
        """A value of a random storage class, edges included."""
        rng = self.rng
        pools = (INTS, REALS, TEXTS, BLOBS, BAD_UTF8, DATETIME_TEXT, JSON_TEXT, (None,))
        # invalid UTF-8 (a reject) rarer: its weight is kept so that a seed replays the same case
        pool = rng.choices(pools, (5, 5, 5, 3, 0.5, 3, 2, 2))[0]
        return rng.choice(pool)

    def text(self, max_len: int = 24) -> str:
        rng = self.rng
        alphabet = string.ascii_letters + string.digits + " -_.,éüßЖ日本😀"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, max(1, max_len))))

    def instant(self) -> dt.datetime:
        rng = self.rng
        year = rng.choice((rng.randint(1970, 2040),) * 6 + (1, 9999, 1900, 2038, rng.randint(1, 9999)))
        day = dt.datetime(year, 1, 1) + dt.timedelta(days=rng.randint(0, 364), seconds=rng.randint(0, 86399))
        micro = rng.choice((0, 0, rng.randint(0, 999) * 1000, rng.randint(0, 999999)))
        return day.replace(microsecond=micro)

    def datetime_value(self, col: Column) -> Any:
        t = self.instant()
        f = col.flavor
        base = f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        if f == "typeorm":
            return f"{base}.{t.microsecond // 1000:03d}"
        if f == "django":
            return base + (f".{t.microsecond:06d}" if t.microsecond else "")
        if f in ("rails", "sqlalchemy"):
            return f"{base}.{t.microsecond:06d}"
        if f == "prisma":
            delta = t - EPOCH
            return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
        style = self.rng.randrange(4)
        if style == 0:
            return base.replace(" ", "T") + "Z"
        if style == 1:
            return base.replace(" ", "T") + self.rng.choice(("+02:00", "-05:00", "+05:30", "+00:00"))
        if style == 2:
            return int((t - EPOCH).total_seconds())
        return base

    def typical(self, col: Column) -> Any:
        rng, k = self.rng, col.kind
        if k in ("int", "bigint"):
            return rng.choice((rng.randint(-100, 1000), rng.randint(0, 2**31), rng.randint(-(2**62), 2**62)))
        if k == "real":
            return rng.choice((round(rng.uniform(-1000, 1000), rng.randint(0, 6)), rng.random(),
                               float(rng.randint(-5, 5))))
        if k == "decimal":
            p, s = col.params or (12, 2)
            if col.params and rng.random() < 0.1:  # a price computed in floating point
                return round(rng.uniform(0, 10 ** min(p - s, 6)), s + 1)
            whole = rng.randint(0, 10 ** min(p - s, 9) - 1) if p > s else 0
            frac = rng.randint(0, 10**s - 1) if s else 0
            text = f"{'-' if rng.random() < 0.2 else ''}{whole}" + (f".{frac:0{s}d}" if s else "")
            return text if col.flavor == "django" else float(text)
        if k == "varchar":
            n = col.params[0] if col.params else 40
            return self.text(min(n, 40))
        if k == "text":
            return self.text(rng.choice((8, 60, 300)))
        if k == "uuid":
            u = uuid.UUID(int=rng.getrandbits(128), version=4)
            return u.hex if col.decl.lower().startswith("char(32)") else str(u)
        if k == "bool":
            if col.flavor == "rails" and rng.random() < 0.2:
                return rng.choice(("t", "f"))  # Rails before 6 wrote booleans as 't' / 'f'
            return rng.randint(0, 1)
        if k == "datetime":
            return self.datetime_value(col)
        if k == "date":
            t = self.instant()
            return f"{t.year:04d}-{t.month:02d}-{t.day:02d}" if col.flavor != "prisma" else \
                self.datetime_value(col)
        if k == "time":
            t = self.instant()
            hms = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
            if col.flavor == "rails":
                return f"2000-01-01 {hms}.{t.microsecond:06d}"
            if col.flavor == "prisma":
                return self.datetime_value(col)
            return hms + (f".{t.microsecond:06d}" if col.flavor == "sqlalchemy" else "")
        if k == "json":
            doc = {"id": rng.randint(0, 99), "tags": [self.text(5) for _ in range(rng.randint(0, 3))],
                   "ok": rng.random() < 0.5, "w": round(rng.uniform(0, 10), 3), "none": None}
            return json.dumps(doc, separators=(",", ":") if rng.random() < 0.5 else (", ", ": "))
        if k == "blob":
            return rng.randbytes(rng.randint(0, 40))
        return self.anything()

    def edge(self, col: Column) -> Any:
        rng, k = self.rng, col.kind
        if k in ("datetime", "date"):
            return rng.choice(DATETIME_TEXT + EPOCHS)
        if k == "time":
            return rng.choice(TIME_TEXT)
        if k == "json":
            return rng.choice(JSON_TEXT)
        if k == "uuid":
            return rng.choice((*UUID_TEXT, uuid.UUID(int=rng.getrandbits(128)).bytes))
        if k == "bool":
            return rng.choice(BOOL_ODD)
        if k == "decimal":
            p, s = col.params or (12, 2)
            bound: int | str = -(10 ** (p - s))
            if p - s >= 19:  # beyond a 64-bit integer: the text an app would write
                bound = str(bound)
            return rng.choice((12.345, 0.005, 1.0 / 3, 10.0 ** (p - s), bound, 1e300,
                               float("inf"), -0.0, "12.30", "1e2", 99.995, 2**63 - 1, 0.1 + 0.2,
                               round(rng.uniform(0, 100), s + 1)))
        if k == "varchar":
            n = col.params[0] if col.params else 255
            return rng.choice(("é" * n, "😀" * n, "x" * (n + 1), "é" * (n + 1), "a" * n + " "))
        if k in ("int", "bigint"):
            return rng.choice((*INTS, 1.0, 1.5, -0.0, 2.0**63, "12", "abc"))
        if k == "real":
            return rng.choice((*REALS, 2**53 + 1, 2**63 - 1, "1.5", "abc"))
        if k == "blob":
            return rng.choice((*BLOBS, "text in a blob column", 42, 1.5))
        return self.anything()
