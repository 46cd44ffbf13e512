"""Which errors count as PostgreSQL refusing an index or key (recorded, the stream goes on),
and which stay errors (retried or fatal)."""

from __future__ import annotations

import asyncpg

from syncd.stores.postgres.constraints import refusal, todo


def test_refusals_of_the_schema_or_the_data_are_recorded() -> None:
    for exc in (asyncpg.exceptions.DatatypeMismatchError("incompatible types"),
                asyncpg.exceptions.InvalidForeignKeyError("no unique constraint"),
                asyncpg.exceptions.UniqueViolationError("could not create unique index"),
                asyncpg.exceptions.ForeignKeyViolationError("violates foreign key constraint"),
                asyncpg.exceptions.ProgramLimitExceededError("index row size exceeds maximum")):
        reason = refusal(exc)
        assert reason is not None and "\n" not in reason, exc
        assert "next start" in todo(exc)
    assert "NOT VALID" in todo(asyncpg.exceptions.ForeignKeyViolationError("x"))


def test_other_errors_are_not_refusals() -> None:
    for exc in (asyncpg.exceptions.InsufficientPrivilegeError("permission denied"),
                asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
                asyncpg.exceptions.AdminShutdownError("terminating connection"),
                ConnectionResetError("reset"), TimeoutError()):
        assert refusal(exc) is None, exc
