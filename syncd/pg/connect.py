"""Connecting to PostgreSQL, and translating asyncpg errors at the edge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from syncd.config import Target
from syncd.errors import FatalError, RetryableError, RowError, SyncdError, TargetUnavailable, redact
from syncd.pg import datetime as pg_datetime

# SQLSTATE classes: 22 data exception, 23 integrity constraint violation.
_ROW_CLASSES = ("22", "23")
_RETRY_STATES = {"57P01", "57P02", "57P03", "53300"}
_CONFLICT_STATES = {"40001", "40P01"}
"""Serialization failure, deadlock: the transaction lost a conflict and is retried as it is."""
_DISK_FULL = "53100"
"""The server could not extend a file: its transaction is rolled back whole; retried until
someone frees space (the stream waits in ``degraded``, it does not stop)."""
_TOO_MANY_CONNECTIONS = "53300"
"""No connection slot left (``max_connections``): retried, with a line saying so."""


def describe_dsn(dsn: str) -> str:
    return redact(dsn)


def connect_error(exc: BaseException, target: Target, dsn: str) -> SyncdError:
    """The one line for a failed connection: where (host, port, database, user — never the
    password), what happened, and which key to look at."""
    import socket

    from syncd.config.dsn import where

    at = where(dsn)
    place = f"PostgreSQL at {at}"
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return FatalError(f"{place}: authentication failed ({exc}); check the user and password in "
                          "target.dsn")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return FatalError(f"{place}: {exc}; create it (CREATE DATABASE {at.database}) or fix the "
                          "database name in target.dsn")
    away = f"PostgreSQL unreachable at {at}"
    if isinstance(exc, socket.gaierror):
        return TargetUnavailable(f"{away}: cannot resolve the host {at.host!r} ({exc.strerror}); "
                                 "check the host in target.dsn")
    if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError) and "Connect call failed" in str(exc)):
        return TargetUnavailable(f"{away}: connection refused: is it running and listening on port "
                                 f"{at.port}? (target.dsn)")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TargetUnavailable(f"{away}: no answer within {target.connect_timeout:g} s "
                                 "(target.connect_timeout): is the host reachable, or a firewall "
                                 "dropping the packets?")
    return translate(exc, f"connecting to {place}")


def translate(exc: BaseException, where: str) -> SyncdError:
    """The SyncdError for an asyncpg / socket error raised while doing *where*."""
    if isinstance(exc, SyncdError):
        return exc
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return FatalError(f"{where}: authentication failed: {exc}; check the password / user in target.dsn")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return FatalError(f"{where}: {exc}; create the database or fix target.dsn")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return FatalError(f"{where}: {exc}; grant the privilege to syncd's user")
    if state in _CONFLICT_STATES:
        return RetryableError(f"{where}: {exc} (rolled back; retrying)")
    if state == _DISK_FULL:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RetryableError(f"{where}: PostgreSQL is out of disk space ({first}); free space "
                              "on the server's data directory; retrying until then")
    if state == _TOO_MANY_CONNECTIONS:
        return TargetUnavailable(f"{where}: PostgreSQL has no connection slot left ({exc}: its "
                                 "max_connections is reached); syncd holds one per stream with work to "
                                 "do (an idle Chroma collection's goes back after "
                                 "stream.release_idle_seconds): raise max_connections or close other "
                                 "clients; retrying")
    if isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError | asyncpg.PostgresConnectionError
                  | asyncpg.InterfaceError | ConnectionError | asyncpg.exceptions.InternalClientError
                  ) or state in _RETRY_STATES:
        text = str(exc) or type(exc).__name__
        return TargetUnavailable(f"{where}: PostgreSQL unreachable: {text}")
    if isinstance(state, str) and state[:2] in _ROW_CLASSES:
        return RowError(str(exc))
    if isinstance(exc, asyncpg.DataError):  # client-side encoding of a value
        return RowError(str(exc))
    return FatalError(f"{where}: {type(exc).__name__}: {exc}")


def is_row_error(exc: BaseException) -> bool:
    return isinstance(translate(exc, ""), RowError)


async def connect(target: Target, dsn: str) -> asyncpg.Connection:
    """Open one connection, tagged as syncd's (``syncd.origin``); errors come out as
    SyncdErrors naming the (redacted) server.

    ``syncd.origin = syncd`` goes in the startup packet (PostgreSQL accepts a custom dotted
    parameter there); a pooler that refuses unknown startup parameters (PgBouncer without
    ``ignore_startup_parameters``) gets a ``SET`` after connecting instead. The reverse-capture
    triggers skip writes made under it, so syncd's own writes are never captured back (see
    :mod:`syncd.pg.capture`).
    """
    settings = {"application_name": "syncd", "syncd.origin": "syncd"}
    try:
        try:
            conn = await asyncpg.connect(dsn, timeout=target.connect_timeout,
                                         command_timeout=target.command_timeout,
                                         server_settings=settings)
        except asyncpg.PostgresError as exc:
            if "startup parameter" not in str(exc):
                raise
            conn = await asyncpg.connect(dsn, timeout=target.connect_timeout,
                                         command_timeout=target.command_timeout,
                                         server_settings={"application_name": "syncd"})
            try:
                await conn.execute("SET syncd.origin = 'syncd'")
            except BaseException:
                conn.terminate()
                raise
        await pg_datetime.register(conn)  # exact years 1 and 9999, and real infinities
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise connect_error(exc, target, dsn) from None
    conn.add_termination_listener(_wake_blocked_sender)
    return conn


def _wake_blocked_sender(conn: asyncpg.Connection) -> None:
    """A connection is gone: wake a statement still waiting to send.

    asyncpg sends an ``executemany`` or a COPY as fast as the socket takes it, and waits for
    the transport to drain (its protocol's ``resume_writing``) when the server reads slower.
    When the connection dies in that wait, asyncpg fails the statement's result but never wakes
    the sender: ``executemany`` sat out the rest of ``command_timeout``, COPY (no timeout on that
    wait) for ever. Resuming it lets the statement raise the connection's error at once (the
    rest of its data goes to a closed transport, which drops it). asyncpg 0.32 calls this
    listener from its connection-lost handling; ``_protocol`` is its (private) protocol.
    """
    protocol = getattr(conn, "_protocol", None)
    resume = getattr(protocol, "resume_writing", None)
    if callable(resume):
        resume()


_CONNECTION_LOST = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


@contextlib.asynccontextmanager
async def transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """``conn.transaction()``, except that a connection which stopped answering is dropped.

    When a statement times out (``command_timeout``), asyncpg cancels it, and the ROLLBACK
    of ``async with conn.transaction()`` then waits up to another ``command_timeout`` for the
    server to acknowledge the cancellation, which a hung network never does. Terminating
    the connection instead (the server rolls back when it goes) reports a hang after one
    ``command_timeout``, and with its own error rather than the rollback's.
    """
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException as exc:
        if not conn.is_closed():
            if isinstance(exc, _CONNECTION_LOST):
                conn.terminate()
            else:
                await tx.rollback()
        raise
    await tx.commit()


async def try_replica_role(conn: asyncpg.Connection) -> bool:
    """Set ``session_replication_role = replica`` for syncd's session, if allowed.

    Then PostgreSQL fires no triggers for syncd's writes: foreign-key checks and cascades
    (the source already applied its own, and they arrive as changes, in the source's order)
    and user triggers (so reverse capture does not see them). Needs superuser, or on
    PostgreSQL 15+ ``GRANT SET ON PARAMETER session_replication_role``.
    """
    try:
        await conn.execute("SET session_replication_role = replica")
    except (asyncpg.InsufficientPrivilegeError, asyncpg.CantChangeRuntimeParamError):
        return False
    return True


def resolve_dsn(target: Target, state_dir: Path) -> str:
    """The DSN to use: the configured one, or the embedded server's under *state_dir*."""
    if not target.embedded:
        return target.dsn
    from syncd.pg.embedded import embedded_dsn

    return embedded_dsn(state_dir)


async def close_quietly(conn: Any) -> None:
    if conn is None:
        return
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            conn.terminate()
            raise
        conn.terminate()


@asynccontextmanager
async def guarded(where: str) -> AsyncIterator[None]:
    """Translate driver errors escaping a sink operation; a row error here is fatal."""
    try:
        yield
    except SyncdError:
        raise
    except Exception as exc:
        err = translate(exc, where)
        if isinstance(err, RowError):
            raise FatalError(f"{where}: {err.message}") from exc
        raise err from exc
