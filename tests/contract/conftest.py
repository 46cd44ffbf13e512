"""The harness of each Sink adapter, on real stores: a fresh PostgreSQL database per test, a
SQLite file in the test's directory, and one ``chroma run`` server for the session (a
collection per test)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.contract.harness import Harness
from tests.contract.tables import PostgresHarness, SqliteHarness
from tests.contract.vectors import ChromaHarness, PgvectorHarness
from tests.integration.chroma_support import ChromaServer

ADAPTERS = ("postgres", "pgvector", "sqlite", "chroma")


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[ChromaServer]:
    with tempfile.TemporaryDirectory(prefix="syncd-contract-chroma-") as tmp:
        server = ChromaServer(Path(tmp) / "chroma")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """One adapter under the contract; a case it does not apply to is skipped with the reason."""
    h: Harness
    if request.param == "postgres":
        h = PostgresHarness(pg_dsn, tmp_path)
    elif request.param == "sqlite":
        h = SqliteHarness(tmp_path)
    elif request.param == "pgvector":
        h = PgvectorHarness(pg_dsn, request.getfixturevalue("chroma_server"))
    else:
        h = ChromaHarness(pg_dsn, request.getfixturevalue("chroma_server"))
    case = request.node.originalname.removeprefix("test_")
    if case in h.not_applicable:
        pytest.skip(f"not applicable to the {h.name} sink: {h.not_applicable[case]}")
    await h.setup()
    try:
        yield h
    finally:
        await h.teardown()
