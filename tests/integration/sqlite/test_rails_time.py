"""Rails' ``time`` columns: the ActiveRecord sqlite3 adapter writes a time of day as
``2000-01-01 12:34:56.000000`` (its dummy date). A TIME-typed value whose date part is exactly
2000-01-01 arrives as that time of day; any other date part is a reject with its reason.
Through the real command line (snapshot and stream), PostgreSQL read back as ``::text``, and
``syncd verify`` agreeing by its own expectation — and catching a wrong time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.integration.sqlite.test_values_exact import (
    as_text,
    assert_reason,
    differences,
    rejects,
    verify,
    write_sqlite,
)

SHIFTS = ('CREATE TABLE "shifts" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "starts" time, '
          '"ends" time(0))')
INSERT = "INSERT INTO shifts (id, starts, ends) VALUES (?, ?, ?)"
# SQLite values -> what PostgreSQL must print
GOOD: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (("2000-01-01 12:34:56.000000", "2000-01-01 17:00:00"), ("12:34:56", "17:00:00")),
    (("2000-01-01 00:00:00.000000", "2000-01-01 23:59:59"), ("00:00:00", "23:59:59")),
    (("2000-01-01 23:59:59.999999", "2000-01-01T08:15:00"), ("23:59:59.999999", "08:15:00")),
    (("2000-01-01 09:30:00.250000", "09:30:00"), ("09:30:00.25", "09:30:00")),
]
# (SQLite value of starts, words the reason must have)
BAD: list[tuple[str, tuple[str, ...]]] = [
    ("2000-01-02 12:00:00.000000", ("starts", "2000-01-02", "time")),
    ("1999-12-31 12:00:00.000000", ("starts", "1999-12-31", "time")),
    ("2000-01-01", ("starts", "time")),
    ("2000-01-01 12:00:00+02:00", ("starts", "time")),
    ("2000-01-01 12:00:00.1234567", ("starts", "microsecond")),
]


async def test_rails_times_arrive_as_the_time_of_day_and_other_dates_are_rejects(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    write_sqlite(db, SHIFTS, INSERT, [(i + 1, *src) for i, (src, _) in enumerate(GOOD)]
                 + [(i + 101, v, None) for i, (v, _) in enumerate(BAD)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot
    write_sqlite(db, "", INSERT, [(i + 11, *src) for i, (src, _) in enumerate(GOOD)]
                 + [(i + 111, v, None) for i, (v, _) in enumerate(BAD)])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # stream

    held = await as_text(pg, "SELECT id, starts::text, ends::text FROM shifts ORDER BY id")
    want = {i + 1: dst for i, (_, dst) in enumerate(GOOD)} | {i + 11: dst for i, (_, dst) in enumerate(GOOD)}
    assert held == want
    found = await rejects(pg, "shifts")
    assert sorted(found) == [*range(101, 101 + len(BAD)), *range(111, 111 + len(BAD))]
    for i, (value, words) in enumerate(BAD):
        assert_reason(found[101 + i], "shifts", *words)
        assert_reason(found[111 + i], "shifts", *words)
        assert value in found[101 + i] or repr(value) in found[101 + i], found[101 + i]

    # verify expects the same, by itself: the Rails times match, the others are quarantined
    code, report = verify(cfg)
    assert code == 5, json.dumps(report)[:2000]
    assert differences(report) == []
    listed = sorted(r["key"][0] for c in report["checks"] for r in c["rejected"])
    assert listed == sorted(found)
    # and a loader that got the time of day wrong is caught, by key and column
    await pg.execute("UPDATE shifts SET starts = '12:34:57' WHERE id = 1")
    await pg.execute("UPDATE shifts SET ends = '08:15:00.000001' WHERE id = 13")
    code, report = verify(cfg)
    assert code == 1
    assert sorted(differences(report)) == [("shifts", [1], "changed", ["starts"]),
                                           ("shifts", [13], "changed", ["ends"])]
