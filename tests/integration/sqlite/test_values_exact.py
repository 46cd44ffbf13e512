"""Values arrive exactly or are rejected with a reason; nothing is changed on the way.

Through the real command line (``init``, ``run --until-caught-up``, ``verify``), with
PostgreSQL read back as text (``col::text``), which no syncd code formats. Covers the
edges of the date/time range (years 1 and 9999, ``infinity``) on every path — snapshot,
stream and the reverse stream — and values that do not fit their target type (rounding,
overflow, lengths, float4, odd booleans, NUL, JSON constants, sub-microsecond times).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd
from tests.integration.cutover.test_reverse_tables import forward_setup, run_reverse, sqlite_rows

EDGES = """
CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, day DATE, tz TIMESTAMPTZ, note TEXT)
"""
# SQLite values -> what PostgreSQL must print for them (TimeZone UTC)
EDGE_ROWS: list[tuple[tuple[Any, ...], tuple[str, str, str]]] = [
    (("0001-01-01 00:00:00", "0001-01-01", "0001-01-01T00:00:00Z"),
     ("0001-01-01 00:00:00", "0001-01-01", "0001-01-01 00:00:00+00")),
    (("9999-12-31 23:59:59.999999", "9999-12-31", "9999-12-31 23:59:59.999999+00:00"),
     ("9999-12-31 23:59:59.999999", "9999-12-31", "9999-12-31 23:59:59.999999+00")),
    (("0001-01-01 00:00:00.000001", "0001-01-02", "9999-12-31T23:59:59.999999"),
     ("0001-01-01 00:00:00.000001", "0001-01-02", "9999-12-31 23:59:59.999999+00")),
]


def write_sqlite(db: Path, schema: str, sql: str = "", rows: list[tuple[Any, ...]] | None = None) -> None:
    conn = sqlite3.connect(db)
    try:
        if schema:
            conn.executescript(schema)
        if rows:
            conn.executemany(sql, rows)
        conn.commit()
    finally:
        conn.close()


async def as_text(pg: asyncpg.Connection, sql: str) -> dict[Any, tuple[Any, ...]]:
    """Rows as PostgreSQL prints them (UTC), keyed by the first column."""
    async with pg.transaction():
        await pg.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
        return {r[0]: tuple(r)[1:] for r in await pg.fetch(sql)}


def verify(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_syncd("--config", str(cfg), "verify", "--json", *args, check=False)
    assert proc.returncode in (0, 1, 5), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def differences(report: dict[str, Any]) -> list[tuple[str, list[Any], str, list[str]]]:
    return [(c["name"], d["key"], d["kind"], d["columns"]) for c in report["checks"]
            for d in c["differences"]]


async def test_years_1_and_9999_are_stored_exactly_by_snapshot_and_stream(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    insert = "INSERT INTO events (id, at, day, tz) VALUES (?, ?, ?, ?)"
    write_sqlite(db, EDGES, insert, [(i + 1, *src) for i, (src, _) in enumerate(EDGE_ROWS)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # snapshot
    write_sqlite(db, "", insert, [(i + 11, *src) for i, (src, _) in enumerate(EDGE_ROWS)])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")  # stream

    held = await as_text(pg, "SELECT id, at::text, day::text, tz::text FROM events ORDER BY id")
    want = {i + 1: dst for i, (_, dst) in enumerate(EDGE_ROWS)}
    want |= {i + 11: dst for i, (_, dst) in enumerate(EDGE_ROWS)}
    assert held == want
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]

    # a loader that writes -infinity / infinity instead is caught, by key and column
    await pg.execute("UPDATE events SET at = '-infinity' WHERE id = 1")
    await pg.execute("UPDATE events SET day = 'infinity' WHERE id = 12")
    await pg.execute("UPDATE events SET tz = 'infinity' WHERE id = 13")
    code, report = verify(cfg)
    assert code == 1
    assert sorted(differences(report)) == [("events", [1], "changed", ["at"]),
                                          ("events", [12], "changed", ["day"]),
                                          ("events", [13], "changed", ["tz"])]


async def test_reverse_stream_keeps_years_1_and_9999_and_infinity(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config, EDGES,
                              "INSERT INTO events (id, at) VALUES (1, '2024-01-01 00:00:00')")
    assert cfg.sqlite is not None
    # the app, now on PostgreSQL, writes the edges of the range and PostgreSQL's infinities
    await pg.execute("""
        INSERT INTO events (id, at, day, tz) VALUES
          (10, '0001-01-01 00:00:00', '0001-01-01', '0001-01-01 00:00:00+00'),
          (11, '9999-12-31 23:59:59.999999', '9999-12-31', '9999-12-31 23:59:59.999999+00'),
          (12, 'infinity', 'infinity', 'infinity'),
          (13, '-infinity', '-infinity', '-infinity')""")
    await pg.execute("UPDATE events SET at = '0001-01-01 00:00:00.5' WHERE id = 1")
    await run_reverse(cfg)
    held = sqlite_rows(cfg.sqlite.path, "events", "id, at, day, tz")
    assert held == {
        1: (1, "0001-01-01 00:00:00.500000", None, None),
        10: (10, "0001-01-01 00:00:00", "0001-01-01", "0001-01-01 00:00:00+00:00"),
        11: (11, "9999-12-31 23:59:59.999999", "9999-12-31", "9999-12-31 23:59:59.999999+00:00"),
        12: (12, "infinity", "infinity", "infinity"),
        13: (13, "-infinity", "-infinity", "-infinity"),
    }
    assert sqlite_rows(cfg.sqlite.path, "_syncd_rejects") == {}
    # the round trip: what SQLite now holds maps forward to exactly what PostgreSQL holds
    assert cfg.path is not None
    code, report = verify(cfg.path)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]


# --- values that do not fit their target type ---------------------------------------------------

ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, total DECIMAL(10,2), note TEXT)"


async def rejects(pg: asyncpg.Connection, table: str) -> dict[Any, str]:
    rows = await pg.fetch("SELECT key::text AS key, error FROM syncd.rejects "
                          "WHERE object = $1 AND resolved_at IS NULL", table)
    return {json.loads(r["key"])[0]: r["error"] for r in rows}


def assert_reason(reason: str, *words: str) -> None:
    assert "\n" not in reason, reason
    for w in words:
        assert w in reason, f"{w!r} not in {reason!r}"


async def test_a_value_that_needs_rounding_is_rejected_with_its_column(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    insert = "INSERT INTO orders (id, total) VALUES (?, ?)"
    write_sqlite(db, ORDERS, insert, [(1, 12.34), (2, "7"), (7, 12.345), (8, 123456789.5)])
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    write_sqlite(db, "", insert, [(9, 0.125), (10, 99999999.99)])  # through the stream
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    held = await as_text(pg, "SELECT id, total::text FROM orders ORDER BY id")
    assert held == {1: ("12.34",), 2: ("7.00",), 10: ("99999999.99",)}
    found = await rejects(pg, "orders")
    assert sorted(found) == [7, 8, 9]
    assert_reason(found[7], "orders", "id=7", "column total", "12.345", "numeric(10,2)", "rounding")
    assert_reason(found[8], "orders", "id=8", "column total", "123456789.5", "numeric(10,2)")
    assert_reason(found[9], "orders", "id=9", "column total", "0.125", "numeric(10,2)")

    code, report = verify(cfg)
    assert code == 5  # only quarantined rows differ
    listed = {r["key"][0]: r for c in report["checks"] for r in c["rejected"]}
    assert sorted(listed) == [7, 8, 9] and listed[7]["recorded"]
    assert differences(report) == []
    # a loader that rounds instead of rejecting is caught too
    await pg.execute("DELETE FROM syncd.rejects WHERE key = '[7]'")
    await pg.execute("INSERT INTO orders (id, total) VALUES (7, 12.35)")
    code, report = verify(cfg)
    assert code == 1 and ("orders", [7], "changed", ["total"]) in differences(report)
    shown = run_syncd("--config", str(cfg), "verify", check=False).stdout
    assert "12.345" in shown and "12.35" in shown, shown


async def test_rounding_chosen_in_column_types_is_stored_rounded_and_shown(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    insert = "INSERT INTO orders (id, total) VALUES (?, ?)"
    write_sqlite(db, ORDERS, insert, [(1, 12.34), (7, 12.345), (8, -0.005)])
    cfg = make_config(db, extra='[target.column_types]\n"orders.total" = "numeric(10,2) rounded"\n')
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    write_sqlite(db, "", insert, [(9, 0.125)])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    held = await as_text(pg, "SELECT id, total::text FROM orders ORDER BY id")
    assert held == {1: ("12.34",), 7: ("12.35",), 8: ("-0.01",), 9: ("0.13",)}
    assert await rejects(pg, "orders") == {}
    assert await pg.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                             "WHERE attrelid = 'orders'::regclass AND attname = 'total'") == "numeric(10,2)"
    code, report = verify(cfg)
    assert code == 0 and report["ok"], json.dumps(report)[:2000]
    rounded = {r["key"][0]: r for c in report["checks"] for r in c["rounded"]}
    assert sorted(rounded) == [7, 8, 9]
    assert rounded[7]["column"] == "total" and "12.345" in rounded[7]["sqlite"]
    assert rounded[7]["postgres"] == "12.35"
    shown = run_syncd("--config", str(cfg), "verify").stdout
    assert "rounded" in shown and "12.345" in shown and "12.35" in shown, shown
    # rounding is chosen, not any change: a wrong value is still a difference
    await pg.execute("UPDATE orders SET total = 12.34 WHERE id = 7")
    code, report = verify(cfg)
    assert code == 1 and differences(report) == [("orders", [7], "changed", ["total"])]


LOSSY = """
CREATE TABLE lossy (id INTEGER PRIMARY KEY, small INTEGER, r4 REAL, d INTEGER, code VARCHAR(3),
                    flag BOOLEAN, note TEXT, doc JSON, at DATETIME, day DATE, t TIME)
