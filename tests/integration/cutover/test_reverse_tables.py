"""Reverse direction for tables: capture in PostgreSQL, and the postgres -> sqlite stream.

Real PostgreSQL (the pgserver fixture), real SQLite files. Results are always read back
from the other store: SQLite after the reverse stream, PostgreSQL for the round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from syncd import config as config_mod
from syncd.config import Target
from syncd.errors import CaptureError
from syncd.model import START, Batch, Change, Op, Position
from syncd.pg import capture as pg_capture
from syncd.pg import changelog
from syncd.pg.connect import connect
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.postgres.source import PostgresSource
from syncd.stores.postgres.tables import plan_table
from syncd.stores.sqlite.schema import describe
from syncd.stores.sqlite.sink import SqliteSink
from syncd.stores.sqlite.source import SqliteSource
from syncd.stream import Stream
from syncd.streams import postgres_to_sqlite as reverse
from syncd.streams.postgres_to_sqlite import REVERSE_SQLITE_STREAM, reverse_table_stream
from syncd.streams.supervisor import sqlite_stream
from syncd.verify.compare import compare_table
from tests.conftest import run_syncd

pytestmark = pytest.mark.asyncio


def reader_for(dsn: str, schema: str = "public") -> changelog.ChangeReader:
    target = Target(dsn=dsn)
    return changelog.ChangeReader(lambda: connect(target, dsn), schema)


@pytest.fixture
async def reader(pg_dsn: str) -> AsyncIterator[changelog.ChangeReader]:
    r = reader_for(pg_dsn)
    yield r
    await r.close()


async def syncd_conn(dsn: str) -> asyncpg.Connection:
    return await connect(Target(dsn=dsn), dsn)


# --- capture in PostgreSQL ------------------------------------------------------------------

async def test_capture_logs_changes_with_typed_images(pg: asyncpg.Connection,
                                                      reader: changelog.ChangeReader) -> None:
    await pg.execute("CREATE TABLE t (a text, b bigint, v double precision, raw bytea, at timestamp, "
                     "PRIMARY KEY (a, b))")
    assert await pg_capture.missing(pg, "public", ["t"]) == ["t"]
    assert await pg_capture.install(pg, "public", ["t"]) == ["t"]
    assert await pg_capture.install(pg, "public", ["t"]) == []  # idempotent
    assert await pg_capture.missing(pg, "public", ["t"]) == []
    await pg.execute("INSERT INTO t VALUES ('x', 1, 5e-324, '\\x00ff00', '2024-01-02 03:04:05.000001')")
    await pg.execute("UPDATE t SET v = 1.7976931348623157e308 WHERE a = 'x'")
    await pg.execute("UPDATE t SET b = 2 WHERE a = 'x'")  # key change: D old + I new
    await pg.execute("DELETE FROM t")
    rows = await reader.read(START, 100, {"t"})
    assert [(r.op, r.key) for r in rows] == [
        (Op.INSERT, ("x", 1)), (Op.UPDATE, ("x", 1)), (Op.DELETE, ("x", 1)), (Op.INSERT, ("x", 2)),
        (Op.DELETE, ("x", 2))]
    assert rows[0].row == {"a": "x", "b": 1, "v": 5e-324, "raw": b"\x00\xff\x00",
                           "at": dt.datetime(2024, 1, 2, 3, 4, 5, 1)}
    assert rows[1].row is not None and rows[1].row["v"] == 1.7976931348623157e308
    assert rows[2].row is None and rows[4].row is None
    positions = [r.position.offset for r in rows]
    assert positions == sorted(positions)
    assert await reader.read(rows[2].position, 100, {"t"}) == rows[3:]
    assert (await reader.pending(rows[1].position, {"t"})).count == 3


async def test_missing_names_tables_without_triggers_and_install_refuses_no_key(
        pg: asyncpg.Connection) -> None:
    await pg.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE nokey (x int)")
    await pg_capture.install(pg, "public", ["a"])
    assert await pg_capture.missing(pg, "public", ["a", "nokey"]) == ["nokey"]
    with pytest.raises(CaptureError, match=r"public\.nokey.*no primary key"):
        await pg_capture.install(pg, "public", ["nokey"])
    with pytest.raises(CaptureError, match=r"public\.ghost.*no such table"):
        await pg_capture.install(pg, "public", ["ghost"])
    # the key changed: the triggers are stale until install runs again
    await pg.execute("ALTER TABLE a ADD COLUMN k int NOT NULL DEFAULT 0; "
                     "ALTER TABLE a DROP CONSTRAINT a_pkey; ALTER TABLE a ADD PRIMARY KEY (id, k)")
    assert await pg_capture.missing(pg, "public", ["a"]) == ["a"]
    assert await pg_capture.install(pg, "public", ["a"]) == ["a"]
    await pg_capture.uninstall(pg, "public", ["a"])
    assert await pg.fetchval("SELECT to_regclass('syncd.changelog')") is None
    assert await pg.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'syncd%'") == 0


async def test_syncd_connections_are_not_captured(pg: asyncpg.Connection, pg_dsn: str,
                                                  reader: changelog.ChangeReader) -> None:
    await pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    await pg_capture.install(pg, "public", ["t"])
    own = await syncd_conn(pg_dsn)
    try:
        assert await own.fetchval("SELECT current_setting('syncd.origin')") == "syncd"
        await own.execute("INSERT INTO t VALUES (1, 'from syncd')")
    finally:
        await own.close()
    await pg.execute("INSERT INTO t VALUES (2, 'from the app')")
    rows = await reader.read(START, 100, {"t"})
    assert [r.key for r in rows] == [(2,)]
    assert await pg.fetchval("SELECT count(*) FROM syncd.changelog") == 1


async def test_truncate_is_logged_as_deletes(pg: asyncpg.Connection,
                                             reader: changelog.ChangeReader) -> None:
    await pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    await pg.execute("INSERT INTO t SELECT generate_series(1, 3)")
    await pg_capture.install(pg, "public", ["t"])
    await pg.execute("TRUNCATE t")
    rows = await reader.read(START, 100, {"t"})
    assert sorted(r.key for r in rows) == [(1,), (2,), (3,)] and {r.op for r in rows} == {Op.DELETE}


async def test_horizon_holds_back_ids_of_open_transactions(pg: asyncpg.Connection, pg_dsn: str,
                                                          reader: changelog.ChangeReader) -> None:
    """Two transactions commit out of id order: the later id must not pass the earlier one."""
    await pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    await pg_capture.install(pg, "public", ["t"])
    first, second = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        tx1 = first.transaction()
        await tx1.start()
        await first.execute("INSERT INTO t VALUES (1)")  # takes the smaller id
        async with second.transaction():
            await second.execute("INSERT INTO t VALUES (2)")
        ids = dict(await pg.fetch("SELECT (pk->>0)::int, id FROM syncd.changelog"))
        assert list(ids) == [2]  # only the committed one is visible
        # "id > checkpoint" alone would now return id of key 2 and checkpoint past key 1
        assert await reader.read(START, 100, {"t"}) == []
        assert await reader.head() == START
        await tx1.commit()
        rows = await reader.read(START, 100, {"t"})
        assert [r.key for r in rows] == [(1,), (2,)]
        assert rows[0].position < rows[1].position
        # a rolled-back transaction leaves a hole that does not hold the horizon back
        await first.execute("INSERT INTO t VALUES (3)")
        tx3 = second.transaction()
        await tx3.start()
        await second.execute("INSERT INTO t VALUES (4)")
        await tx3.rollback()
        await pg.execute("INSERT INTO t VALUES (5)")
        rows = await reader.read(rows[-1].position, 100, {"t"})
        assert [r.key for r in rows] == [(3,), (5,)]
    finally:
        await first.close()
        await second.close()


async def test_prune_only_touches_its_tables_and_wait_wakes_on_notify(
        pg: asyncpg.Connection, reader: changelog.ChangeReader) -> None:
    await pg.execute("CREATE TABLE mine (id int PRIMARY KEY); CREATE TABLE theirs (id int PRIMARY KEY)")
    await pg_capture.install(pg, "public", ["mine", "theirs"])
    await pg.execute("INSERT INTO mine VALUES (1); INSERT INTO theirs VALUES (1)")
    head = await reader.head()
    assert await reader.prune(head, {"mine"}) == 1
    assert await pg.fetchval("SELECT array_agg(tbl) FROM syncd.changelog") == ["theirs"]
    await reader.wait(0.01)  # opens the LISTEN connection
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.ensure_future(reader.wait(10))
    await asyncio.sleep(0.1)
    await pg.execute("INSERT INTO mine VALUES (2)")
    await asyncio.wait_for(waiter, 5)
    assert loop.time() - started < 5


async def test_wait_returns_when_a_count_let_the_horizon_past_unread_changes(
        pg: asyncpg.Connection, pg_dsn: str, reader: changelog.ChangeReader) -> None:
    """A read finds a change held back by an open transaction; the transaction ends (no NOTIFY);
    the stream's count of pending changes moves the horizon past the change. The next wait
    must not sleep its whole timeout: the change is readable and nothing else will wake it."""
    await pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    await pg_capture.install(pg, "public", ["t"])
    await reader.wait(0.01)  # opens the LISTEN connection
    blocker = await asyncpg.connect(pg_dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")
        await pg.execute("INSERT INTO t VALUES (1)")
        await asyncio.sleep(0.2)  # its NOTIFY arrives
        assert await reader.read(START, 100, {"t"}) == []
        await reader.wait(10)  # the NOTIFY is consumed (the wait is cut short either way)
        await tx.rollback()
    finally:
        await blocker.close()
    pending = await reader.pending(START, {"t"})
    assert (pending.count, pending.held_back) == (1, 0)
    try:
        await asyncio.wait_for(reader.wait(60), 5)
    except TimeoutError:
        raise AssertionError("wait slept on with a readable change past the horizon") from None
    assert [r.key for r in await reader.read(START, 100, {"t"})] == [(1,)]


# --- the reverse stream: postgres -> sqlite ---------------------------------------------------

TYPES_SCHEMA = """
CREATE TABLE everything (
    id INTEGER PRIMARY KEY,
    i INTEGER, bi BIGINT, r REAL, d DOUBLE PRECISION, t TEXT, vc VARCHAR(20), b BLOB,
    flag BOOLEAN, ts DATETIME, tstamp TIMESTAMP, day DATE, j JSON, n NUMERIC, dec DECIMAL(10,2),
    u UUID, untyped, weird UNSIGNED BIG INT, nvc NATIVE CHARACTER(70)
)
"""
TYPES_COLUMNS = ["id", "i", "bi", "r", "d", "t", "vc", "b", "flag", "ts", "tstamp", "day", "j", "n", "dec",
                 "u", "untyped", "weird", "nvc"]
BIG_TEXT = "ü" * 100_000
BIG_BLOB = bytes(range(256)) * 1000
U1, U2 = uuid.UUID(int=1), uuid.UUID("5f0c3a52-8f7e-4c1d-9a3b-2d6e1f0a9b8c")
UNICODE = "unicode: 日本語 ✓ 'quotes' \"dq\" \\ \n\t 🎉"

# What the app writes into PostgreSQL after the cutover (asyncpg values) ...
PG_ROWS: list[tuple[Any, ...]] = [
    (10, 0, 2**63 - 1, 0.1 + 0.2, -1e-300, "", "short", b"", False, dt.datetime(2024, 1, 2, 3, 4, 5),
     dt.datetime(2024, 1, 2, 3, 4, 5, 123456), dt.date(2024, 2, 29), '{"a": [1, 2.5, null], "b": "é"}',
     Decimal("12.5"), Decimal("123.45"), U1, "free text", -(2**63), "native"),
    (11, -(2**63), 1, 1.7976931348623157e308, 5e-324, UNICODE, "x" * 20, b"\x00\xff\x00", True,
     dt.datetime(1999, 12, 31, 23, 59, 59, 999000), dt.datetime(1, 1, 1, 0, 0, 0, 1), dt.date(1970, 1, 1),
     "[]", Decimal("-0.5"), Decimal("0"), U2, "42", 7, "ünïcödé"),
    (12, *([None] * 18)),
    (13, 1, 2, float("inf"), float("-inf"), BIG_TEXT, "", BIG_BLOB, True, dt.datetime(2000, 1, 1),
     dt.datetime(2038, 1, 19, 3, 14, 8, 1), dt.date(9999, 12, 31),
     '{"big": 1e400, "s": "just a \\"string\\"\\n", "z": -0.0}', Decimal("1000"), Decimal("99999999.99"),
     U1, "", 0, ""),
]
# ... and exactly what SQLite must then hold.
SQLITE_ROWS: dict[int, tuple[Any, ...]] = {
    10: (10, 0, 2**63 - 1, 0.30000000000000004, -1e-300, "", "short", b"", 0, "2024-01-02 03:04:05",
         "2024-01-02 03:04:05.123456", "2024-02-29", '{"a":[1,2.5,null],"b":"é"}', 12.5, 123.45, str(U1),
         "free text", -(2**63), "native"),
    11: (11, -(2**63), 1, 1.7976931348623157e308, 5e-324, UNICODE, "x" * 20, b"\x00\xff\x00", 1,
         "1999-12-31 23:59:59.999000", "0001-01-01 00:00:00.000001", "1970-01-01", "[]", -0.5, 0, str(U2),
         "42", 7, "ünïcödé"),
    12: (12, *([None] * 18)),
    # the app's own asyncpg writes date.max as PostgreSQL's infinity, and it comes back as such
    13: (13, 1, 2, float("inf"), float("-inf"), BIG_TEXT, "", BIG_BLOB, 1, "2000-01-01 00:00:00",
         "2038-01-19 03:14:08.000001", "infinity", '{"s":"just a \\"string\\"\\n","z":0.0,"big":1' +
         "0" * 400 + "}", 1000, 99999999.99, str(U1), "", 0, ""),
}


async def forward_setup(tmp_path: Path, make_config: Any, schema: str, rows: str = "",
                        **stream: Any) -> config_mod.Config:
    """A SQLite app database synced to PostgreSQL by syncd itself, reverse capture installed and
    the reverse start recorded (what the cutover does at the flip)."""
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(schema + ";" + rows)
    conn.commit()
    conn.close()
    path = make_config(db)
    text = path.read_text()
    for key, value in stream.items():  # the fixture already sets some stream keys: replace them
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        at = lines.index("[stream]") + 1
        text = "\n".join([*lines[:at], f"{key} = {value!r}", *lines[at:]]) + "\n"
    path.write_text(text)
    run_syncd("--config", str(path), "init")
    run_syncd("--config", str(path), "run", "--until-caught-up")
    cfg = config_mod.load(path)
    assert cfg.sqlite is not None
    await reverse.install_capture(cfg, cfg.target.dsn, cfg.sqlite)
    assert await reverse.missing_capture(cfg, cfg.target.dsn, cfg.sqlite) == []
    await reverse.record_start(cfg, cfg.target.dsn, cfg.sqlite)
    return cfg


async def run_reverse(cfg: config_mod.Config) -> Stream:
    assert cfg.sqlite is not None
    stream = reverse_table_stream(cfg, cfg.target.dsn, cfg.sqlite)
    try:
        await asyncio.wait_for(stream.run(asyncio.Event(), until_caught_up=True), 60)
    finally:
        assert isinstance(stream.source, PostgresSource)
        await stream.source.close()
    return stream


def sqlite_rows(db: Path, table: str, columns: str = "*") -> dict[Any, tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return {r[0]: tuple(r) for r in conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1")}
    finally:
        conn.close()


def sqlite_value(db: Path, sql: str, *params: Any) -> Any:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


async def differences(cfg: config_mod.Config, pg: asyncpg.Connection, table: str) -> list[Any]:
    """compare.py's row-by-row check: SQLite rows mapped forward must equal PostgreSQL's."""
    assert cfg.sqlite is not None
    conn = sqlite3.connect(cfg.sqlite.path)
    try:
        described = describe(conn, table, no_primary_key="rowid")
    finally:
        conn.close()
    existing = await PostgresSink.existing_columns(pg, "public", table)
    tt = plan_table(described, cfg.target, existing)
    return await compare_table(str(cfg.sqlite.path), pg, tt)


async def test_every_type_comes_back_as_sqlite_held_it(tmp_path: Path, make_config: Any,
                                                       pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config, TYPES_SCHEMA,
                              "INSERT INTO everything (id, t, r, flag) VALUES (1, 'from sqlite', 0.5, 1);"
                              "INSERT INTO everything (id, t) VALUES (2, 'also from sqlite')")
    assert cfg.sqlite is not None
    db = cfg.sqlite.path
    # the app, now on PostgreSQL, writes every type
    await pg.executemany(f"INSERT INTO everything VALUES ({', '.join(f'${i}' for i in range(1, 20))})",
                         PG_ROWS)
    await pg.execute("UPDATE everything SET t = 'changed in pg', flag = false WHERE id = 1")
    await run_reverse(cfg)
    held = sqlite_rows(db, "everything", ", ".join(TYPES_COLUMNS))
    for key, want in SQLITE_ROWS.items():
        got = held[key]
        for col, a, b in zip(TYPES_COLUMNS, got, want, strict=True):
            assert a == b and type(a) is type(b), f"row {key} column {col}: {a!r} != {b!r}"
    assert held[1][5] == "changed in pg" and held[1][8] == 0 and held[1][3] == 0.5
    # round trip: mapping SQLite's rows forward again gives exactly what PostgreSQL holds
    assert await differences(cfg, pg, "everything") == []

    # updates, deletes and a primary-key change
    await pg.execute("UPDATE everything SET r = $1, t = 'x', b = '\\x01', j = '{\"k\": {\"n\": true}}', "
                     "flag = false WHERE id = 12", 2.0**-1022)
    await pg.execute("DELETE FROM everything WHERE id IN (2, 11)")
    await pg.execute("UPDATE everything SET id = 14 WHERE id = 10")
    await run_reverse(cfg)
    held = sqlite_rows(db, "everything", ", ".join(TYPES_COLUMNS))
    assert sorted(held) == [1, 12, 13, 14]
    assert held[12][3] == 2.0**-1022 and held[12][5] == "x" and held[12][7] == b"\x01"
    assert held[12][12] == '{"k":{"n":true}}' and held[12][8] == 0
    assert held[14][1:] == SQLITE_ROWS[10][1:]
    assert await differences(cfg, pg, "everything") == []
    # no echo: syncd's writes into SQLite were not captured by the forward triggers
    assert sqlite_value(db, "SELECT count(*) FROM _syncd_changelog") == 0
    assert sqlite_value(db, "SELECT suppress FROM _syncd_origin") == 0
    checkpoint = sqlite_value(db, "SELECT position FROM _syncd_checkpoints WHERE stream = ?",
                              REVERSE_SQLITE_STREAM)
    assert checkpoint == await pg.fetchval("SELECT max(id) FROM syncd.changelog")


async def test_rows_sqlite_refuses_are_recorded_not_dropped(tmp_path: Path, make_config: Any,
                                                            pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config,
                              "CREATE TABLE m (id INTEGER PRIMARY KEY, n INTEGER CHECK (n >= 0), r REAL)")
    assert cfg.sqlite is not None
    await pg.execute("INSERT INTO m VALUES (1, 5, 1.5), (2, -1, 0), (3, 1, 'NaN'), (4, 2, 2)")
    stream = await run_reverse(cfg)
    db = cfg.sqlite.path
    assert sorted(sqlite_rows(db, "m")) == [1, 4]
    assert stream.status.rejects == 2
    rejects = sqlite_rows(db, "_syncd_rejects", "key, object, error, row_image, resolved_at")
    assert sorted(rejects) == ["[2]", "[3]"]
    assert "CHECK constraint failed" in rejects["[2]"][2] and rejects["[2]"][1] == "m"
    assert "NaN" in rejects["[3]"][2] and json.loads(rejects["[3]"][3])["n"] == 1
    # once the row is fixed in PostgreSQL, the next change of that key applies and resolves it
    await pg.execute("UPDATE m SET n = 0 WHERE id = 2")
    await run_reverse(cfg)
    assert sqlite_rows(db, "m")[2] == (2, 0, 0.0)
    assert sqlite_value(db, "SELECT resolved_at IS NOT NULL FROM _syncd_rejects WHERE key = '[2]'") == 1
    assert sqlite_value(db, "SELECT resolved_at IS NULL FROM _syncd_rejects WHERE key = '[3]'") == 1


async def test_without_a_start_position_the_stream_refuses(tmp_path: Path, make_config: Any,
                                                           pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config, "CREATE TABLE k (id INTEGER PRIMARY KEY)")
    assert cfg.sqlite is not None
    sqlite_exec(cfg.sqlite.path, "DELETE FROM _syncd_checkpoints")
    with pytest.raises(CaptureError, match="no start position"):
        await run_reverse(cfg)


async def test_a_change_for_a_table_sqlite_does_not_know_names_it(tmp_path: Path, make_config: Any,
                                                                  pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config, "CREATE TABLE k (id INTEGER PRIMARY KEY)")
    assert cfg.sqlite is not None
    sink = await SqliteSink.open(cfg.sqlite)
    try:
        batch = Batch([Change(Op.INSERT, "ghost", (1,), {"id": 1}, Position(5))], Position(5))
        with pytest.raises(CaptureError, match="'ghost'"):
            await sink.apply(REVERSE_SQLITE_STREAM, batch)
    finally:
        await sink.close()


def sqlite_exec(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()


KILL_SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from syncd import config
from syncd.streams.postgres_to_sqlite import reverse_table_stream

cfg = config.load(Path(sys.argv[1]))
after = int(sys.argv[2])

async def main() -> None:
    stream = reverse_table_stream(cfg, cfg.target.dsn, cfg.sqlite)
    batches = 0

    async def on_batch(_batch: object) -> None:
        nonlocal batches
        batches += 1
        if batches == after:
            os.kill(os.getpid(), signal.SIGKILL)

    stream.on_batch = on_batch
    await stream.run(asyncio.Event(), until_caught_up=True)

asyncio.run(main())
"""


