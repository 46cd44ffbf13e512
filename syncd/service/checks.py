"""Checks of the machine before a command touches anything: who syncd runs as, whether it may
write where it must, who holds a SQLite lock. Each failure is one line naming the path, the
user and the command that fixes it.
"""

from __future__ import annotations

import grp
import os
import pwd
import sqlite3
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from syncd.config import PG_NAME_BYTES, SqliteConfig, Target
from syncd.errors import ConfigError, FatalError, SchemaError, SourceError
from syncd.ports.tables import Table
from syncd.stores.sqlite.schema import list_tables


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def who() -> str:
    """``user@host`` of this process, recorded with an operator's decision."""
    import socket

    return f"{user_name()}@{socket.gethostname()}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK if path.is_dir() else os.W_OK, effective_ids=True)


def _owner(path: Path) -> str:
    st = path.stat()
    return f"owner {user_name(st.st_uid)}, group {group_name(st.st_gid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def state_dir(path: Path, why: str) -> None:
    """*path* exists (or can be created) and this user may write in it."""
    me = user_name()
    if path.exists() and not path.is_dir():
        raise FatalError(f"state.dir {path} is not a directory; point [state] dir at a directory "
                         f"{me} can write")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if _writable(existing):
        return
    if existing == path:
        raise FatalError(f"state.dir {path} is not writable by user {me} ({_owner(path)}); {why}: "
                         f"run `sudo chown -R {me} {path}`, or run syncd as the user that owns it")
    raise FatalError(f"state.dir {path} does not exist and user {me} cannot create it in {existing} "
                     f"({_owner(existing)}); {why}: run `sudo install -d -o {me} {path}`")


def sqlite_path(path: Path) -> None:
    """``source.sqlite.path`` names a file."""
    if path.is_dir():
        raise SourceError(f"source.sqlite.path {path} is a directory; name the database file in it")
    if not path.exists():
        raise SourceError(f"SQLite database {path} does not exist (source.sqlite.path)")


def sqlite_writable(path: Path) -> None:
    """syncd can write the SQLite file and create its journal next to it (init, run, uninstall)."""
    if not path.is_file():
        return  # the source says what is wrong with it
    me = user_name()
    if not _writable(path):
        raise FatalError(
            f"SQLite database {path} is not writable by user {me} ({_owner(path)}); syncd installs "
            f"capture triggers in it and prunes its changelog: give {me} write access, e.g. add it "
            f"to group {group_name(path.stat().st_gid)} and `chmod g+w {path}`")
    folder = path.parent
    if not _writable(folder):
        raise FatalError(
            f"directory {folder} is not writable by user {me} ({_owner(folder)}); SQLite creates "
            f"its journal next to {path.name}: give {me} write access to the directory, e.g. add it "
            f"to group {group_name(folder.stat().st_gid)} and `chmod g+w {folder}`")


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 80 else text[:77] + "..."


def lock_holders(database: Path) -> list[Holder]:
    """Processes holding a write lock on *database* or its WAL index (Linux ``/proc/locks``);
    empty when that cannot be known."""
    files: dict[tuple[int, int], Path] = {}
    for p in (database, Path(f"{database}-shm")):
        try:
            st = p.stat()
        except OSError:
            continue
        files[(st.st_dev, st.st_ino)] = p
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids: set[int] = set()
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        if len(fields) < 6 or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            dev = os.makedev(int(major, 16), int(minor, 16))
            pid = int(fields[4])
        except ValueError:
            continue
        if (dev, int(inode)) in files and pid > 0 and pid != os.getpid():
            pids.add(pid)
    return [Holder(pid, _command_line(pid)) for pid in sorted(pids)]


def sqlite_write_lock(path: Path, timeout: float, then: str) -> None:
    """Take SQLite's write lock and give it back at once (``BEGIN IMMEDIATE; ROLLBACK``: nothing is
    written), waiting up to *timeout*; if another connection keeps it, say who and what to do."""
    import time

    started = time.monotonic()
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise SourceError(f"SQLite database {path}: {exc} (source.sqlite.path)") from exc
        waited = time.monotonic() - started
        raise FatalError(f"SQLite's write lock on {path} is {describe_holders(path)}; waited {waited:.0f} s "
                         f"(cutover.lock_timeout): let that transaction finish (or stop that process), "
                         f"then {then}") from exc


def describe_holders(database: Path) -> str:
    holders = lock_holders(database)
    if not holders:
        return "another connection holds it (its process is not visible from here)"
    return "held by " + ", ".join(str(h) for h in holders)


