"""SQL every store shares: quoting (the same rules in SQLite and PostgreSQL), the name of the
PostgreSQL schema that holds syncd's own state, and running sqlite3 work (the SQLite store's and
Chroma's ``chroma.sqlite3``) on a store's one worker thread, with errors translated at the edge."""

from __future__ import annotations

import asyncio
import os.path
import sqlite3
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from syncd.errors import SourceBusy, SourceError, SyncdError

T = TypeVar("T")

STATE_SCHEMA = "syncd"
"""The PostgreSQL schema of syncd's state tables (checkpoints, rejects, objects, …)."""


def qi(name: str) -> str:
    """Quote an SQL identifier (same rules in SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def ql(text: str) -> str:
    """Quote an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


async def call_on(executor: ThreadPoolExecutor, translate: Callable[[BaseException], SyncdError],
                  fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on *executor*; a sqlite3 error comes out as ``translate(error)``."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(executor, fn, *args)
    except sqlite3.Error as exc:
        raise translate(exc) from exc


def sqlite_error(exc: BaseException, where: str) -> SyncdError:
    """An error of sqlite3 work on *where* (``SQLite /app.db``, ``Chroma log /p/chroma.sqlite3``):
    a held lock is :class:`SourceBusy` (retried), the rest :class:`SourceError`."""
    if isinstance(exc, SyncdError):
        return exc
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return SourceBusy(f"{where}: {text}")
    return SourceError(f"{where}: {type(exc).__name__}: {text}")


def named(names: Collection[str]) -> Callable[[Any, str], bool]:
    """A file watcher's filter (``watchfiles``' ``watch_filter``): true for a path whose last
    part is one of *names* (a database file and its ``-wal`` / ``-journal``). It runs once per
    event in the directory, hundreds of times a second under load: a plain string split, no
    ``pathlib.Path`` (which interns every part of the path, a churn that grows CPython's table
    of interned strings)."""
    wanted = frozenset(names)

    def only(_change: Any, path: str) -> bool:
        return os.path.basename(path) in wanted

    return only
