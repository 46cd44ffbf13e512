"""``syncd verify``: evidence that PostgreSQL holds what the old stores hold.

A verify run is a list of *checks*, one per table, one per Chroma collection,
and one search-parity check per collection; each returns a
:class:`~syncd.verify.report.CheckResult`. Two modes: ``counts`` (row and item
counts; what the cutover preflight runs by default) and ``full`` (counts,
chunked checksums computed in PostgreSQL, the differing keys and columns; for
collections ids, documents, metadata, float32 vectors bit for bit, and search
recall). Rows that differ only because a change is in flight are
re-checked once the stream has passed them; only persistent differences are
reported, and quarantined rows (``syncd.rejects``) are listed apart.

How a table is compared: :mod:`syncd.verify.tables`; a collection:
:mod:`syncd.verify.collections` and :mod:`syncd.verify.search`; the canonical
encoding both sides hash: :mod:`syncd.verify.canon`; decisions: ``docs/verify.md``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

import asyncpg

from syncd.config import Config
from syncd.errors import ConfigError, SyncdError
from syncd.model import SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, translate
from syncd.ports.tables import Table
from syncd.sql import STATE_SCHEMA
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.postgres.tables import TargetTable, plan_table
from syncd.stores.sqlite.schema import discover, uri
from syncd.streams.supervisor import SQLITE_STREAM
from syncd.verify.canon import SESSION_SETTINGS
from syncd.verify.collection_setup import ChromaVerify
from syncd.verify.collections import CollectionOptions
from syncd.verify.report import ERROR, SKIPPED, CheckResult, Report
from syncd.verify.rows import Stall, TableContext, TableOptions
from syncd.verify.schema import schema_warnings
from syncd.verify.sqlite import SqliteReader
from syncd.verify.tables import TableCheck

MODES = ("full", "counts")
_BYTE_ORDER = {"c", "posix", "c.utf8", "c.utf-8"}


class Check(Protocol):
    """One thing verify compares: a table, a collection, or a collection's search parity."""

    @property
    def kind(self) -> str:
        """``table``, ``collection`` or ``search``."""
        ...

    @property
    def name(self) -> str:
        ...

    async def run(self, mode: str) -> CheckResult:
        ...


@dataclass(frozen=True, slots=True)
class Skipped:
    """A check verify cannot do yet; reported, never silently dropped."""

    kind: str
    name: str
    reason: str

    async def run(self, mode: str) -> CheckResult:
        return CheckResult(self.kind, self.name, status=SKIPPED, detail=self.reason)


class Progress:
    """Rows checked per table, redrawn in place on a terminal; nothing otherwise."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out if out is not None and out.isatty() else None
        self.rows: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self._drawn = 0.0

    def start(self, name: str, total: int | None) -> None:
        self.rows[name], self.totals[name] = 0, total

    def advance(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows
        now = time.monotonic()
        if self.out is None or now - self._drawn < 0.2:
            return
        self._drawn = now
        total = self.totals.get(name)
        share = f" / {total:,} ({100 * self.rows[name] / total:.0f} %)" if total else ""
        self.out.write(f"\r\x1b[Kverifying {name}: {self.rows[name]:,}{share} rows")
        self.out.flush()

    def clear(self) -> None:
        if self.out is not None:
            self.out.write("\r\x1b[K")
            self.out.flush()


async def _byte_ordered(conn: asyncpg.Connection, tt: TargetTable) -> bool:
    """Whether PostgreSQL orders the table's text key columns byte-wise, like SQLite."""
    rows = await conn.fetch(
        """SELECT a.attcollation <> 0 AS collatable, to_jsonb(c) AS coll
           FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           LEFT JOIN pg_collation c ON c.oid = a.attcollation
           WHERE n.nspname = $1 AND t.relname = $2 AND a.attname = ANY($3::text[])""",
        tt.schema, tt.name, list(tt.source.pk))
    db = json.loads(await conn.fetchval(
        "SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()"))
    for r in rows:
        if not r["collatable"]:
            continue
        coll = json.loads(r["coll"]) if r["coll"] else {}
        provider, locale = coll.get("collprovider"), coll.get("collcollate")
        if provider == "d":  # the database default
            provider, locale = db.get("datlocprovider", "c"), db.get("datcollate")
        if provider == "b":
            continue  # builtin providers order by code point, which is UTF-8 byte order
        if provider != "c" or str(locale or "").lower() not in _BYTE_ORDER:
            return False
    return True


async def _session(conn: asyncpg.Connection) -> None:
    for name, value in SESSION_SETTINGS.items():
        await conn.execute("SELECT set_config($1, $2, false)", name, value)


def discover_tables(cfg: Config) -> list[Table]:
    assert cfg.sqlite is not None
    if not cfg.sqlite.path.exists():
        raise SyncdError(f"SQLite database {cfg.sqlite.path} does not exist (source.sqlite.path)")
    conn = sqlite3.connect(uri(cfg.sqlite.path, "ro"), uri=True, timeout=30)
    try:
        return discover(conn, tables=cfg.sqlite.tables, exclude=cfg.sqlite.exclude,
                        no_primary_key=cfg.sqlite.no_primary_key)
    finally:
        conn.close()


def _choose(tables: Sequence[Table], names: Sequence[str] | None) -> list[Table]:
    if not names:
        return list(tables)
    by_name = {t.name: t for t in tables}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--table {unknown[0]}: not a synced table (synced: "
                          f"{', '.join(sorted(by_name)) or 'none'})")
    return [by_name[n] for n in dict.fromkeys(names)]


def _workers(options: TableOptions) -> int:
    if options.digest_workers is not None:
        return options.digest_workers
    return min(os.cpu_count() or 1, MAX_DIGEST_WORKERS)


