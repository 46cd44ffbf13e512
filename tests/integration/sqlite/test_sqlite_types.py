"""Every declared type survives the trip: SQLite -> PostgreSQL, by snapshot and by stream.

Values are read back from PostgreSQL with asyncpg and compared with what was
written into SQLite (after the documented mapping), never with what the test
passed to syncd.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd

SCHEMA = """
CREATE TABLE everything (
    id INTEGER PRIMARY KEY,
    i INTEGER, bi BIGINT, r REAL, d DOUBLE PRECISION, t TEXT, vc VARCHAR(20), b BLOB,
    flag BOOLEAN, ts DATETIME, tstamp TIMESTAMP, day DATE, j JSON, n NUMERIC, dec DECIMAL(10,2),
    u UUID, untyped, weird UNSIGNED BIG INT, nvc NATIVE CHARACTER(70)
)
"""
COLUMNS = ["id", "i", "bi", "r", "d", "t", "vc", "b", "flag", "ts", "tstamp", "day", "j", "n", "dec",
           "u", "untyped", "weird", "nvc"]
BIG_TEXT = "ü" * 300_000
BIG_BLOB = bytes(range(256)) * 4000

ROWS: list[tuple[Any, ...]] = [
    (1, 0, 2**63 - 1, 0.1 + 0.2, -1e-300, "", "short", b"", 0, "2024-01-02 03:04:05",
     "2024-01-02T03:04:05.123456", "2024-02-29", '{"a": [1, 2.5, null], "b": "é"}', 12.5, "123.45",
     str(uuid.UUID(int=1)), "free text", -(2**63), "native"),
    (2, -(2**63), 1, 1.7976931348623157e308, 5e-324, "unicode: 日本語 ✓ 'quotes' \"dq\" \\ \n\t",
     "x" * 20, b"\x00\xff\x00", 1, "2024-01-02T03:04:05Z", "1999-12-31 23:59:59.999", "1970-01-01",
     "[]", -0.5, 0, str(uuid.uuid4()), 42, 7, "ünïcödé"),
    (3, None, None, None, None, None, None, None, None, None, None, None, None, None, None, None,
     None, None, None),
    (4, 1, 2, float("inf"), float("-inf"), BIG_TEXT, "", BIG_BLOB, "true", 1700000000,
     1700000000123, "2000-01-01", '"just a string"', "3.14159265358979323846", "1e3",
     str(uuid.UUID(int=2**128 - 1)), 1.5, 0, ""),
]


def stored(db: Path) -> list[tuple[Any, ...]]:
    """What SQLite really holds (its affinities convert some values on insert)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM everything ORDER BY id").fetchall()
    finally:
        conn.close()


def expected(row: tuple[Any, ...]) -> dict[str, Any]:
    """The documented mapping of one SQLite row, as asyncpg returns it."""
    v = dict(zip(COLUMNS, row, strict=True))

    def ts(x: Any) -> dt.datetime | None:
        if x is None:
            return None
        if isinstance(x, int):
            secs = x / 1000 if x > 1e11 else x
            return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=secs)
        d = dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
        return d.astimezone(dt.UTC).replace(tzinfo=None) if d.tzinfo else d

    def boolean(x: Any) -> bool | None:
        return None if x is None else (x in (1, "true"))

    return {
        "id": v["id"], "i": v["i"], "bi": v["bi"], "r": v["r"], "d": v["d"], "t": v["t"],
        "vc": v["vc"], "b": v["b"], "flag": boolean(v["flag"]), "ts": ts(v["ts"]),
        "tstamp": ts(v["tstamp"]),
        "day": dt.date.fromisoformat(v["day"]) if v["day"] else None,
        "j": json.loads(v["j"]) if v["j"] else None,
        "n": None if v["n"] is None else Decimal(repr(v["n"])),
        "dec": None if v["dec"] is None else Decimal(repr(v["dec"])),
        "u": uuid.UUID(v["u"]) if v["u"] else None,
        "untyped": None if v["untyped"] is None else (
            repr(v["untyped"]) if isinstance(v["untyped"], float) else str(v["untyped"])),
        "weird": v["weird"], "nvc": v["nvc"],
    }


