"""Drive syncd through its CLI: a generated config, ``init``, and a timed snapshot.

    syncd --config FILE init
    syncd --config FILE run --until-caught-up     (timed, peak RSS of the process tree)

Each run works on its own copy of the generated database, because ``init`` installs
triggers and a changelog into it and the streaming benchmark then writes to it.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench import pg
from bench.procs import run_measured, warm_file
from bench.schema import TABLES

SYNCD = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "syncd"
TICKS = "bench_ticks"


@dataclass(frozen=True)
class Setup:
    """One syncd instance: its database copy, config, state and target."""

    sqlite: Path
    config: Path
    state_dir: Path
    database: str
    dsn: str
    health: str
    work: Path

    def argv(self, *args: str) -> list[str]:
        return [str(SYNCD), "--config", str(self.config), *args]


def available() -> bool:
    return SYNCD.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def copy_database(src: Path, dst: Path) -> None:
    """Copy the pristine database and add the table the streaming benchmark stamps."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst)
    try:
        conn.execute(f"CREATE TABLE {TICKS} (id INTEGER PRIMARY KEY, t REAL NOT NULL)")
        conn.commit()
    finally:
        conn.close()


async def prepare(server: pg.Server, source: Path, work: Path, database: str) -> Setup:
    """Fresh work dir, database copy, empty target database and config file."""
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sqlite_path = work / "app.sqlite"
    copy_database(source, sqlite_path)
    dsn = await pg.recreate_database(server, database)
    health = f"127.0.0.1:{free_port()}"
    config = work / "syncd.toml"
    config.write_text(
        "[source.sqlite]\n"
        f"path = {_toml_str(str(sqlite_path))}\n\n"
        "[target]\n"
        f"dsn = {_toml_str(dsn)}\n\n"
        "[state]\n"
        f"dir = {_toml_str(str(work / 'state'))}\n\n"
        "[health]\n"
        f"listen = {_toml_str(health)}\n"
    )
    return Setup(sqlite_path, config, work / "state", database, dsn, health, work)


async def describe_target(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in TABLES}
        cols = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ANY($1::text[]) "
            "ORDER BY table_name, ordinal_position", list(TABLES))
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname")
        fks = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
            "AND connamespace = 'public'::regnamespace")
    finally:
        await conn.close()
    return {
        "rows": counts,
        "types": {f"{r['table_name']}.{r['column_name']}": r["data_type"] for r in cols},
        "indexes": [r["indexdef"] for r in indexes],
        "foreign_keys": fks,
    }


def source_counts(sqlite_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


async def snapshot(server: pg.Server, source: Path, work: Path, database: str,
                   timeout: float = 1800.0) -> tuple[Setup, dict[str, Any]]:
    """``init`` then a timed ``run --until-caught-up``; returns the setup for streaming."""
    setup = await prepare(server, source, work, database)
    init = run_measured(setup.argv("init"), work / "init.log", timeout=300).check()
    warm_file(setup.sqlite)
    await pg.checkpoint(server)
    run = run_measured(setup.argv("run", "--until-caught-up"), work / "snapshot.log",
                       timeout=timeout).check()
    target = await describe_target(setup.dsn)
    expected = source_counts(setup.sqlite)
    return setup, {
        "init_seconds": init.seconds,
        "seconds": run.seconds,
        "peak_rss": run.peak_rss,
        "source_rows": expected,
        "complete": target["rows"] == expected,
        **target,
    }
