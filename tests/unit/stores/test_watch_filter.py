"""The file watchers' filters (the SQLite source's and Chroma's log): called once per file event
in the watched directory, hundreds of times a second under load. They name the database files
and intern nothing: a ``pathlib.Path`` per event interned every part of the path, a churn
that made CPython's interned-string table resize (a 1.8 MiB step in the daemon's RSS a few
minutes into a soak, docs/reliability.md)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import watchfiles

from syncd.stores.chroma import log as chroma_log
from syncd.stores.sqlite import source as sqlite_source

Filter = Callable[[watchfiles.Change, str], bool]


def captured_filter(monkeypatch: pytest.MonkeyPatch, module: Any, watch: Any,
                    owner: SimpleNamespace) -> Filter:
    """Run the real ``_watch`` with ``watchfiles.awatch`` replaced, and return its filter."""
    seen: list[Filter] = []

    async def awatch(*_args: Any, watch_filter: Filter, **_kw: Any) -> AsyncIterator[set[Any]]:
        seen.append(watch_filter)
        for _ in ():
            yield set()

    monkeypatch.setattr(module.watchfiles, "awatch", awatch)
    asyncio.run(watch(owner))
    assert len(seen) == 1
    return seen[0]


@pytest.fixture
def interned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    real = sys.intern

    def counting(s: str) -> str:
        calls.append(s)
        return real(s)

    monkeypatch.setattr(sys, "intern", counting)
    yield calls


def events(directory: str, n: int) -> Iterator[str]:
    """Paths as watchfiles reports them (plain strings, no Path: that would intern here)."""
    for i in range(n):
        yield f"{directory}/other-{i}.tmp"
        yield f"{directory}/app.sqlite-wal"


def test_sqlite_watch_filter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             interned: list[str]) -> None:
    db = tmp_path / "app.sqlite"
    owner = SimpleNamespace(path=db, _stop_watch=None, _woken=None)
    only_db = captured_filter(monkeypatch, sqlite_source, sqlite_source.SqliteSource._watch, owner)
    d = str(tmp_path)
    interned.clear()
    for name in ("app.sqlite", "app.sqlite-wal", "app.sqlite-journal"):
        assert only_db(watchfiles.Change.modified, f"{d}/{name}")
    for name in ("app.sqlite-shm", "other.sqlite", "app.sqlite.bak", "x-app.sqlite"):
        assert not only_db(watchfiles.Change.modified, f"{d}/{name}")
    kept = [only_db(watchfiles.Change.modified, p) for p in events(d, 1000)]
    assert kept == [False, True] * 1000
    assert interned == []


def test_chroma_watch_filter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             interned: list[str]) -> None:
    owner = SimpleNamespace(directory=tmp_path, _stop_watch=None, _subscribers=set())
    only_db = captured_filter(monkeypatch, chroma_log, chroma_log.ChromaLog._watch, owner)
    d = str(tmp_path)
    interned.clear()
    for name in ("chroma.sqlite3", "chroma.sqlite3-wal", "chroma.sqlite3-journal"):
        assert only_db(watchfiles.Change.added, f"{d}/{name}")
    for name in ("chroma.sqlite3-shm", "header.bin", "index_metadata.pickle"):
        assert not only_db(watchfiles.Change.added, f"{d}/{name}")
    kept = [only_db(watchfiles.Change.modified, f"{d}/seg-{i}") for i in range(1000)]
    assert not any(kept)
    assert interned == []