async def read_back(pg: asyncpg.Connection) -> dict[int, dict[str, Any]]:
    rows = await pg.fetch("SELECT * FROM everything ORDER BY id")
    out = {}
    for r in rows:
        d = dict(r)
        d["j"] = json.loads(d["j"]) if d["j"] is not None else None
        out[d["id"]] = d
    return out


async def test_types_round_trip_snapshot_and_stream(tmp_path: Path, make_config: Any,
                                                    pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA)
    conn.executemany(f"INSERT INTO everything VALUES ({', '.join('?' * len(COLUMNS))})", ROWS[:2])
    conn.commit()
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    # the declared types became the documented PostgreSQL types
    types = dict(await pg.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name='everything'"))
    assert types["i"] == "bigint" and types["weird"] == "bigint"
    assert types["r"] == "double precision" and types["flag"] == "boolean"
    assert types["ts"] == "timestamp without time zone" and types["j"] == "jsonb"
    assert types["vc"] == "character varying" and types["b"] == "bytea" and types["u"] == "uuid"
    assert types["untyped"] == "text" and types["dec"] == "numeric" and types["day"] == "date"

    # rows 3 and 4 arrive through the changelog, row 1 is updated, row 2 deleted and re-inserted
    conn.executemany(f"INSERT INTO everything VALUES ({', '.join('?' * len(COLUMNS))})", ROWS[2:])
    conn.execute("DELETE FROM everything WHERE id = 2")
    conn.execute(f"INSERT INTO everything VALUES ({', '.join('?' * len(COLUMNS))})", ROWS[1])
    conn.commit()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")

    got = await read_back(pg)
    assert sorted(got) == [1, 2, 3, 4]
    held = stored(db)
    assert isinstance(held[3][COLUMNS.index("n")], float)  # NUMERIC affinity made it a REAL
    for row in held:
        assert got[row[0]] == expected(row), f"row {row[0]}"

    # a streamed update of every column, read back again
    conn.execute("UPDATE everything SET r = ?, t = ?, b = ?, j = ?, flag = 'f' WHERE id = 3",
                 (2.0**-1022, "x", b"\x01", '{"k": {"nested": true}}'))
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    got = await read_back(pg)
    assert got[3]["r"] == 2.0**-1022 and got[3]["t"] == "x" and got[3]["b"] == b"\x01"
    assert got[3]["j"] == {"k": {"nested": True}} and got[3]["flag"] is False
    assert await pg.fetchval("SELECT count(*) FROM syncd.rejects") == 0


async def test_column_type_override_and_quoted_identifiers(tmp_path: Path, make_config: Any,
                                                           pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE "order" ("select" INTEGER, "user data" TEXT, "from" TEXT, '
                 'PRIMARY KEY ("select", "from"))')
    conn.execute('CREATE TABLE "user data" (id TEXT PRIMARY KEY, "group" INTEGER)')
    conn.execute('INSERT INTO "order" VALUES (1, \'a\', \'x\'), (2, \'b\', \'y\')')
    conn.execute('INSERT INTO "user data" VALUES (\'k1\', 5)')
    conn.commit()
    cfg = make_config(db, extra='[target.column_types]\n"order.select" = "integer"\n')
    run_syncd("--config", str(cfg), "init")
    conn.execute('UPDATE "order" SET "from" = \'z\' WHERE "select" = 1')  # primary-key change
    conn.execute('INSERT INTO "user data" VALUES (\'k2\', NULL)')
    conn.commit()
    conn.close()
    run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert await pg.fetchval("SELECT data_type FROM information_schema.columns "
                             "WHERE table_name = 'order' AND column_name = 'select'") == "integer"
    rows = await pg.fetch('SELECT "select", "user data", "from" FROM "order" ORDER BY 1')
    assert [tuple(r) for r in rows] == [(1, "a", "z"), (2, "b", "y")]
    rows = await pg.fetch('SELECT id, "group" FROM "user data" ORDER BY 1')
    assert [tuple(r) for r in rows] == [("k1", 5), ("k2", None)]
