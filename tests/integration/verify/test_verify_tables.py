"""`syncd verify` for tables: equal stores pass, every single difference is found by key.

The stores are filled by running syncd itself (``init`` + ``run --until-caught-up``);
differences are then made by writing to PostgreSQL directly, behind syncd's back.
Verify runs as the real CLI (``--json`` is parsed; the human output is checked
once), except where a test needs options the CLI does not expose.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import sqlite3
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from syncd import config as config_mod
from syncd.verify.run import TableOptions, verify
from tests.conftest import run_syncd
from tests.workload import Daemon, Writer, WriterThread, create_database, wait_caught_up

SCHEMA = """
CREATE TABLE everything (
    id INTEGER PRIMARY KEY,
    i INTEGER, r REAL, t TEXT, vc VARCHAR(20), b BLOB, flag BOOLEAN, ts DATETIME, day DATE,
    j JSON, n NUMERIC, dec DECIMAL(10,2), u UUID
);
CREATE TABLE pairs (a INTEGER NOT NULL, tag TEXT NOT NULL, w REAL, PRIMARY KEY (a, tag));
CREATE TABLE notes (body TEXT, at REAL);
"""
COLUMNS = ("id", "i", "r", "t", "vc", "b", "flag", "ts", "day", "j", "n", "dec", "u")

EDGE_ROWS: list[tuple[Any, ...]] = [
    (1, 2**63 - 1, 0.1 + 0.2, "", "short", b"", 0, "2024-01-02 03:04:05", "2024-02-29",
     '{"a": [1, 2.5, null], "b": "é", "c": {"z": true, "aa": 1.0, "b": 1e3}}', 12.5, "123.45",
     str(uuid.UUID(int=1))),
    (2, -(2**63), 1.7976931348623157e308, "pipe | and 'quotes' \"dq\" \\ \n\t ünï 日本 🚀",
     "x" * 20, b"\x00\xff\x00", 1, "2024-01-02T03:04:05Z", "1970-01-01", "[]", -0.5, 0,
     str(uuid.uuid4())),
    (3, None, None, None, None, None, None, None, None, None, None, None, None),
    (4, 1, float("inf"), "ü" * 50_000, "", bytes(range(256)) * 100, "true", 1700000000123,
     "2000-01-01", '"just a string"', "3.14159265358979323846", "1e3",
     str(uuid.UUID(int=2**128 - 1))),
    (5, 0, 5e-324, "x|y", "a|b", b"|", "no", "1999-12-31 23:59:59.999", "0999-01-01",
     '{"k": -0.0, "e": "\\u00e9\\u0001", "n": 1.50, "big": 123456789012345678901234567890}',
     "-0.000", "0.01", str(uuid.UUID(int=7)).upper()),
]


def everything_row(i: int) -> tuple[Any, ...]:
    return (i, i * 7, i / 3, f"text {i}", f"v{i % 100}", bytes([i % 256]) * 3, i % 2,
            f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:00.{i % 1000:03d}",
            f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}", json.dumps({"i": i, "tags": ["a", "b"][: i % 3]}),
            i / 8, f"{i}.{i % 100:02d}", str(uuid.UUID(int=i * 7919)))


def make_database(path: Path, rows: int = 3000) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    marks = ", ".join("?" * len(COLUMNS))
    conn.executemany(f"INSERT INTO everything VALUES ({marks})", EDGE_ROWS)
    conn.executemany(f"INSERT INTO everything VALUES ({marks})", [everything_row(i) for i in range(10, rows)])
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(i // 4, f"t{i % 4}", i / 2) for i in range(800)])
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"note {i}", i * 1.5) for i in range(500)])
    conn.commit()
    conn.close()


def synced(tmp_path: Path, make_config: Callable[..., Path], rows: int = 3000, **extra: Any) -> Path:
    db = tmp_path / "app.sqlite"
    make_database(db, rows)
    cfg = make_config(db, **extra)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    return cfg


def verify_json(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_syncd("--config", str(cfg), "verify", "--json", *args, check=False)
    assert proc.returncode in (0, 1, 5), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def found(report: dict[str, Any]) -> list[tuple[str, list[Any], str, list[str]]]:
    return [(c["name"], d["key"], d["kind"], d["columns"])
            for c in report["checks"] for d in c["differences"]]


async def test_equal_stores_pass_with_a_line_per_table(tmp_path: Path, make_config: Any) -> None:
    cfg = synced(tmp_path, make_config)
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("✓ table everything") and "2,995 rows" in lines[0]
    assert lines[1].startswith("✓ table notes") and lines[2].startswith("✓ table pairs")
    assert lines[-1].startswith("everything matches (full verify")
    code, report = verify_json(cfg, "--chunk-rows", "100")
    assert code == 0 and report["ok"] and found(report) == []
    code, report = verify_json(cfg, "--counts")
    assert code == 0 and report["mode"] == "counts"
    assert {c["name"]: c["source_rows"] for c in report["checks"]} == \
        {"everything": 2995, "pairs": 800, "notes": 500}


def _next_double(x: float) -> float:
    return math.nextafter(x, math.inf)


# (description, SQL that makes the difference, SQL that undoes it, expected (table, key, kind, columns))
Tamper = tuple[str, str, str, tuple[str, list[Any], str, list[str]]]


def tampers(orig: dict[str, Any]) -> list[Tamper]:
    r, e = orig["r"], "UPDATE everything SET"

    def changed(key: int, *cols: str) -> tuple[str, list[Any], str, list[str]]:
        return ("everything", [key], "changed", list(cols))

    return [
        ("bigint", f"{e} i = i + 1 WHERE id = 20", f"{e} i = i - 1 WHERE id = 20", changed(20, "i")),
        ("double by one ulp", f"{e} r = {_next_double(r)!r} WHERE id = 20", f"{e} r = {r!r} WHERE id = 20",
         changed(20, "r")),
        ("text: trailing space", f"{e} t = t || ' ' WHERE id = 20", f"{e} t = rtrim(t) WHERE id = 20",
         changed(20, "t")),
        ("text: '' is not NULL", f"{e} t = NULL WHERE id = 1", f"{e} t = '' WHERE id = 1", changed(1, "t")),
        ("varchar: case", f"{e} vc = upper(vc) WHERE id = 20", f"{e} vc = lower(vc) WHERE id = 20",
         changed(20, "vc")),
        ("bytea: one byte", f"{e} b = set_byte(b, 1, 0) WHERE id = 2",
         f"{e} b = set_byte(b, 1, 255) WHERE id = 2", changed(2, "b")),
        ("boolean", f"{e} flag = NOT flag WHERE id = 20", f"{e} flag = NOT flag WHERE id = 20",
         changed(20, "flag")),
        ("timestamp: one microsecond", f"{e} ts = ts + interval '1 microsecond' WHERE id = 20",
         f"{e} ts = ts - interval '1 microsecond' WHERE id = 20", changed(20, "ts")),
        ("date", f"{e} day = day + 1 WHERE id = 20", f"{e} day = day - 1 WHERE id = 20", changed(20, "day")),
        ("jsonb: a nested value", f"{e} j = jsonb_set(j, '{{c,z}}', 'false') WHERE id = 1",
         f"{e} j = jsonb_set(j, '{{c,z}}', 'true') WHERE id = 1", changed(1, "j")),
        ("jsonb: 1.0 vs 1", f"{e} j = jsonb_set(j, '{{c,aa}}', '1') WHERE id = 1",
         f"{e} j = jsonb_set(j, '{{c,aa}}', '1.0') WHERE id = 1", changed(1, "j")),
        ("numeric", f"{e} n = n + 0.000001 WHERE id = 20", f"{e} n = n - 0.000001 WHERE id = 20",
         changed(20, "n")),
        ("numeric(10,2)", f"{e} dec = dec + 0.01 WHERE id = 20", f"{e} dec = dec - 0.01 WHERE id = 20",
         changed(20, "dec")),
        ("uuid", f"{e} u = '00000000-0000-0000-0000-000000000002' WHERE id = 1",
         f"{e} u = '{uuid.UUID(int=1)}' WHERE id = 1", changed(1, "u")),
        ("two columns", f"{e} i = 0, day = NULL WHERE id = 1500",
         f"{e} i = {1500 * 7}, day = '{everything_row(1500)[8]}' WHERE id = 1500", changed(1500, "i", "day")),
        ("missing row", "DELETE FROM everything WHERE id = 1234",
         "INSERT INTO everything SELECT * FROM saved WHERE id = 1234", ("everything", [1234], "missing", [])),
        ("missing first row", "DELETE FROM everything WHERE id = 1",
         "INSERT INTO everything SELECT * FROM saved WHERE id = 1", ("everything", [1], "missing", [])),
        ("extra row in the middle", "INSERT INTO everything (id) VALUES (7)",
         "DELETE FROM everything WHERE id = 7", ("everything", [7], "extra", [])),
        ("extra row before all", "INSERT INTO everything (id, t) VALUES (-5, 'x')",
         "DELETE FROM everything WHERE id = -5", ("everything", [-5], "extra", [])),
        ("extra row after all", "INSERT INTO everything (id) VALUES (1000000000)",
         "DELETE FROM everything WHERE id = 1000000000", ("everything", [1000000000], "extra", [])),
        ("composite key: changed", "UPDATE pairs SET w = w + 1 WHERE a = 100 AND tag = 't2'",
         "UPDATE pairs SET w = w - 1 WHERE a = 100 AND tag = 't2'", ("pairs", [100, "t2"], "changed", ["w"])),
        ("composite key: extra", "INSERT INTO pairs VALUES (100, 't10', 1)",
         "DELETE FROM pairs WHERE a = 100 AND tag = 't10'", ("pairs", [100, "t10"], "extra", [])),
        ("rowid table: missing", "DELETE FROM notes WHERE _syncd_rowid = 250",
         "INSERT INTO notes SELECT * FROM saved_notes WHERE _syncd_rowid = 250",
         ("notes", [250], "missing", [])),
    ]


async def test_each_single_difference_is_found_by_key_and_column(tmp_path: Path, make_config: Any,
                                                                 pg: asyncpg.Connection) -> None:
    cfg = synced(tmp_path, make_config, chunk_rows=500)
    await pg.execute("CREATE TABLE saved AS SELECT * FROM everything")
    await pg.execute("CREATE TABLE saved_notes AS SELECT * FROM notes")
    orig = dict(await pg.fetchrow("SELECT * FROM everything WHERE id = 20"))
    failures = []
    for what, make, undo, expect in tampers(orig):
        await pg.execute(make)
        code, report = verify_json(cfg, "--table", expect[0], "--chunk-rows", "1000")
        got = found(report)
        if code != 1 or got != [expect]:
            failures.append(f"{what}: exit {code}, found {got}, expected [{expect}]")
        await pg.execute(undo)
    assert not failures, "\n".join(failures)
    code, report = verify_json(cfg, "--table", "everything", "--table", "pairs", "--table", "notes")
    assert code == 0, found(report)


async def test_many_differences_in_one_chunk_and_human_output(tmp_path: Path, make_config: Any,
                                                             pg: asyncpg.Connection) -> None:
    cfg = synced(tmp_path, make_config)
    await pg.execute("DELETE FROM everything WHERE id BETWEEN 100 AND 139")
    await pg.execute("UPDATE pairs SET tag = tag || 'x' WHERE a = 3")
    code, report = verify_json(cfg)
    assert code == 1
    everything = next(c for c in report["checks"] if c["name"] == "everything")
    assert sorted(d["key"][0] for d in everything["differences"]) == list(range(100, 140))
    assert everything["source_rows"] == 2995 and everything["target_rows"] == 2955
    pairs = {(tuple(d["key"]), d["kind"]) for c in report["checks"] if c["name"] == "pairs"
             for d in c["differences"]}
    assert pairs == ({((3, f"t{i}"), "missing") for i in range(4)}
                     | {((3, f"t{i}x"), "extra") for i in range(4)})
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert proc.returncode == 1
    out = proc.stdout
    assert "✗ table everything" in out and "✗ table pairs" in out and "✓ table notes" in out
    assert "everything: differences (key: id):" in out and "key [100]: missing in PostgreSQL" in out
    assert "... 20 more (--json lists them all)" in out
    assert out.splitlines()[-1].startswith("differences found")
    code, report = verify_json(cfg, "--counts")  # counts see the missing rows, not the renamed ones
    statuses = {c["name"]: (c["status"], c["counts_differ"]) for c in report["checks"]}
    assert code == 1 and statuses == {"everything": ("differ", True), "pairs": ("match", False),
                                      "notes": ("match", False)}


async def test_rejected_rows_are_listed_apart_from_differences(tmp_path: Path, make_config: Any,
                                                               pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_database(db, rows=200)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE everything SET vc = ? WHERE id = 50", ("y" * 21,))  # longer than VARCHAR(20)
    conn.execute("INSERT INTO everything (id, t) VALUES (5000, ?)", ("nul \x00 inside",))
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects WHERE resolved_at IS NULL") == 2
    code, report = verify_json(cfg)
    assert code == 5  # nothing but quarantined rows: their own exit code
    check = next(c for c in report["checks"] if c["name"] == "everything")
    assert check["differences"] == [] and check["status"] == "quarantined"
    rejected = {r["key"][0]: r for r in check["rejected"]}
    assert set(rejected) == {50, 5000} and all(r["recorded"] for r in rejected.values())
    assert "longer than 20" in rejected[50]["error"]
    proc = run_syncd("--config", str(cfg), "verify", check=False)
    assert "everything: quarantined in syncd.rejects (PostgreSQL lacks these rows or holds an older " \
        "version) (key: id):" in proc.stdout
    assert proc.returncode == 5 and proc.stdout.splitlines()[-1].startswith(
        "2 rows quarantined in syncd.rejects — PostgreSQL lacks them")
    code, report = verify_json(cfg, "--counts")
    assert code == 1 and len(report["checks"][0]["rejected"]) == 2


async def test_key_order_that_differs_between_the_stores(tmp_path: Path, make_config: Any,
                                                         pg: asyncpg.Connection) -> None:
    """UUID text in mixed case sorts differently in SQLite than as uuid in PostgreSQL."""
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE sessions (token UUID PRIMARY KEY, n INTEGER)")
    tokens = [str(uuid.UUID(int=i * 2**100 + i)) for i in range(1, 400)]
    conn.executemany("INSERT INTO sessions VALUES (?, ?)",
                     [(t.upper() if i % 3 else t, i) for i, t in enumerate(tokens)])
    conn.commit()
    conn.close()
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    code, report = verify_json(cfg, "--chunk-rows", "50")
    assert code == 0, found(report)
    await pg.execute("UPDATE sessions SET n = -1 WHERE token = $1", uuid.UUID(tokens[100]))
    code, report = verify_json(cfg, "--chunk-rows", "50")
    assert code == 1 and found(report) == [("sessions", [tokens[100].upper()], "changed", ["n"])]


async def test_streamed_key_hashes_find_the_same_differences(tmp_path: Path, make_config: Any,
                                                             pg: asyncpg.Connection, pg_dsn: str) -> None:
    """The path for text keys PostgreSQL collates differently from SQLite, forced on."""
    cfg = synced(tmp_path, make_config, rows=600)
    await pg.execute("UPDATE pairs SET w = 0 WHERE a = 10 AND tag = 't1'")
    await pg.execute("INSERT INTO pairs VALUES (10, 't1a', 1), (1000, 'z', 1)")
    await pg.execute("DELETE FROM pairs WHERE a = 0")
    config = config_mod.load(cfg)
    report = await verify(config, pg_dsn, tables=["pairs"],
                          options=TableOptions(chunk_rows=64, stream_keys=True))
    got = sorted((tuple(d.key), d.kind, tuple(d.columns)) for d in report.checks[0].differences)
    assert got == sorted([((10, "t1"), "changed", ("w",)), ((10, "t1a"), "extra", ()),
                          ((1000, "z"), "extra", ())] + [((0, f"t{i}"), "missing", ()) for i in range(4)])
    assert not report.ok


async def test_pending_changes_without_a_running_daemon_are_not_differences(
        tmp_path: Path, make_config: Any, pg_dsn: str) -> None:
    cfg = synced(tmp_path, make_config, rows=300)
    conn = sqlite3.connect(tmp_path / "app.sqlite")
    conn.execute("UPDATE everything SET i = -1 WHERE id = 42")
    conn.execute("DELETE FROM everything WHERE id = 43")
    conn.commit()
    conn.close()
    report = await verify(config_mod.load(cfg), pg_dsn, tables=["everything"],
                          options=TableOptions(settle_seconds=20, stall_seconds=1))
    check = report.checks[0]
    assert check.status == "unsettled" and check.differences == []
    assert sorted(k[0] for k in check.unsettled) == [42, 43]
    assert "is syncd running?" in check.detail and not report.ok


async def test_damage_beyond_the_limits_stays_bounded(tmp_path: Path, make_config: Any,
                                                      pg: asyncpg.Connection, pg_dsn: str) -> None:
    cfg = synced(tmp_path, make_config, rows=300)
    await pg.execute("DELETE FROM notes")
    await pg.execute("INSERT INTO pairs SELECT -g, 'x', 0 FROM generate_series(1, 1000) g")
    await pg.execute("DELETE FROM everything WHERE id > 100")
    options = TableOptions(chunk_rows=50, max_differences=100)
    report = await verify(config_mod.load(cfg), pg_dsn, options=options)
    checks = {c.name: c for c in report.checks}
    assert checks["notes"].status == "differ" and len(checks["notes"].differences) >= 100
    assert checks["notes"].truncated and "not compared" in checks["notes"].detail
    assert checks["pairs"].status == "differ" and checks["pairs"].counts_differ
    assert "compare the row counts" in checks["pairs"].detail
    assert checks["everything"].status == "differ" and checks["everything"].truncated
    assert all(d.kind == "missing" and d.key[0] > 100 for d in checks["everything"].differences)


async def test_narrowing_and_collections(tmp_path: Path, make_config: Any) -> None:
    cfg = synced(tmp_path, make_config, rows=100)
    code, report = verify_json(cfg, "--table", "pairs")
    assert code == 0 and [c["name"] for c in report["checks"]] == ["pairs"]
    proc = run_syncd("--config", str(cfg), "verify", "--table", "nope", check=False)
    assert proc.returncode == 2 and "--table nope: not a synced table" in proc.stderr
    proc = run_syncd("--config", str(cfg), "verify", "--collection", "docs", check=False)
    assert proc.returncode == 2 and "--collection: no [source.chroma] is configured" in proc.stderr


async def test_before_the_first_run_verify_says_why(tmp_path: Path, make_config: Any) -> None:
    db = tmp_path / "app.sqlite"
    make_database(db, rows=50)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    code, report = verify_json(cfg)
    assert code == 1 and {c["status"] for c in report["checks"]} == {"error"}
    assert "has not started" in report["checks"][0]["detail"]


async def test_verify_during_a_live_workload_reports_no_false_difference(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    create_database(db, archive_rows=20_000)
    app = Writer(db, 1234, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=400, documents=1500, tags=2000, orders=400, audit=800, settings=300, sessions=400)
    cfg = make_config(db, chunk_rows=1000, batch_size=500)
    run_syncd("--config", str(cfg), "init")
    daemon = Daemon(cfg, tmp_path / "syncd.log")
    writer = WriterThread(app, pause=0.003)
    try:
        await wait_caught_up(pg, db, daemon)
        writer.start()
        await writer.run_until(200)
        await pg.execute("UPDATE archive SET n = n + 1 WHERE id = 12345")  # one real difference
        started = writer.transactions
        proc = await asyncio.to_thread(run_syncd, "--config", str(cfg), "verify", "--json",
                                       "--chunk-rows", "500", timeout=300, check=False)
        during = writer.transactions - started
        counts = await asyncio.to_thread(run_syncd, "--config", str(cfg), "verify", "--json", "--counts",
                                         timeout=300, check=False)
        daemon.ensure_alive()
    finally:
        writer.halt()
        await daemon.terminate()
    report = json.loads(proc.stdout)
    assert during > 50, "the writer should have kept writing while verify ran"
    assert found(report) == [("archive", [12345], "changed", ["n"])], json.dumps(report)[:3000]
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses.pop("archive") == "differ"
    assert set(statuses.values()) == {"match"}, statuses
    assert proc.returncode == 1
    counted = json.loads(counts.stdout)
    assert counts.returncode == 0 and counted["ok"], json.dumps(counted)[:3000]


CANON_CASES: list[tuple[str, list[Any]]] = [
    ("bigint", [0, -1, 2**63 - 1, -(2**63)]),
    ("integer", [7, -(2**31)]),
    ("double precision", [0.1, -0.0, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf"), 1e16,
                          123456.789, 2.0**-1022]),
    ("real", [0.1, 1e-40, 3.4e38, -2.5]),
    ("numeric", [Decimal("1.50"), Decimal("1E+3"), Decimal("-0.00"), Decimal("NaN"), Decimal("Infinity"),
                 Decimal("-Infinity"), Decimal("123456789012345678901234567890.000001"), Decimal("1e-20"),
                 Decimal("-12.3400")]),
    ("numeric(10,2)", [Decimal("0.005"), Decimal("-0.005"), Decimal("12.345"), Decimal("7"), Decimal("1e3")]),
    ("text", ["", "a|b", "ünï 日本 🚀", "line\nbreak", "N", "12:ab"]),
    ("varchar(20)", ["", "short"]),
    ("character(5)", ["ab", "ab  ", "", "abcde"]),
    ("bytea", [b"", b"\x00\xff", bytes(range(256))]),
    ("boolean", [True, False]),
    ("timestamp", [dt.datetime(1, 1, 1), dt.datetime(999, 12, 31, 23, 59, 59, 999999),
                   dt.datetime(2024, 1, 2, 3, 4, 5, 120000), dt.datetime(2024, 1, 2),
                   dt.datetime(9999, 12, 31, 0, 0, 0, 1), dt.datetime.max]),
    ("timestamptz", [dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                     dt.datetime(2000, 1, 1, tzinfo=dt.UTC)]),
    ("date", [dt.date(1, 1, 1), dt.date(2024, 2, 29), dt.date(999, 1, 1), dt.date.max]),
    ("time", [dt.time(0, 0), dt.time(12, 0, 1, 500000), dt.time(23, 59, 59, 999999)]),
    ("jsonb", ['{"b": 1, "a": 2, "aa": [1.0, 1e3, -0.0, 1.50, 1E-7, 12345678901234567890, -0]}',
               '{"é": 1, "z": 2, "ab": 3, "𝄞": 4, "abc": 5}', '"\\u00e9\\u0001\\t/\\\\"', "[]", "{}", "null",
               "true", '{"a": {"a": 1, "a": 2}}', '  {"x" : 1 ,"y":[ ] }  ', "0.1", "-0", "1e400",
               '{"k": 0.30000000000000004, "n": -1.5e-10, "s": "a|b"}']),
    ("json", ['{"b": 1, "a": [1.0, 2]}', '{"a": 1, "a": 2}']),
    ("uuid", [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()]),
]


async def test_canonical_encoding_agrees_with_postgresql(pg: asyncpg.Connection) -> None:
    """Each type's Python canonical part equals the SQL one, value by value (the crux of verify)."""
    from syncd.pg.datetime import register
    from syncd.stores.postgres.types import ColumnMap
    from syncd.verify.canon import NULL, SESSION_SETTINGS, RowCanon

    await register(pg)  # syncd's own connections store years 1 and 9999 exactly

    for name, value in SESSION_SETTINGS.items():
        await pg.execute("SELECT set_config($1, $2, false)", name, value)
    failures = []
    for i, (pg_type, values) in enumerate(CANON_CASES):
        table = f"canon_{i}"
        await pg.execute(f"CREATE TEMP TABLE {table} (n int, v {pg_type})")
        await pg.executemany(f"INSERT INTO {table} VALUES ($1, $2)", list(enumerate(values)))
        await pg.execute(f"INSERT INTO {table} VALUES (-1, NULL)")
        canon = RowCanon.for_columns([ColumnMap("v", "", pg_type)], ["v"])
        col = canon.columns[0]
        rows = await pg.fetch(f"SELECT n, v, {canon.part_sql(0)} AS part FROM {table} ORDER BY n")
        for r in rows:
            python = NULL if r["n"] < 0 else col.part(values[r["n"]])
            if python != r["part"]:
                failures.append(f"{pg_type} {values[r['n']] if r['n'] >= 0 else None!r}: "
                                f"PostgreSQL {r['part']!r}, Python {python!r}")
    assert not failures, "\n".join(failures)
