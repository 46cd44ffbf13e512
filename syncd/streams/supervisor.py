"""Builds the streams of one direction from config, runs them, and stops them in order.

Each stream is claimed (:mod:`syncd.streams.ownership`) before it starts, and every reconnect of its
sink checks that it is still this process's. The process around it — signals, health server,
direction switches, exit codes — is :mod:`syncd.streams.daemon`.

First SIGTERM / SIGINT: stop intake; each stream finishes the batch it is
applying (batch and checkpoint commit together), then connections close.
A second signal cancels the streams at once: an open transaction is rolled
back, so the checkpoint can never run ahead of committed data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from syncd import killpoints
from syncd.config import Config
from syncd.cutover.state import FORWARD, REVERSE
from syncd.errors import FatalError, RetryableError, SyncdError
from syncd.model import Phase
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, guarded, resolve_dsn, try_replica_role
from syncd.ports import Sink
from syncd.service.health import Liveness
from syncd.status import StreamStatus
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.sqlite.source import SqliteSource
from syncd.stream import TABLE_BATCH_SIZE, Stream
from syncd.streams.ownership import Ownership

if TYPE_CHECKING:
    from syncd.streams.chroma_to_pgvector import ChromaStreams

log = structlog.get_logger("syncd.streams.supervisor")

SQLITE_STREAM = "sqlite"


async def target_dsn(config: Config) -> str:
    """The target DSN; starting the embedded server runs in a thread (it blocks)."""
    return await asyncio.to_thread(resolve_dsn, config.target, config.state_dir)


async def open_sqlite_source(config: Config, stop: asyncio.Event) -> SqliteSource | None:
    """Open the SQLite source, waiting out "database is locked" (None if stopped meanwhile)."""
    assert config.sqlite is not None
    attempt = 0
    while True:
        try:
            return await SqliteSource.open(config.sqlite)
        except RetryableError as exc:
            attempt += 1
            delay = min(config.stream.retry_max_seconds, 0.2 * 2 ** attempt)
            log.warning("retrying", stream=SQLITE_STREAM, error=str(exc), attempt=attempt, delay=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None


def sqlite_stream(config: Config, dsn: str, source: SqliteSource,
                  liveness: Liveness | None = None) -> Stream:
    stream: Stream
    replica_warned = False

    async def open_sink() -> Sink:
        nonlocal replica_warned
        conn = await connect(config.target, dsn)
        try:
            tables = await PostgresSink.prepare(conn, SQLITE_STREAM, list(source.tables.values()),
                                                config.target)
            async with guarded("opening the target"):  # a connection lost here is retried
                open_rejects = await pgstate.count_rejects(conn, SQLITE_STREAM)
                replica = await try_replica_role(conn)
            stream.count_rejects(open_rejects - stream.status.rejects)
            if not replica and not replica_warned:
                replica_warned = True
                log.warning("not allowed to set session_replication_role: foreign keys syncd creates "
                            "are deferred to commit, and target triggers fire for syncd's writes")
        except BaseException:
            await close_quietly(conn)
            raise
        return PostgresSink(conn, tables, strict=config.target.strict, on_reject=stream.count_rejects,
                            source_id=source.source_id, captured=source.captured)

    kill = killpoints.from_environment()
    stream = Stream(SQLITE_STREAM, source, open_sink, config.stream, batch_size=TABLE_BATCH_SIZE,
                    on_chunk=kill.get("chunk"), on_batch=kill.get("batch"),
                    on_progress=liveness.observe if liveness else None,
                    busy=liveness.busy if liveness else None)
    return stream


class Supervisor:
    """Owns the streams of one `syncd run`: starts them, reports them, stops them in order."""

    def __init__(self, config: Config, *, until_caught_up: bool = False,
                 liveness: Liveness | None = None, direction: str = FORWARD,
                 ownership: Ownership | None = None) -> None:
        self.config = config
        self.direction = direction
        self.liveness = liveness
        self.until_caught_up = until_caught_up
        self.ownership = ownership
        self.started = False
        self.streams: list[Stream] = []
        self.stop_event = asyncio.Event()
        self._sources: list[SqliteSource] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.dsn = ""
        self.chroma: ChromaStreams | None = None  # the Chroma streams follow the catalog themselves
        self._chroma_task: asyncio.Task[None] | None = None

    def statuses(self) -> Sequence[StreamStatus]:
        return [s.status for s in self.streams] + (self.chroma.statuses() if self.chroma else [])

    def caught_up(self) -> bool:
        """Every stream ended its ``until_caught_up`` run with nothing left to apply."""
        streams = self.streams + (list(self.chroma.streams.values()) if self.chroma else [])
        return self.started and all(s.caught_up for s in streams)

    async def _own(self, streams: Sequence[Stream], *, guard: bool = True) -> bool:
        """Claim *streams* before they start, and guard their sinks (unless their builder did);
        waits out an unreachable target (False if stopped meanwhile). Another owner raises
        AlreadyRunning."""
        if self.ownership is None:
            return True
        attempt = 0
        for stream in streams:
            while True:
                try:
                    await self.ownership.claim(self.dsn, stream.name)
                    break
                except RetryableError as exc:
                    attempt += 1
                    delay = min(self.config.stream.retry_max_seconds, 0.2 * 2 ** attempt)
                    log.warning("retrying", stream=stream.name, error=str(exc), attempt=attempt, delay=delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop_event.wait(), delay)
                    if self.stop_event.is_set():
                        return False
            if guard:
                stream.open_sink = self.ownership.guard(self.dsn, stream.name, stream.open_sink)
        return True

    async def start(self) -> None:
        """Open the sources and start one task per stream; on failure, close what was opened."""
        try:
            await self._start()
        except BaseException:
            await self._close_all()
            raise

    async def _start(self) -> None:
        self.dsn = await target_dsn(self.config)
        if self.direction == REVERSE:
            await self._start_reverse()
            return
        if self.config.sqlite is not None:
            source = await open_sqlite_source(self.config, self.stop_event)
            if source is None:
                return
            self.streams.append(sqlite_stream(self.config, self.dsn, source, self.liveness))
            self._sources.append(source)
        if self.config.chroma is not None:
            from syncd.streams.chroma_to_pgvector import open_chroma_streams

            self.chroma = await open_chroma_streams(self.config, self.dsn, self.liveness, self.ownership)
        if not self.streams and self.chroma is None:
            raise FatalError("no stream to run: configure [source.sqlite] or [source.chroma]")
        if not await self._own(self.streams) or (
                self.chroma is not None and not await self._own(list(self.chroma.streams.values()),
                                                                 guard=False)):
            return
        self.started = True
        self._tasks = [asyncio.create_task(s.run(self.stop_event, until_caught_up=self.until_caught_up),
                                           name=s.name) for s in self.streams]
        if self.chroma is not None:
            self._chroma_task = asyncio.create_task(
                self.chroma.run(self.stop_event, until_caught_up=self.until_caught_up), name="chroma")
            self._chroma_task.add_done_callback(self._chroma_ended)

    def _chroma_ended(self, task: asyncio.Task[None]) -> None:
        """The Chroma streams ended on an error of their own: stop the whole daemon (exit 1, the
        reason printed by :meth:`wait`) rather than live on with them stopped — a service manager
        restarts it, and the operator sees why."""
        if task.cancelled() or self.stop_event.is_set() or task.exception() is None:
            return
        log.error("chroma streams stopped; stopping the daemon", error=str(task.exception()))
        self.request_stop()

    async def _start_reverse(self) -> None:
        """After a cutover: stream PostgreSQL back into SQLite and pgvector back into Chroma."""
        if self.config.sqlite is not None:
            from syncd.streams.postgres_to_sqlite import reverse_source, reverse_table_stream

            source = reverse_source(self.config, self.dsn, self.config.sqlite)
            self.streams.append(reverse_table_stream(self.config, self.dsn, self.config.sqlite, self.liveness,
                                                     source))
            self._closers.append(source.close)
        if self.config.chroma is not None:
            from syncd.streams.pgvector_to_chroma import open_reverse_chroma_streams

            chroma = await open_reverse_chroma_streams(self.config, self.dsn, self.liveness)
            self.streams += chroma
            self._closers.append(chroma.close)
        if not await self._own(self.streams):
            return
        self.started = True
        self._tasks = [asyncio.create_task(s.run(self.stop_event, until_caught_up=self.until_caught_up),
                                           name=s.name) for s in self.streams]

    async def _close_all(self) -> None:
        for src in self._sources:
            with contextlib.suppress(Exception):
                await src.close()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        if self.chroma is not None:
            with contextlib.suppress(Exception):
                await self.chroma.close()

    def request_stop(self) -> None:
        """Stop intake; each stream finishes the batch it is applying."""
        self.stop_event.set()

    def force_stop(self) -> None:
        """Cancel at once; open transactions roll back."""
        for t in self._tasks:
            t.cancel()
        if self._chroma_task is not None:
            self._chroma_task.cancel()

    async def wait(self) -> int:
        """Wait for every stream to end; close the sources; return the exit code."""
        failed = False
        try:
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for s, r in zip(self.streams, results, strict=True):
                if isinstance(r, SyncdError):
                    failed = True
                    log.error("stream failed", stream=s.name, error=str(r))
                elif isinstance(r, asyncio.CancelledError):
                    log.warning("stream cancelled", stream=s.name)
                elif isinstance(r, BaseException):
                    failed = True
                    log.error("stream crashed", stream=s.name, error=repr(r))
            if self._chroma_task is not None:
                (r,) = await asyncio.gather(self._chroma_task, return_exceptions=True)
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    failed = True
                    text = str(r) if isinstance(r, SyncdError) else repr(r)
                    log.error("chroma streams stopped", error=text)
                    print(f"syncd: chroma streams stopped: {r}")
        finally:
            await self._close_all()
        statuses = self.statuses()
        if failed or any(s.phase is Phase.FAILED for s in statuses):
            for st in statuses:
                if st.phase is Phase.FAILED:
                    print(f"syncd: stream {st.name} stopped: {st.last_error}")
            return 1
        return 0
