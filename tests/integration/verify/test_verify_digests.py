"""`syncd verify`'s digest fast path: equal key ranges are passed by digest, a difference
inside an otherwise equal large table is still found with its key and column.

The stores are filled by syncd itself; differences are written to PostgreSQL behind its
back. Verify runs as the real CLI, with digest ranges small enough to give many ranges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from tests.integration.verify.test_verify_tables import found, synced, verify_json

ROWS = 40_000


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


async def test_differences_in_a_large_equal_table_are_found_by_key_and_column(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    cfg = synced(tmp_path, make_config, rows=ROWS)
    code, report = verify_json(cfg, "--digest-rows", "4000")
    everything = checks(report)["everything"]
    assert code == 0 and report["ok"], found(report)
    assert everything["source_rows"] == everything["target_rows"] == ROWS - 5
    assert everything["chunks"] >= 9
    # only the range of the odd edge rows (values SQL leaves to Python) is compared row by row
    assert everything["chunks_by_row"] <= 1

    orig = await pg.fetchrow("SELECT r, j FROM everything WHERE id = 31000")
    await pg.execute("UPDATE everything SET ts = ts + interval '1 microsecond' WHERE id = 23456")
    await pg.execute(f"UPDATE everything SET r = {float.fromhex(orig['r'].hex())!r}::float8 "
                     "* (1 + 2.220446049250313e-16) WHERE id = 31000")
    await pg.execute("UPDATE everything SET j = jsonb_set(j, '{i}', '12001.0') WHERE id = 12001")
    await pg.execute("UPDATE everything SET u = upper(u::text)::uuid WHERE id = 5000")  # the same uuid
    await pg.execute("DELETE FROM everything WHERE id = 37777")
    await pg.execute("UPDATE notes SET at = at + 0.5 WHERE _syncd_rowid = 400")
    code, report = verify_json(cfg, "--digest-rows", "4000")
    assert code == 1
    want = [("everything", [12001], "changed", ["j"]), ("everything", [23456], "changed", ["ts"]),
            ("everything", [31000], "changed", ["r"]), ("everything", [37777], "missing", []),
            ("notes", [400], "changed", ["at"])]
    assert sorted(found(report)) == want
    everything = checks(report)["everything"]
    assert 4 <= everything["chunks_by_row"] <= 5, everything
    assert everything["source_rows"] == ROWS - 5 and everything["target_rows"] == ROWS - 6

    code, by_row = verify_json(cfg, "--digest-rows", "0")
    assert code == 1 and sorted(found(by_row)) == want
    assert checks(by_row)["everything"]["chunks"] == 0


async def test_rejects_inside_equal_ranges_are_accounted_as_before(tmp_path: Path, make_config: Any,
                                                                  pg: asyncpg.Connection) -> None:
    """A value the target type cannot hold makes its range go row by row: the reject is listed."""
    import sqlite3

    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, d DATE, v VARCHAR(4))")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                     [(i, i, f"2024-01-{1 + i % 28:02d}", f"v{i % 100}") for i in range(20_000)])
    conn.execute("UPDATE t SET d = '2024-02-30' WHERE id = 15000")  # not a day: a reject
    conn.commit()
    conn.close()
    cfg = make_config(db)
    from tests.conftest import run_syncd

    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    fast = verify_json(cfg, "--digest-rows", "2000")
    slow = verify_json(cfg, "--digest-rows", "0")
    for code, report in (fast, slow):
        t = checks(report)["t"]
        assert code == 5 and found(report) == [], report
        assert [(r["key"], r["recorded"]) for r in t["rejected"]] == [([15000], True)]
        assert t["source_rows"] == 20_000 and t["target_rows"] == 19_999
    assert checks(fast[1])["t"]["chunks_by_row"] == 1


SETTINGS = ['{"theme": "dark", "language": "en", "notifications": {"email": true, "push": false}}',
            '{"theme": "light", "language": "fr", "notifications": {"email": false, "push": true}}',
            '{"theme": "system", "page_size": 25}']


def _app_row(i: int) -> tuple[Any, ...]:
    tags = json.dumps(["a", "b"][: i % 3])
    meta = (f'{{"price": 1.50, "n": {i}}}' if i % 7 == 0
            else f'{{"source": "api", "tags": {tags}, "page": {i}}}')
    return (i, SETTINGS[i % 3], meta, f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:05.{i % 1000:03d}",
            f"body {i} ü")


async def test_digest_paths_still_find_one_character_one_microsecond_and_number_layout(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    """The digest's cheap paths (JSON parts remembered by text, jsonb text by orjson, timestamps by
    GLOB, NUL found in the row digest, ranges digested in worker processes) miss nothing:
    one character of a repeated JSON text and of a per-row one, 1.50 against 1.5 inside JSON
    (jsonb keeps both), 1 µs of a timestamp and one character of a text are each found."""
    import sqlite3

    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE app (id INTEGER PRIMARY KEY, settings JSON, meta JSON, at DATETIME, "
                 "body TEXT)")
    conn.executemany("INSERT INTO app VALUES (?, ?, ?, ?, ?)", [_app_row(i) for i in range(12_000)])
    conn.commit()
    conn.close()
    cfg = make_config(db)
    from tests.conftest import run_syncd

    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    for workers in ("2", "0"):
        code, report = verify_json(cfg, "--digest-rows", "1000", "--digest-workers", workers)
        app = checks(report)["app"]
        assert code == 0 and report["ok"], found(report)
        assert (app["chunks"], app["chunks_by_row"]) == (13, 0), app  # every range decided by digest

    assert await pg.fetchval("SELECT meta->>'price' FROM app WHERE id = 7000") == "1.50"
    await pg.execute("UPDATE app SET settings = replace(settings::text, 'dark', 'dork')::jsonb "
                     "WHERE id = 3000")
    await pg.execute("UPDATE app SET meta = replace(meta::text, 'api', 'apj')::jsonb WHERE id = 5002")
    await pg.execute("UPDATE app SET meta = jsonb_set(meta, '{price}', '1.5') WHERE id = 7000")
    await pg.execute("UPDATE app SET at = at + interval '1 microsecond' WHERE id = 9004")
    await pg.execute("UPDATE app SET body = 'body 11005 u' WHERE id = 11005")
    want = [("app", [3000], "changed", ["settings"]), ("app", [5002], "changed", ["meta"]),
            ("app", [7000], "changed", ["meta"]), ("app", [9004], "changed", ["at"]),
            ("app", [11005], "changed", ["body"])]
    for workers in ("2", "0"):
        code, report = verify_json(cfg, "--digest-rows", "1000", "--digest-workers", workers)
        assert code == 1 and sorted(found(report)) == want, found(report)
        assert checks(report)["app"]["chunks_by_row"] == 5
