"""One owner per stream: who runs, and the proof a stale process cannot move a checkpoint.

Three layers, each catching what the one before cannot:

1. **The state-dir lock** — ``flock`` on ``<state.dir>/syncd.lock``, which holds the owner's pid,
   host, start time and config path. A second ``syncd run`` on the same state dir exits 1 naming
   the first. It also guards the embedded PostgreSQL, which lives in the state dir.
2. **An advisory lock per stream** in the target (``pg_try_advisory_lock``, session level, on a
   dedicated connection named ``syncd owner``). A second daemon on the same target from another
   state dir (another host, a copied config) exits 1 naming the first.
3. **The fencing generation** (``syncd.owners``, see :mod:`syncd.pg.state`): claiming a
   stream bumps its generation, and every checkpoint write is conditioned on it. The advisory
   lock goes when its connection dies; if another process then claims the stream, the first
   one's next commit fails instead of moving the position. After a reconnect the lock is taken
   again only if the generation is still this process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog

from syncd.config import Config
from syncd.errors import FatalError, SyncdError
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, translate

log = structlog.get_logger("syncd.streams.ownership")
T = TypeVar("T")

LOCK_FILE = "syncd.lock"
LOCK_APPLICATION = "syncd owner"
"""``application_name`` of the connection that holds the advisory locks."""
_LOCK_KEY = "SELECT hashtextextended('syncd stream ' || $1, 0)"
LEASE_SECONDS = 30
"""The lock connection is pinged every 5 s; a holder that stops pinging this long (dead host,
frozen process, cut network) loses its session and so its locks (``idle_session_timeout``)."""


class AlreadyRunning(FatalError):
    """Another syncd process owns the state dir or a stream of the target."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who this process is, as the lock file and ``syncd.owners`` record it (no secret)."""

    pid: int
    host: str
    since: str
    config: str
    state_dir: str

    @classmethod
    def this_process(cls, config: Config) -> Holder:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        return cls(pid=os.getpid(), host=socket.gethostname(), since=now.isoformat().replace("+00:00", "Z"),
                   config=str(config.path.resolve()) if config.path else "",
                   state_dir=str(config.state_dir.resolve()))

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "since": self.since, "config": self.config,
                "state dir": self.state_dir}


class StateDirLock:
    """``flock`` on ``<state.dir>/syncd.lock``; the kernel drops it when the process dies."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, holder: Holder) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FatalError(f"state.dir {self.path.parent}: cannot create {self.path.name}: {exc.strerror}; "
                             "make the directory writable by the user syncd runs as") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                other: Mapping[str, Any] | None = json.loads(text)
            except ValueError:
                other = None
            raise AlreadyRunning(f"syncd is already running on state dir {self.path.parent}: "
                                 f"{pgstate.describe_owner(other)}; stop it first") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder.to_json()) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as exc:  # a full disk (ENOSPC), a quota, an I/O error
            os.close(fd)
            raise FatalError(f"state.dir {self.path.parent}: cannot write {self.path.name}: "
                             f"{exc.strerror}; free space there (or point state.dir elsewhere) "
                             "and start syncd again") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class Ownership:
    """The streams one ``syncd run`` owns in its target: advisory locks and claimed generations."""

    def __init__(self, config: Config, holder: Holder) -> None:
        self.config = config
        self.holder = holder
        self.claims = pgstate.Claims(owner=holder.to_json())
        self._dsn = ""
        self._conn: asyncpg.Connection | None = None
        self._mutex = asyncio.Lock()
        self._lost: dict[str, str] = {}

    def install(self) -> Callable[[], None]:
        """Make checkpoint writes of this task, and of every task it starts, fenced by the claims."""
        token = pgstate.claims.set(self.claims)
        return lambda: pgstate.claims.reset(token)

    async def claim(self, dsn: str, stream: str) -> None:
        """Own *stream*: its advisory lock, then a new generation. Raises AlreadyRunning, or Fenced
        when a stream this process owned was taken over while its lock connection was down."""
        async with self._mutex:
            self._dsn = dsn
            try:
                conn = await self._locked()
                if stream in self.claims.generations:
                    return
                await self._lock_or_refuse(conn, stream)
                async with conn.transaction():
                    generation = await pgstate.claim(conn, stream, self.holder.to_json())
            except SyncdError:
                raise
            except Exception as exc:
                await self._drop_connection()
                raise translate(exc, f"claiming stream {stream}") from exc
            self.claims.generations[stream] = generation
            log.info("stream claimed", stream=stream, generation=generation)

    def guard(self, dsn: str, stream: str,
              open_sink: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """*open_sink*, preceded by a claim (first time) or a check that the stream is still ours
        (every reconnect)."""
        async def guarded() -> T:
            if stream in self._lost:
                raise pgstate.Fenced(self._lost[stream])
            await self.claim(dsn, stream)
            return await open_sink()
        return guarded

    async def _locked(self) -> asyncpg.Connection:
        """The lock connection. When it died (its advisory locks with it), a new one takes every
        lock again — only for streams whose generation is still this process's."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await connect(self.config.target, self._dsn)
        try:
            await conn.execute(f"SET application_name = '{LOCK_APPLICATION}'")
            with contextlib.suppress(asyncpg.PostgresError):  # PostgreSQL 14+: the locks are a lease
                await conn.execute(f"SET idle_session_timeout = '{LEASE_SECONDS}s'")
            await pgstate.ensure(conn)
            for stream, generation in self.claims.generations.items():
                got = await conn.fetchval(f"SELECT pg_try_advisory_lock(({_LOCK_KEY}))", stream)
                current = await pgstate.owner_of(conn, stream)
                if not got or current is None or current[0] != generation:
                    error = pgstate.fenced(stream, generation, current[1] if current else None)
                    self._lost[stream] = error.message
                    raise error
        except BaseException:
            conn.terminate()
            raise
        if self.claims.generations:
            log.info("stream locks taken again after their connection was lost",
                     streams=sorted(self.claims.generations))
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)

    async def _lock_or_refuse(self, conn: asyncpg.Connection, stream: str) -> None:
        if not await conn.fetchval(f"SELECT pg_try_advisory_lock(({_LOCK_KEY}))", stream):
            current = await pgstate.owner_of(conn, stream)
            raise AlreadyRunning(f"stream {stream} of this target is streamed by "
                                 f"{pgstate.describe_owner(current[1] if current else None)}: "
                                 "one daemon per target; stop that one first (a holder that died "
                                 f"loses the lock within {LEASE_SECONDS} s)")

    async def watch(self, on_lost: Callable[[str], None], interval: float = 5.0) -> None:
        """Keep the lock connection alive; when it died, take the locks again at once (a duty).
        *on_lost* hears of a stream another process took over meanwhile."""
        while True:
            await asyncio.sleep(interval)
            if not self.claims.generations or self._lost:
                continue
            async with self._mutex:
                try:
                    if self._conn is not None and not self._conn.is_closed():
                        await self._conn.fetchval("SELECT 1")
                    await self._locked()
                except pgstate.Fenced as exc:
                    log.error("stream lost to another process", error=str(exc))
                    on_lost(str(exc))
                except SyncdError as exc:
                    log.warning("cannot hold the stream locks; retrying", error=str(exc))
                except Exception as exc:
                    log.warning("the stream-lock connection was lost; taking the locks again",
                                error=str(translate(exc, "holding the stream locks")))
                    if self._conn is not None:
                        self._conn.terminate()
                    self._conn = None

    async def close(self) -> None:
        """Release the advisory locks (closing their connection)."""
        await self._drop_connection()
