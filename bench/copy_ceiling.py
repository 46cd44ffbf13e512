"""The reference loads: a plain sqlite3 + asyncpg loop, and the binary ``COPY FROM file`` ceiling.

``prepare`` loads the SQLite data once with the plain loop (timed: it is the "naive loader"
reference) and has the server write one binary COPY file per table. ``ceiling`` then times
``COPY t FROM 'file' (FORMAT binary)`` into empty tables of a fresh database, followed by the
primary keys, unique and secondary indexes and foreign key the source declares. No parsing,
no client round trips: nothing that reads the SQLite file can load faster than this.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import pg
from bench.procs import warm_file
from bench.schema import COLUMNS, CONSTRAINTS, CREATE, TABLES

CHUNK = 5000


def _convert(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if table == "users":
        i, email, name, active, created, settings = row
        return (i, email, name, bool(active), datetime.fromisoformat(created), settings)
    *head, created = row
    return (*head, datetime.fromisoformat(created))


async def create_tables(conn: asyncpg.Connection) -> None:
    for table in TABLES:
        await conn.execute(CREATE[table])


async def add_constraints(conn: asyncpg.Connection) -> dict[str, float]:
    timings: dict[str, float] = {}
    for sql in CONSTRAINTS:
        t0 = time.perf_counter()
        await conn.execute(sql)
        timings[sql] = time.perf_counter() - t0
    return timings


async def plain_loop(sqlite_path: Path, dsn: str) -> dict[str, Any]:
    """sqlite3 reads + asyncpg ``copy_records_to_table``, one chunk at a time, into bare
    tables; then the same constraints as the ceiling."""
    conn = await asyncpg.connect(dsn)
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    rows: dict[str, int] = {}
    try:
        await create_tables(conn)
        started = time.perf_counter()
        for table in TABLES:
            cols = COLUMNS[table]
            cur = src.execute(f"SELECT {', '.join(cols)} FROM {table}")
            n = 0
            while chunk := cur.fetchmany(CHUNK):
                records = [_convert(table, r) for r in chunk]
                await conn.copy_records_to_table(table, records=records, columns=cols)
                n += len(records)
            rows[table] = n
        copy_seconds = time.perf_counter() - started
        constraints = await add_constraints(conn)
        total_seconds = time.perf_counter() - started
    finally:
        src.close()
        await conn.close()
    return {"copy_seconds": copy_seconds, "constraint_seconds": sum(constraints.values()),
            "total_seconds": total_seconds, "rows": rows}


def prepare(server: pg.Server, sqlite_path: Path, files_dir: Path) -> dict[str, Any]:
    """Load once with the plain loop (timed) and dump one binary COPY file per table."""
    files_dir = files_dir.resolve()
    files_dir.mkdir(parents=True, exist_ok=True)
    files_dir.chmod(0o777)  # written and read by the server's OS user
    for table in TABLES:
        (files_dir / f"{table}.bin").unlink(missing_ok=True)
    warm_file(sqlite_path)
    pg.checkpoint(server)
    database = "bench_plain_loop"
    loop = asyncio.run(plain_loop(sqlite_path, pg.recreate_database(server, database)))
    for table in TABLES:
        server.psql(database, f"COPY {table} TO '{files_dir / table}.bin' (FORMAT binary)")
    pg.drop_database(server, database)
    sizes = {t: (files_dir / f"{t}.bin").stat().st_size for t in TABLES}
    return {"plain_loop": loop, "copy_file_bytes": sizes}


async def _copy_in(dsn: str, files_dir: Path) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    per_table: dict[str, float] = {}
    rows: dict[str, int] = {}
    try:
        started = time.perf_counter()
        for table in TABLES:
            t0 = time.perf_counter()
            status = await conn.execute(
                f"COPY {table} FROM '{files_dir / table}.bin' (FORMAT binary)")
            per_table[table] = time.perf_counter() - t0
            rows[table] = int(status.split()[-1])
        copy_seconds = time.perf_counter() - started
        constraints = await add_constraints(conn)
        total_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {
        "copy_seconds": copy_seconds,
        "constraint_seconds": sum(constraints.values()),
        "total_seconds": total_seconds,
        "per_table_seconds": per_table,
        "constraints": constraints,
        "rows": rows,
    }


async def _create(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await create_tables(conn)
    finally:
        await conn.close()


def ceiling(server: pg.Server, files_dir: Path, database: str = "bench_ceiling") -> dict[str, Any]:
    """Time ``COPY FROM`` the binary files into empty tables, then the constraints."""
    dsn = pg.recreate_database(server, database)
    asyncio.run(_create(dsn))
    pg.checkpoint(server)
    result = asyncio.run(_copy_in(dsn, files_dir.resolve()))
    pg.drop_database(server, database)
    return result
