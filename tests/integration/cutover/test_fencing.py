"""The fencing generation on the checkpoint, in both stores that hold checkpoints: a process
that claimed a stream and was then superseded cannot move the position (its batch rolls back).

The daemon-level behaviour is tested through the CLI in test_ownership.py; these drive the
checkpoint writes themselves against a real PostgreSQL and a real SQLite file, two owners side by
side (each in its own context, as two processes would be)."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from syncd.config import SqliteConfig
from syncd.model import Batch, Change, Op, Position
from syncd.pg import state as pgstate
from syncd.stores.sqlite.sink import SqliteSink

T = TypeVar("T")
OWNER_A = {"pid": 101, "host": "a", "since": "t0"}
OWNER_B = {"pid": 202, "host": "b", "since": "t1"}


async def as_owner(claims: pgstate.Claims, fn: Callable[[], Awaitable[T]]) -> T:
    context = contextvars.copy_context()
    context.run(pgstate.claims.set, claims)
    return await asyncio.create_task(fn(), context=context)


async def test_postgres_checkpoint_of_a_superseded_owner_is_refused(pg: asyncpg.Connection) -> None:
    await pgstate.ensure(pg)
    a = pgstate.Claims(OWNER_A, {"s": await pgstate.claim(pg, "s", OWNER_A)})

    async def save(position: int) -> None:
        async with pg.transaction():
            await pg.execute("CREATE TABLE IF NOT EXISTS rows (n int)")
            await pg.execute("INSERT INTO rows VALUES ($1)", position)
            await pgstate.save_checkpoint(pg, "s", Position(position), None)

    await as_owner(a, lambda: save(10))
    b = pgstate.Claims(OWNER_B, {"s": await pgstate.claim(pg, "s", OWNER_B)})
    with pytest.raises(pgstate.Fenced, match="pid 202 on host b"):
        await as_owner(a, lambda: save(20))
    assert (await pgstate.load_checkpoint(pg, "s")).position == Position(10)  # type: ignore[union-attr]
    assert await pg.fetchval("SELECT count(*) FROM rows WHERE n = 20") == 0  # the batch rolled back
    await as_owner(b, lambda: save(30))
    row = await pg.fetchrow("SELECT position, generation FROM syncd.checkpoints WHERE stream = 's'")
    assert (row["position"], row["generation"]) == (30, 2)


async def test_sqlite_checkpoint_of_a_superseded_owner_is_refused(tmp_path: Path) -> None:
    """The reverse stream keeps its checkpoint in the app's SQLite file (_syncd_checkpoints)."""
    path = tmp_path / "app.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.commit()
    stream = "postgres→sqlite"
    config = SqliteConfig(path=path)
    setup = await SqliteSink.open(config)
    await setup.set_checkpoint(stream, Position(0))
    await setup.close()

    def batch(key: int) -> Batch:
        change = Change(Op.INSERT, "notes", (key,), {"id": key, "body": f"n{key}"}, Position(key))
        return Batch([change], Position(key))

    a = pgstate.Claims(OWNER_A, {stream: 1})
    b = pgstate.Claims(OWNER_B, {stream: 2})
    sink_a, sink_b = await SqliteSink.open(config), await SqliteSink.open(config)
    try:
        await as_owner(a, lambda: sink_a.load_checkpoint(stream))
        await as_owner(a, lambda: sink_a.apply(stream, batch(1)))
        await as_owner(b, lambda: sink_b.load_checkpoint(stream))  # the new owner stamps generation 2
        with pytest.raises(pgstate.Fenced, match="pid 202 on host b"):
            await as_owner(a, lambda: sink_a.apply(stream, batch(2)))
        with pytest.raises(pgstate.Fenced):  # and the old owner cannot stamp its generation back
            await as_owner(a, lambda: sink_a.load_checkpoint(stream))
        await as_owner(b, lambda: sink_b.apply(stream, batch(3)))
    finally:
        await sink_a.close()
        await sink_b.close()
    rows = [r[0] for r in db.execute("SELECT id FROM notes ORDER BY id")]
    checkpoint = db.execute("SELECT position, generation FROM _syncd_checkpoints WHERE stream = ?",
                            (stream,)).fetchone()
    db.close()
    assert rows == [1, 3]
    assert checkpoint == (3, 2)


async def test_a_deadlock_is_retried_not_fatal(pg_dsn: str) -> None:
    """Two transactions locking two rows in opposite orders: PostgreSQL aborts one with
    "deadlock detected" (40P01). syncd retries such a transaction; it names no outage."""
    from syncd.errors import RetryableError, TargetUnavailable
    from syncd.pg.connect import translate

    one, two = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        await one.execute("CREATE TABLE pair (k int PRIMARY KEY); INSERT INTO pair VALUES (1), (2)")

        async def lock(conn: asyncpg.Connection, first: int, second: int) -> None:
            async with conn.transaction():
                await conn.execute("SELECT * FROM pair WHERE k = $1 FOR UPDATE", first)
                await asyncio.sleep(0.3)
                await conn.execute("SELECT * FROM pair WHERE k = $1 FOR UPDATE", second)

        results = await asyncio.gather(lock(one, 1, 2), lock(two, 2, 1), return_exceptions=True)
        (error,) = [r for r in results if isinstance(r, BaseException)]
        translated = translate(error, "writing the checkpoint")
        assert isinstance(translated, RetryableError) and not isinstance(translated, TargetUnavailable)
        assert "deadlock detected" in str(translated) and "unreachable" not in str(translated)
    finally:
        await one.close()
        await two.close()