def logged_keys(rows: list[asyncpg.Record], upto: int) -> set[int]:
    return {json.loads(r["pk"])[0] for r in rows if r["id"] <= upto}


async def test_checkpoint_is_never_ahead_after_sigkill(tmp_path: Path, make_config: Any,
                                                       pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config, "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)",
                              batch_size=5, prune_interval=3600.0)
    assert cfg.sqlite is not None and cfg.path is not None
    db = cfg.sqlite.path
    for i in range(1000, 1400):
        await pg.execute("INSERT INTO items VALUES ($1, $2)", i, f"v{i}")
    log_rows = await pg.fetch("SELECT id, pk::text AS pk FROM syncd.changelog ORDER BY id")

    def check() -> int:
        position = sqlite_value(db, "SELECT position FROM _syncd_checkpoints WHERE stream = ?",
                                REVERSE_SQLITE_STREAM)
        assert set(sqlite_rows(db, "items")) == logged_keys(log_rows, position)
        assert sqlite_value(db, "SELECT suppress FROM _syncd_origin") == 0
        return int(position)

    # killed right after a batch committed: exactly those batches are in, and the checkpoint says so
    for batches, last in ((3, 14), (4, 34)):
        proc = await asyncio.create_subprocess_exec(*syncd_python(KILL_SCRIPT, str(cfg.path), str(batches)))
        assert await proc.wait() == -signal.SIGKILL
        assert check() == log_rows[last]["id"]
    # killed while it streams, at whatever point the next batch is
    before = check()
    proc = await asyncio.create_subprocess_exec(*syncd_python(KILL_SCRIPT, str(cfg.path), "100000"))
    for _ in range(2000):
        if sqlite_value(db, "SELECT position FROM _syncd_checkpoints WHERE stream = ?",
                        REVERSE_SQLITE_STREAM) > before:
            break
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert before < check() <= log_rows[-1]["id"]
    await run_reverse(cfg)
    assert check() == log_rows[-1]["id"]
    assert len(sqlite_rows(db, "items")) == 400


