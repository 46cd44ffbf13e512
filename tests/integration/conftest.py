"""Fixtures of the integration tests that only some modules use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.operator_support import APP_USER, PASSWORD, SecurePostgres, secure_postgres


@pytest.fixture(scope="session")
async def secure_pg() -> AsyncIterator[SecurePostgres]:
    """A TCP PostgreSQL that asks role ``app`` for :data:`PASSWORD` (and ``weak``, no superuser)."""
    with secure_postgres() as server:
        await server.create_role(APP_USER, PASSWORD)
        await server.create_role("weak", PASSWORD, superuser=False)
        yield server