MAX_DIGEST_WORKERS = 4


async def _stream_problem(conn: asyncpg.Connection, reader: SqliteReader) -> str | None:
    """Why the tables cannot be compared yet, or None.

    The checkpoint row is read whole (``to_jsonb``) so that verify reads what it needs from
    any version of syncd's state tables, and never migrates them: it writes nothing.
    """
    if not await pgstate.has_state(conn):
        return ("syncd has not run against this database (no syncd.checkpoints): "
                "run `syncd init` and `syncd run`")
    text = await conn.fetchval(f"SELECT to_jsonb(c)::text FROM {STATE_SCHEMA}.checkpoints c "
                               "WHERE stream = $1", SQLITE_STREAM)
    if text is None:
        return "the sqlite stream has not started: run `syncd run`"
    row = json.loads(text)
    snap = SnapshotState.from_json(row["snapshot"]) if row.get("snapshot") else None
    if snap is not None and not snap.complete:
        return (f"the sqlite stream is still copying its snapshot ({sum(snap.copied.values()):,} rows "
                "so far): verify once it is streaming")
    recorded, current = row.get("source_id"), await reader.generation()
    if recorded and current and recorded != current:
        return ("capture was reinstalled in the SQLite database since the stream's last checkpoint "
                "(its change log is new): run `syncd run` so the stream reconciles, then verify")
    return None


async def _table_checks(cfg: Config, conn: asyncpg.Connection, reader: SqliteReader,
                        tables: Sequence[Table], options: TableOptions, progress: Progress
                        ) -> list[Check | CheckResult]:
    async def checkpoint() -> int:
        value = await conn.fetchval(
            f"SELECT position FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", SQLITE_STREAM)
        return int(value or 0)

    ctx = TableContext(conn, reader, SQLITE_STREAM, checkpoint, progress.advance,
                       Stall(options.stall_seconds))
    out: list[Check | CheckResult] = []
    problem = await _stream_problem(conn, reader)
    for table in tables:
        if problem:
            out.append(CheckResult("table", table.name, status=ERROR, detail=problem))
            continue
        pg_name = cfg.target.table_for(table.name)
        existing = await PostgresSink.existing_columns(conn, cfg.target.schema, pg_name)
        if existing is None:
            out.append(CheckResult("table", table.name, status=ERROR,
                                   detail=f"target table {cfg.target.schema}.{pg_name} does not exist"))
            continue
        try:
            tt = plan_table(table, cfg.target, existing)
        except SyncdError as exc:
            out.append(CheckResult("table", table.name, status=ERROR, detail=exc.message))
            continue
        out.append(TableCheck(tt, ctx, options, await _byte_ordered(conn, tt)))
    return out


async def verify(cfg: Config, dsn: str, *, mode: str = "full", tables: Sequence[str] | None = None,
                 collections: Sequence[str] | None = None, options: TableOptions | None = None,
                 progress_to: TextIO | None = None,
                 collection_options: CollectionOptions | None = None) -> Report:
    """Compare the configured sources with PostgreSQL; never writes to either store.

    ``--table`` alone narrows the run to tables, ``--collection`` alone to collections.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    options = options or TableOptions()
    chroma: ChromaVerify | None = None
    started = time.monotonic()
    report = Report(mode=mode, required=frozenset(collections or ()))
    progress = Progress(progress_to)
    checks: list[Check | CheckResult] = []
    reader: SqliteReader | None = None
    conn: asyncpg.Connection | None = None
    warnings: dict[str, list[str]] = {}
    try:
        if cfg.sqlite is not None and not (collections and not tables):
            chosen = _choose(discover_tables(cfg), tables)
            reader = SqliteReader(cfg.sqlite.path, _workers(options))
            conn = await connect(cfg.target, dsn)
            await _session(conn)
            checks += await _table_checks(cfg, conn, reader, chosen, options, progress)
            warnings = await schema_warnings(conn, cfg.target, SQLITE_STREAM, chosen)
        elif tables:
            raise ConfigError("--table: no [source.sqlite] is configured")
        if cfg.chroma is not None and not (tables and not collections):
            chroma = ChromaVerify(cfg, dsn, mode, collection_options or CollectionOptions(), progress.advance)
            checks += await chroma.checks(collections)
        elif collections:
            raise ConfigError("--collection: no [source.chroma] is configured")
        for check in checks:
            result = await _run(check, mode, progress, reader)
            if result.kind == "table":
                result.warnings += warnings.get(result.name, [])
            report.checks.append(result)
    finally:
        progress.clear()
        if reader is not None:
            await reader.close()
        await close_quietly(conn)
        if chroma is not None:
            await chroma.close()
    report.seconds = time.monotonic() - started
    return report


async def _run(check: Check | CheckResult, mode: str, progress: Progress,
               reader: SqliteReader | None) -> CheckResult:
    if isinstance(check, CheckResult):
        return check
    started = time.monotonic()
    total = None
    if progress.out is not None and isinstance(check, TableCheck) and reader is not None:
        total = (await reader.count(check.tt.source, None))[0]
    progress.start(check.name, total)
    try:
        result = await check.run(mode)
    except SyncdError as exc:
        result = CheckResult(check.kind, check.name, status=ERROR, detail=exc.message)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        err = translate(exc, f"verifying {check.kind} {check.name}")
        result = CheckResult(check.kind, check.name, status=ERROR, detail=err.message)
    result.seconds = round(time.monotonic() - started, 3)
    return result


__all__ = ["MODES", "Check", "CollectionOptions", "Progress", "Skipped", "TableOptions", "discover_tables",
           "verify"]
