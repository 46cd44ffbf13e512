"""`syncd verify` finds each way a buggy loader could change one cell, by key and column.

Real SQLite data is synced by ``syncd run --until-caught-up``; verify (the real CLI) must
then say the stores are equal. Then every case corrupts one cell of its own row directly in
PostgreSQL — ±infinity, rounding, a time-zone shift, float32 truncation of a double, ``-0.0``
for ``0.0``, a lost NUL byte, trailing spaces, one ulp, one float32 step — and verify must
exit 1 naming exactly those keys and columns, and nothing else. A jsonb key-order change is
no difference (key order is not data in jsonb); a JSON value change is.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd

SCHEMA = """
CREATE TABLE m (
    id INTEGER PRIMARY KEY, big INTEGER, int4 INTEGER, int2 INTEGER, dbl REAL, r4 REAL, num NUMERIC,
    dec DECIMAL(10,2), t TEXT, vc VARCHAR(10), ch TEXT, b BLOB, flag BOOLEAN, day DATE, tm TIME,
    ts DATETIME, tstz TIMESTAMPTZ, jb JSON, js TEXT, u UUID
)
"""
OVERRIDES = {"int4": "integer", "int2": "smallint", "r4": "real", "ch": "character(5)", "js": "json"}
COLUMNS = ["id", "big", "int4", "int2", "dbl", "r4", "num", "dec", "t", "vc", "ch", "b", "flag", "day",
           "tm", "ts", "tstz", "jb", "js", "u"]
TYPES = {"big": "bigint", "int4": "integer", "int2": "smallint", "dbl": "double precision", "r4": "real",
         "num": "numeric", "dec": "numeric", "t": "text", "vc": "character varying", "ch": "character",
         "b": "bytea", "flag": "boolean", "day": "date", "tm": "time without time zone",
         "ts": "timestamp without time zone", "tstz": "timestamp with time zone", "jb": "jsonb",
         "js": "json", "u": "uuid"}


def base_row(i: int) -> dict[str, Any]:
    return {"id": i, "big": 10**12 + i, "int4": 1000 + i, "int2": i, "dbl": 0.1 * i + 1 / 3, "r4": 0.5 + i,
            "num": 12.5 + i, "dec": f"{i}.34", "t": f"text {i}", "vc": f"v{i}", "ch": "ab", "b": b"a\x00b",
            "flag": 1, "day": "2024-01-02", "tm": "10:11:12.5", "ts": "2024-01-02 03:04:05.123456",
            "tstz": "2024-01-02T03:04:05Z", "jb": '{"a": 1, "b": [1, 2]}', "js": '{"a": 1, "b": 2}',
            "u": str(uuid.UUID(int=i))}


def next_float32(x: float) -> float:
    bits = struct.unpack(">I", struct.pack(">f", x))[0]
    return float(struct.unpack(">f", struct.pack(">I", bits + 1))[0])


@dataclass(frozen=True)
class Case:
    name: str
    column: str
    corrupt: str
    """SQL SET clause applied to the case's own row in PostgreSQL."""
    base: Any = None
    """The case row's SQLite value of the column, when not the default."""
    differs: bool = True


CASES: list[Case] = [
    Case("bigint: off by one", "big", "big = big + 1"),
    Case("integer: sign", "int4", "int4 = -int4"),
    Case("smallint: off by one", "int2", "int2 = int2 + 1"),
    Case("double: +infinity", "dbl", "dbl = 'Infinity'"),
    Case("double: one ulp", "dbl", f"dbl = {math.nextafter(0.3, 1.0)!r}", base=0.3),
    Case("double: -0.0 for 0.0", "dbl", "dbl = '-0'::float8", base=0.0),
    Case("double: float32 truncation", "dbl", "dbl = dbl::real::float8", base=0.1),
    Case("real: one float32 step", "r4", f"r4 = {next_float32(0.75)!r}", base=0.75),
    Case("real: -infinity", "r4", "r4 = '-Infinity'"),
    Case("numeric: rounded", "num", "num = round(num)", base=12.5),
    Case("numeric(10,2): rounded", "dec", "dec = round(dec, 1)", base="7.34"),
    Case("text: trailing space", "t", "t = t || ' '"),
    Case("varchar: trailing spaces", "vc", "vc = vc || '  '"),
    Case("char(n): one character", "ch", "ch = 'ax'"),
    Case("bytea: lost NUL byte", "b", "b = '\\x6162'::bytea"),
    Case("boolean: flipped", "flag", "flag = NOT flag"),
    Case("date: infinity", "day", "day = 'infinity'"),
    Case("date: year 1 as -infinity", "day", "day = '-infinity'", base="0001-01-01"),
    Case("time: shifted an hour", "tm", "tm = tm + interval '1 hour'"),
    Case("timestamp: time-zone shift", "ts", "ts = ts + interval '2 hours'"),
    Case("timestamp: year 9999 as infinity", "ts", "ts = 'infinity'", base="9999-12-31 23:59:59.999999"),
    Case("timestamptz: time-zone shift", "tstz", "tstz = tstz - interval '1 hour'"),
    Case("timestamptz: -infinity", "tstz", "tstz = '-infinity'"),
    Case("jsonb: a value", "jb", "jb = jsonb_set(jb, '{a}', '2')"),
    Case("jsonb: key order is not data", "jb", "jb = '{\"b\": [1, 2], \"a\": 1}'", differs=False),
    Case("json: a value", "js", "js = '{\"a\": 1, \"b\": 3}'"),
    Case("uuid: another", "u", f"u = '{uuid.UUID(int=2**100)}'"),
]


def verify(cfg: Path) -> tuple[int, dict[str, Any]]:
    proc = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


async def test_every_corruption_is_found_by_key_and_column(tmp_path: Path, make_config: Any,
                                                           pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    rows = []
    for i, case in enumerate(CASES, start=1):
        row = base_row(i)
        if case.base is not None:
            row[case.column] = case.base
        rows.append(tuple(row[c] for c in COLUMNS))
    half = len(rows) // 2
    marks = ", ".join("?" * len(COLUMNS))
    conn.executemany(f"INSERT INTO m VALUES ({marks})", rows[:half])
    conn.commit()
    overrides = "".join(f'"m.{c}" = "{t}"\n' for c, t in OVERRIDES.items())
    cfg = make_config(db, extra="[target.column_types]\n" + overrides)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # the first half by snapshot
    conn.executemany(f"INSERT INTO m VALUES ({marks})", rows[half:])
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # the rest through the stream

    types = dict(await pg.fetch("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'm' AND column_name <> 'id'"))
    assert types == TYPES  # every target type is here
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:3000]  # equal before any corruption

    for i, case in enumerate(CASES, start=1):
        await pg.execute(f"UPDATE m SET {case.corrupt} WHERE id = {i}")
    code, report = verify(cfg)
    got = sorted((d["key"][0], d["kind"], d["columns"]) for c in report["checks"] for d in c["differences"])
    want = sorted((i, "changed", [case.column]) for i, case in enumerate(CASES, start=1) if case.differs)
    missed = [CASES[k - 1].name for k, _, _ in want if (k, "changed", [CASES[k - 1].column]) not in got]
    extra = [CASES[k - 1].name for k, _, _ in got if (k, "changed", [CASES[k - 1].column]) not in want]
    assert not missed and not extra, f"missed: {missed}; reported although equal: {extra}"
    assert code == 1
    shown = run_syncd("--config", str(cfg), "verify", check=False).stdout
    assert "key [1]: changed (big)" in shown, shown
