"""How PostgreSQL's refusals read: one line, what to do, retried when it may pass."""

from __future__ import annotations

import asyncpg

from syncd.errors import TargetUnavailable
from syncd.pg.connect import translate


def test_too_many_clients_says_max_connections_and_is_retried() -> None:
    exc = asyncpg.TooManyConnectionsError("sorry, too many clients already")
    error = translate(exc, "connecting to PostgreSQL at db:5432/app as syncd")
    assert isinstance(error, TargetUnavailable)
    text = str(error)
    assert "max_connections" in text and "release_idle_seconds" in text and "\n" not in text
    assert text.startswith("connecting to PostgreSQL at db:5432/app as syncd: ")