"""
LOSSY_COLUMNS = ["id", "small", "r4", "d", "code", "flag", "note", "doc", "at", "day", "t"]
LOSSY_TYPES = ('[target.column_types]\n"lossy.small" = "smallint"\n"lossy.r4" = "real"\n'
               '"lossy.d" = "double precision"\n')
GOOD_ROW = (0, 7, 0.5, 2**53, "abc", 1, "fine", '{"a": 1}', "2024-01-02 03:04:05.123456", "2024-01-02",
            "10:11:12.5")
# (id, column, SQLite value, words the reason must have)
LOSSY_CASES: list[tuple[int, str, Any, tuple[str, ...]]] = [
    (101, "small", 40000, ("smallint",)),
    (102, "r4", 0.1, ("real",)),
    (103, "code", "abcd", ("longer than 3",)),
    (104, "flag", 2, ("boolean",)),
    (105, "flag", "maybe", ("boolean",)),
    (106, "note", "nul\x00inside", ("NUL",)),
    (107, "doc", '{"a": NaN}', ("JSON",)),
    (108, "at", "2024-01-02 03:04:05.1234567", ("microsecond",)),
    (109, "day", "2024-01-02 10:00:00", ("date",)),
    (110, "t", "10:11:12+02:00", ("time",)),
    (111, "d", 2**53 + 1, ("double precision",)),
]


async def test_other_lossy_conversions_are_named_rejects(tmp_path: Path, make_config: Any,
                                                         pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    insert = f"INSERT INTO lossy VALUES ({', '.join('?' * len(LOSSY_COLUMNS))})"

    def row(rid: int, col: str, value: Any) -> tuple[Any, ...]:
        values = dict(zip(LOSSY_COLUMNS, GOOD_ROW, strict=True))
        values["id"], values[col] = rid, value
        return tuple(values.values())

    write_sqlite(db, LOSSY, insert, [row(1, "id", 1)] + [row(rid, c, v) for rid, c, v, _ in LOSSY_CASES])
    cfg = make_config(db, extra=LOSSY_TYPES)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    write_sqlite(db, "", insert, [row(rid + 100, c, v) for rid, c, v, _ in LOSSY_CASES])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    held = await as_text(pg, "SELECT id, small::text, r4::text, d::text, code, flag::text, note, "
                             "doc::text, at::text, day::text, t::text FROM lossy")
    assert held == {1: ("7", "0.5", "9.007199254740992e+15", "abc", "true", "fine", '{"a": 1}',
                        "2024-01-02 03:04:05.123456", "2024-01-02", "10:11:12.5")}
    found = await rejects(pg, "lossy")
    for offset in (0, 100):
        for rid, col, _value, words in LOSSY_CASES:
            reason = found.pop(rid + offset)
            assert_reason(reason, "lossy", f"id={rid + offset}", f"column {col}", *words)
    assert found == {}
    code, report = verify(cfg)
    assert code == 5 and differences(report) == []  # only quarantined rows differ
    assert len([r for c in report["checks"] for r in c["rejected"]]) == 2 * len(LOSSY_CASES)


async def test_postgresql_refusals_are_one_line_naming_the_column(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """Rows PostgreSQL itself refuses (an adopted table's CHECK and NOT NULL)."""
    db = tmp_path / "app.sqlite"
    write_sqlite(db, "CREATE TABLE m (id INTEGER PRIMARY KEY, n INTEGER, s TEXT)",
                 "INSERT INTO m VALUES (?, ?, ?)", [(1, 1, "a"), (2, -5, "b"), (3, 3, None)])
    await pg.execute("CREATE TABLE m (id bigint PRIMARY KEY, n bigint CONSTRAINT n_positive CHECK (n > 0), "
                     "s text NOT NULL)")
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    write_sqlite(db, "", "INSERT INTO m VALUES (?, ?, ?)", [(4, -1, "c"), (5, 5, None)])
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    found = await rejects(pg, "m")
    assert sorted(found) == [2, 3, 4, 5]
    for rid in (2, 4):
        assert_reason(found[rid], "m", f"id={rid}", "n_positive")
    for rid in (3, 5):
        assert_reason(found[rid], "m", f"id={rid}", "column s")