# --- what is synced, and under which names --------------------------------------------------


def something_to_sync(config: SqliteConfig, chosen: Sequence[str]) -> None:
    """Refuse a selection that syncs nothing: an empty database, or every table excluded."""
    if chosen:
        return
    if config.tables is not None:
        raise ConfigError("source.sqlite.tables: the list is empty; name the tables to sync, or remove "
                          "the key to sync them all")
    try:
        db = sqlite3.connect(f"file:{config.path}?mode=ro", uri=True)
        try:
            present = list_tables(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SourceError(f"SQLite database {config.path}: {exc} (source.sqlite.path)") from exc
    if not present:
        raise SourceError(f"SQLite database {config.path} has no tables: is source.sqlite.path the "
                          "app's database? (a new or empty file has none)")
    raise ConfigError(f"source.sqlite.exclude: leaves nothing to sync: it excludes every table of "
                      f"{config.path} ({', '.join(present)})")


def _too_long(name: str) -> bool:
    return len(name.encode()) > PG_NAME_BYTES


def _short(name: str) -> str:
    return name.encode()[:40].decode(errors="ignore").rstrip("_")


def table_names(target: Target, tables: Sequence[Table], path: Path) -> None:
    """Every table and column gets a PostgreSQL name that fits and is its own."""
    names = {t.name for t in tables}
    for key in target.table_names:
        if key not in names:
            raise ConfigError(f'target.table_names."{key}": no synced table {key} in {path}')
    taken: dict[str, str] = {}
    for t in tables:
        pg = target.table_for(t.name)
        if _too_long(pg):
            raise ConfigError(
                f"table {t.name!r} of {path}: its name is {len(pg.encode())} bytes, over PostgreSQL's "
                f"limit of {PG_NAME_BYTES}; give it a shorter name in PostgreSQL: "
                f'[target.table_names] "{t.name}" = "{_short(t.name)}"')
        if pg in taken:
            raise ConfigError(f"target.table_names: tables {taken[pg]!r} and {t.name!r} would both be "
                              f"written to {target.schema}.{pg}; map one of them to another name")
        taken[pg] = t.name
        for c in t.columns:
            if _too_long(c.name):
                raise SchemaError(
                    f"column {t.name}.{c.name[:20]}… of {path}: its name is {len(c.name.encode())} bytes, "
                    f"over PostgreSQL's limit of {PG_NAME_BYTES}; rename the column in SQLite")


def _split_column_key(key: str, tables: dict[str, Table]) -> tuple[str, str]:
    for i, ch in enumerate(key):
        if ch == "." and key[:i] in tables:
            return key[:i], key[i + 1:]
    return key.partition(".")[0], key.partition(".")[2]


async def column_types(conn: asyncpg.Connection, target: Target, tables: Sequence[Table],
                       path: Path) -> None:
    """``[target.column_types]`` names synced tables and columns, and types PostgreSQL has."""
    by_name = {t.name: t for t in tables}
    from syncd.stores.postgres.types import parse_override

    for key, override in target.column_types.items():
        where = f'target.column_types."{key}"'
        pg_type = parse_override(override)[0]  # "numeric(10,2) rounded": the operator chose rounding
        table, column = _split_column_key(key, by_name)
        if table not in by_name:
            raise ConfigError(f"{where}: no synced table {table!r} in {path}")
        columns = [c.name for c in by_name[table].columns]
        if column not in columns:
            raise ConfigError(f"{where}: table {table} has no column {column!r} "
                              f"(it has {', '.join(columns)})")
        try:
            async with conn.transaction():  # a savepoint when the caller is in a transaction
                known = await conn.fetchval("SELECT to_regtype($1)::text", pg_type)
        except asyncpg.PostgresError:
            known = None
        if known is None:
            raise ConfigError(f"{where}: PostgreSQL has no type {pg_type!r} (e.g. \"text\", "
                              "\"numeric(12,2)\", \"timestamptz\", \"jsonb\")")


async def target_config(conn: asyncpg.Connection, target: Target, tables: Sequence[Table],
                        path: Path) -> None:
    """What of ``[target]`` can only be checked against the tables and the server."""
    table_names(target, tables, path)
    await column_types(conn, target, tables, path)


__all__ = [
    "Holder",
    "column_types",
    "describe_holders",
    "lock_holders",
    "something_to_sync",
    "sqlite_path",
    "sqlite_writable",
    "sqlite_write_lock",
    "state_dir",
    "table_names",
    "target_config",
    "user_name",
    "who",
]
