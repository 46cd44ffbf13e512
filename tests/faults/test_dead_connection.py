"""A connection that dies while syncd is still sending a statement fails that statement at once.

asyncpg sends an ``executemany`` (and a COPY) as fast as the socket takes it, and waits for
the transport to drain when the server reads slower than that. If the connection dies in
that wait, asyncpg fails the statement's result but never wakes the sender: ``executemany``
sat out the rest of ``command_timeout`` (COPY, with no timeout on that wait, for ever) before
syncd could retry. Here: syncd's own connection (:func:`syncd.pg.connect.connect`) through
Toxiproxy, the upstream narrowed so the send buffers fill, then the proxy goes away. The statement must
fail long before ``command_timeout``, with a connection error syncd retries.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from syncd.config import Target
from syncd.errors import TargetUnavailable
from syncd.pg.connect import close_quietly, connect, translate

COMMAND_TIMEOUT = 120.0
NOTICED_WITHIN = 30.0
"""A bound against the old wait (the rest of COMMAND_TIMEOUT), not a performance goal."""


async def test_executemany_fails_at_once_when_the_connection_dies_mid_send(
        pg_proxy: tuple[Any, str], direct_pg: asyncpg.Connection) -> None:
    proxy, dsn = pg_proxy
    await direct_pg.execute("CREATE TABLE sink (id integer PRIMARY KEY, body text)")
    conn = await connect(Target(dsn=dsn, connect_timeout=5.0, command_timeout=COMMAND_TIMEOUT), dsn)
    try:
        proxy.add_toxic(type="bandwidth", name="narrow", stream="upstream", attributes={"rate": 16})
        rows = [(i, f"{i:08d}" * 1000) for i in range(3000)]  # 24 MB of binds at 16 kB/s
        send = asyncio.ensure_future(conn.executemany("INSERT INTO sink VALUES ($1, $2)", rows))
        await asyncio.sleep(3)  # the socket and the proxy's buffers are full: asyncpg waits to send
        assert not send.done(), send
        proxy.disable()  # the proxy closes its connections
        cut = time.monotonic()
        done, _ = await asyncio.wait({send}, timeout=NOTICED_WITHIN)
        waited = time.monotonic() - cut
        if not done:
            send.cancel()
        assert done, (f"executemany still waiting {waited:.0f} s after its connection died "
                      f"(command_timeout {COMMAND_TIMEOUT:g} s)")
        exc = send.exception()
        assert exc is not None
        assert isinstance(translate(exc, "applying changes"), TargetUnavailable), repr(exc)
        print(f"executemany failed {waited:.2f} s after its connection died: {exc!r}")
    finally:
        await close_quietly(conn)
        proxy.enable()
    assert await direct_pg.fetchval("SELECT count(*) FROM sink") == 0  # nothing half-applied
