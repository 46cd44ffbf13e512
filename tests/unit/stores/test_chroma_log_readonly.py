""""attempt to write a readonly database" on Chroma's ``chroma.sqlite3`` is not always a
permission problem: after the Chroma server was SIGKILLed and started again, syncd's writes
(pruning, the retention switch) met it with the file writable — the kill campaign's daemon
then stopped every Chroma stream as if it had no write access. SQLite's extended codes
(recovery, a replaced file) and a file syncd may write are retried with the connection opened
again; only a file it may not write gets the permission message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from syncd.errors import SourceError, SourceUnavailable
from syncd.stores.chroma.log import translate


def readonly(name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("attempt to write a readonly database")
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize("name", ["SQLITE_READONLY_DBMOVED", "SQLITE_READONLY_RECOVERY",
                                  "SQLITE_READONLY_ROLLBACK", "SQLITE_READONLY_CANTINIT"])
def test_a_log_being_recovered_or_replaced_is_retried(tmp_path: Path, name: str) -> None:
    db = tmp_path / "chroma.sqlite3"
    db.write_bytes(b"")
    error = translate(readonly(name), db)
    assert isinstance(error, SourceUnavailable) and name in str(error) and "retrying" in str(error)


def test_a_writable_log_refused_as_readonly_is_retried(tmp_path: Path) -> None:
    db = tmp_path / "chroma.sqlite3"
    db.write_bytes(b"")
    assert isinstance(translate(readonly("SQLITE_READONLY"), db), SourceUnavailable)


def test_a_log_syncd_may_not_write_says_what_to_grant(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "chroma.sqlite3"
    db.write_bytes(b"")
    monkeypatch.setattr("syncd.stores.chroma.log.os.access", lambda path, mode: False)
    error = translate(readonly("SQLITE_READONLY"), db)
    assert isinstance(error, SourceError) and not isinstance(error, SourceUnavailable)
    assert "write access" in str(error) and str(db) in str(error)
