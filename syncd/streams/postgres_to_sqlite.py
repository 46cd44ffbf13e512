"""The reverse table stream, PostgreSQL -> SQLite, that keeps a rollback lossless.

Built like the forward ``sqlite`` stream (:func:`syncd.streams.supervisor.sqlite_stream`), with the
roles swapped: :class:`~syncd.stores.postgres.source.PostgresSource` reads ``syncd.changelog``,
:class:`~syncd.stores.sqlite.sink.SqliteSink` writes the app's SQLite file and keeps the
checkpoint there. The cutover installs capture (:func:`install_capture`), records the start
position at the flip (:func:`record_start`) and then starts the stream.

The stream is named ``postgres→sqlite``: the name is the key of its checkpoint row in the
SQLite file's ``_syncd_checkpoints``, a label in ``/metrics`` (Prometheus label values are
UTF-8) and a field of ``/status``; nothing parses it.
"""

from __future__ import annotations

import asyncio
import functools

from syncd.config import Config, SqliteConfig
from syncd.model import Phase, Position
from syncd.pg import capture as pg_capture
from syncd.pg import changelog
from syncd.pg.connect import close_quietly, connect
from syncd.ports import Sink
from syncd.service.health import Liveness
from syncd.status import NOT_STARTED, StreamReport
from syncd.stores.postgres.source import PostgresSource
from syncd.stores.sqlite.connect import read_tables
from syncd.stores.sqlite.schema import uri
from syncd.stores.sqlite.sink import SqliteSink
from syncd.stream import Stream

REVERSE_SQLITE_STREAM = "postgres→sqlite"


def reverse_source(config: Config, dsn: str, sqlite_config: SqliteConfig) -> PostgresSource:
    """The PostgreSQL side of the reverse stream (opens its connections lazily)."""
    reader = changelog.ChangeReader(lambda: connect(config.target, dsn), config.target.schema)
    return PostgresSource(reader, functools.partial(read_tables, sqlite_config), config.target.table_for)


def reverse_table_stream(config: Config, dsn: str, sqlite_source_config: SqliteConfig,
                         liveness: Liveness | None = None,
                         source: PostgresSource | None = None) -> Stream:
    """The ``reverse:sqlite`` stream. Close ``stream.source`` (a PostgresSource) when done."""
    source = source or reverse_source(config, dsn, sqlite_source_config)
    stream: Stream

    async def open_sink() -> Sink:
        await source.ensure()
        sink = await SqliteSink.open(sqlite_source_config, strict=config.target.strict,
                                     on_reject=stream.count_rejects, source_id=source.source_id)
        try:
            stream.count_rejects(await sink.count_rejects(REVERSE_SQLITE_STREAM) - stream.status.rejects)
        except BaseException:
            await sink.close()
            raise
        return sink

    stream = Stream(REVERSE_SQLITE_STREAM, source, open_sink, config.stream,
                    on_progress=liveness.observe if liveness else None,
                    busy=liveness.busy if liveness else None)
    return stream


async def install_capture(config: Config, dsn: str, sqlite_config: SqliteConfig) -> list[str]:
    """Install reverse capture on the PostgreSQL tables of the SQLite stream (idempotent);
    return the tables whose triggers were created."""
    tables = await _table_names(config, sqlite_config)
    conn = await connect(config.target, dsn)
    try:
        return await pg_capture.install(conn, config.target.schema, tables)
    finally:
        await close_quietly(conn)


async def missing_capture(config: Config, dsn: str, sqlite_config: SqliteConfig) -> list[str]:
    """Tables of the SQLite stream whose PostgreSQL changes would not be captured."""
    tables = await _table_names(config, sqlite_config)
    conn = await connect(config.target, dsn)
    try:
        return await pg_capture.missing(conn, config.target.schema, tables)
    finally:
        await close_quietly(conn)


async def record_start(config: Config, dsn: str, sqlite_config: SqliteConfig) -> Position:
    """Record the reverse stream's start in SQLite: the changelog's current head (at the flip,
    SQLite holds everything). Returns it."""
    source = reverse_source(config, dsn, sqlite_config)
    try:
        await source.ensure()
        head = await source.head()
        sink = await SqliteSink.open(sqlite_config, source_id=source.source_id)
        try:
            await sink.set_checkpoint(REVERSE_SQLITE_STREAM, head)
        finally:
            await sink.close()
    finally:
        await source.close()
    return head


async def _table_names(config: Config, sqlite_config: SqliteConfig) -> list[str]:
    """The PostgreSQL tables of the SQLite stream."""
    tables = await asyncio.to_thread(read_tables, sqlite_config)
    return [config.target.table_for(t.name) for t in tables]


async def stored_status(config: Config, dsn: str) -> list[StreamReport]:
    """The reverse table stream's status from the stores (the daemon stopped): checkpoint in
    SQLite, pending changes and their age in PostgreSQL's changelog, open rejects in SQLite."""
    import sqlite3
    import time

    from syncd.stores.sqlite.sink import CHECKPOINTS, REJECTS

    assert config.sqlite is not None
    path = config.sqlite.path
    tables = await _table_names(config, config.sqlite)

    def read_sqlite() -> tuple[int | None, int]:
        db = sqlite3.connect(uri(path, "ro"), uri=True)
        try:
            have = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            row = db.execute(f"SELECT position FROM {CHECKPOINTS} WHERE stream = ?",
                             (REVERSE_SQLITE_STREAM,)).fetchone() if CHECKPOINTS in have else None
            rejects = db.execute(f"SELECT count(*) FROM {REJECTS} WHERE stream = ? AND resolved_at IS NULL",
                                 (REVERSE_SQLITE_STREAM,)).fetchone()[0] if REJECTS in have else 0
            return (int(row[0]) if row else None), int(rejects)
        finally:
            db.close()

    checkpoint, rejects = await asyncio.to_thread(read_sqlite)
    conn = await connect(config.target, dsn)
    try:
        count, oldest, head = 0, None, checkpoint or 0
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", pg_capture.CHANGELOG):
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, min(ts) AS oldest, max(id) AS head FROM {pg_capture.CHANGELOG} "
                "WHERE id > $1 AND tbl = ANY($2)", checkpoint or 0, tables)
            count, oldest, head = int(row["n"]), row["oldest"], int(row["head"] or head)
    finally:
        await close_quietly(conn)
    lag = 0.0 if not count or oldest is None else max(0.0, time.time() - float(oldest))
    phase = Phase.STREAMING.value if checkpoint is not None else NOT_STARTED
    return [{"name": REVERSE_SQLITE_STREAM, "phase": phase,
             "source_position": head, "checkpoint": checkpoint, "pending": count,
             "lag_seconds": round(lag, 3), "rejects": rejects, "snapshot_copied": None,
             "daemon": "not running"}]