def syncd_python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


async def test_forward_and_reverse_together_do_not_echo(tmp_path: Path, make_config: Any,
                                                        pg: asyncpg.Connection) -> None:
    cfg = await forward_setup(tmp_path, make_config,
                              "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, n REAL)",
                              "INSERT INTO notes VALUES (1, 'one', 1.0), (2, 'two', 2.0)",
                              prune_interval=3600.0, poll_interval=0.1)
    assert cfg.sqlite is not None
    db = cfg.sqlite.path
    source = await SqliteSource.open(cfg.sqlite)
    forward = sqlite_stream(cfg, cfg.target.dsn, source)
    backward = reverse_table_stream(cfg, cfg.target.dsn, cfg.sqlite)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in (forward, backward)]
    app = sqlite3.connect(db, timeout=10)
    try:
        for i in range(40):  # the app on both sides at once, on different keys
            app.execute("INSERT INTO notes VALUES (?, ?, ?)", (100 + i, f"sqlite {i}", i / 3))
            if i % 3 == 0:
                app.execute("UPDATE notes SET body = body || '!' WHERE id = ?", (100 + i // 2,))
            app.commit()
            await pg.execute("INSERT INTO notes VALUES ($1, $2, $3)", 200 + i, f"pg {i}", i / 7)
            if i % 4 == 0:
                await pg.execute("UPDATE notes SET n = n + 1 WHERE id = $1", 200 + i // 2)
            if i == 20:
                await pg.execute("DELETE FROM notes WHERE id = 2")
            await asyncio.sleep(0.01)
        for _ in range(300):
            if (await differences(cfg, pg, "notes") == [] and sqlite_value(db, "SELECT count(*) FROM notes")
                    == await pg.fetchval("SELECT count(*) FROM notes") == 81):
                break
            await asyncio.sleep(0.1)
    finally:
        app.close()
        stop.set()
        await asyncio.gather(*tasks)
        await source.close()
        assert isinstance(backward.source, PostgresSource)
        await backward.source.close()
    assert await differences(cfg, pg, "notes") == []
    assert len(sqlite_rows(db, "notes")) == 81
    # each changelog holds its own side's app writes only
    sqlite_keys = {json.loads(pk)[0] for (pk,) in sqlite3.connect(db).execute(
        "SELECT pk FROM _syncd_changelog")}
    assert sqlite_keys and all(100 <= k < 140 for k in sqlite_keys), sqlite_keys
    pg_keys = {json.loads(r["pk"])[0] for r in await pg.fetch("SELECT pk::text AS pk FROM syncd.changelog")}
    assert pg_keys and all(k == 2 or 200 <= k < 240 for k in pg_keys), pg_keys
    assert forward.status.applied > 0 and backward.status.applied > 0
