"""The harness of each Sink adapter, on real stores: one PostgreSQL database for the suite (each
test has tables and streams of its own in it), a SQLite file in the test's directory, and one
``chroma run`` server for the session (a collection per test)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import fresh_database
from tests.contract.harness import Harness
from tests.contract.tables import PostgresHarness, SqliteHarness
from tests.contract.vectors import ChromaHarness, PgvectorHarness, SharedChroma
from tests.integration.chroma_support import ChromaServer


@pytest.fixture(scope="session")
async def contract_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database of the suite's own on the test server; dropped afterwards."""
    async with fresh_database(pg_server_dsn, "contract_") as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def shared_chroma() -> AsyncIterator[SharedChroma]:
    with tempfile.TemporaryDirectory(prefix="syncd-contract-chroma-") as tmp:
        server = ChromaServer(Path(tmp) / "chroma")
        server.start()
        try:
            chroma = await SharedChroma.open(server)
            try:
                yield chroma
            finally:
                await chroma.close()
        finally:
            server.stop()


async def _running(h: Harness) -> AsyncIterator[Harness]:
    await h.setup()
    try:
        yield h
    finally:
        await h.teardown()


@pytest.fixture
async def postgres_harness(contract_dsn: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async for h in _running(PostgresHarness(contract_dsn, tmp_path, uuid.uuid4().hex[:8])):
        yield h


@pytest.fixture
async def pgvector_harness(contract_dsn: str, shared_chroma: SharedChroma) -> AsyncIterator[Harness]:
    async for h in _running(PgvectorHarness(contract_dsn, shared_chroma)):
        yield h


@pytest.fixture
async def sqlite_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async for h in _running(SqliteHarness(tmp_path)):
        yield h


@pytest.fixture
async def chroma_harness(contract_dsn: str, shared_chroma: SharedChroma) -> AsyncIterator[Harness]:
    async for h in _running(ChromaHarness(contract_dsn, shared_chroma)):
        yield h


HARNESSES: dict[str, type[Harness]] = {"postgres": PostgresHarness, "pgvector": PgvectorHarness,
                                       "sqlite": SqliteHarness, "chroma": ChromaHarness}


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    """One adapter under the contract; a case it does not apply to is skipped with the reason.
    Only the stores the adapter needs are started (``-k sqlite`` starts no server)."""
    kind = HARNESSES[request.param]
    case = request.node.originalname.removeprefix("test_")
    if case in kind.not_applicable:
        pytest.skip(f"not applicable to the {request.param} sink: {kind.not_applicable[case]}")
    h: Harness = request.getfixturevalue(f"{request.param}_harness")
    return h
