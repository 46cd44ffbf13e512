"""Builds streams from config, runs them, and stops them in order.

First SIGTERM / SIGINT: stop intake; each stream finishes the batch it is
applying (batch and checkpoint commit together), then connections close.
A second signal cancels the streams at once: an open transaction is rolled
back, so the checkpoint can never run ahead of committed data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import asyncpg
import structlog

from syncd import killpoints
from syncd.config import Config
from syncd.cutover.state import FORWARD, REVERSE
from syncd.errors import FatalError, RetryableError, SyncdError
from syncd.model import Phase
from syncd.ports import Sink
from syncd.service import progress
from syncd.service.health import Liveness, serve, tick
from syncd.service.notify import Notifier, summarize, watchdog_interval, watchdog_loop
from syncd.status import StreamStatus
from syncd.stores.postgres import state as pgstate
from syncd.stores.postgres.connect import close_quietly, connect, resolve_dsn, try_replica_role
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.sqlite.source import SqliteSource
from syncd.stream import Stream

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
            stream.count_rejects(await pgstate.count_rejects(conn, SQLITE_STREAM) - stream.status.rejects)
            if not await try_replica_role(conn) and not replica_warned:
                replica_warned = True
                log.warning("not allowed to set session_replication_role: foreign keys syncd creates "
                            "are deferred to commit, and target triggers fire for syncd's writes")
        except BaseException:
            await close_quietly(conn)
            raise
        return PostgresSink(conn, tables, strict=config.target.strict, on_reject=stream.count_rejects,
                            source_id=source.source_id, captured=source.captured)

    kill = killpoints.from_environment()
    stream = Stream(SQLITE_STREAM, source, open_sink, config.stream,
                    on_chunk=kill.get("chunk"), on_batch=kill.get("batch"),
                    on_progress=liveness.observe if liveness else None,
                    busy=liveness.busy if liveness else None)
    return stream


class Supervisor:
    """Owns the streams of one `syncd run`: starts them, reports them, stops them in order."""

    def __init__(self, config: Config, *, until_caught_up: bool = False,
                 liveness: Liveness | None = None, direction: str = FORWARD) -> None:
        self.config = config
        self.direction = direction
        self.liveness = liveness
        self.until_caught_up = until_caught_up
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

            self.chroma = await open_chroma_streams(self.config, self.dsn, self.liveness)
        if not self.streams and self.chroma is None:
            raise FatalError("no stream to run: configure [source.sqlite] or [source.chroma]")
        self._tasks = [asyncio.create_task(s.run(self.stop_event, until_caught_up=self.until_caught_up),
                                           name=s.name) for s in self.streams]
        if self.chroma is not None:
            self._chroma_task = asyncio.create_task(
                self.chroma.run(self.stop_event, until_caught_up=self.until_caught_up), name="chroma")

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


class Director:
    """Runs the streams of the direction ``syncd.cutover.cutover`` names, and switches when it changes.

    Forward (the app on SQLite/Chroma) runs sqlite → postgres and chroma → pgvector; reverse
    (after `syncd cutover`) runs postgres → sqlite and pgvector → chroma. `syncd cutover` and
    `syncd rollback` change the direction and NOTIFY; the director also polls, so a missed
    notification delays the switch by at most ``poll`` seconds.
    """

    def __init__(self, config: Config, *, until_caught_up: bool, liveness: Liveness,
                 poll: float = 1.0) -> None:
        self.config, self.until_caught_up, self.liveness, self.poll = config, until_caught_up, liveness, poll
        self.current: Supervisor | None = None
        self.stopping = False
        self.forced = False

    def statuses(self) -> Sequence[StreamStatus]:
        return self.current.statuses() if self.current else []

    def request_stop(self) -> None:
        self.stopping = True
        if self.current:
            self.current.request_stop()

    def force_stop(self) -> None:
        self.stopping = self.forced = True
        if self.current:
            self.current.force_stop()

    async def _direction(self, dsn: str) -> str:
        from syncd.cutover import state as cutover_state

        conn = await connect(self.config.target, dsn)
        try:
            return await cutover_state.direction(conn)
        finally:
            await close_quietly(conn)

    async def _watch(self, dsn: str, running: str) -> None:
        """Return when the stored direction is no longer *running*."""
        from syncd.cutover import state as cutover_state

        conn: asyncpg.Connection | None = None
        woke = asyncio.Event()
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect(self.config.target, dsn)
                        await conn.add_listener(cutover_state.CHANNEL, lambda *_: woke.set())
                    if await cutover_state.direction(conn) != running:
                        return
                except SyncdError as exc:
                    log.warning("cannot read the cutover state", error=str(exc))
                    conn = None
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("cannot read the cutover state", error=str(exc))
                    if conn is not None:
                        conn.terminate()
                    conn = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), self.poll)
                woke.clear()
        finally:
            await close_quietly(conn)

    async def run(self, on_started: Callable[[], None]) -> int:
        """Run until stopped. *on_started* is called once the daemon is up — before the first
        direction is read, so that a PostgreSQL still unreachable at start shows in health and
        status (no stream yet) instead of holding up systemd's start."""
        dsn = await target_dsn(self.config)
        on_started()
        while True:
            try:
                direction = await self._direction(dsn)
            except RetryableError as exc:
                log.warning("cannot read the cutover state; retrying", error=str(exc))
                await asyncio.sleep(min(self.config.stream.retry_max_seconds, 2.0))
                if self.stopping:
                    return 0
                continue
            sup = Supervisor(self.config, until_caught_up=self.until_caught_up, liveness=self.liveness,
                             direction=direction)
            self.current = sup
            if self.stopping:
                return 0
            log.info("streaming", direction=direction)
            await sup.start()
            waiter = asyncio.create_task(sup.wait(), name="syncd-streams")
            watcher = asyncio.create_task(self._watch(dsn, direction), name="syncd-direction")
            done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                return waiter.result()
            log.info("direction changed: stopping the streams of this direction", direction=direction)
            sup.request_stop()
            code = await waiter
            if code != 0 or self.stopping:
                return code


async def run(config: Config, *, until_caught_up: bool = False, install_signals: bool = True,
              env: Mapping[str, str] | None = None) -> int:
    """`syncd run`: streams, the health server and systemd notification. Returns the exit code."""
    env = os.environ if env is None else env
    liveness = Liveness(stale_after=config.health.stale_after_seconds)
    director = Director(config, until_caught_up=until_caught_up, liveness=liveness)
    notifier = Notifier.from_env(env)
    server = None
    duties: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping: finishing the current batch (signal again to stop at once)")
            notifier.stopping("stopping: finishing the current batch")
            director.request_stop()
        else:
            log.warning("stopping at once: the open batch is rolled back")
            director.force_stop()

    def on_started() -> None:
        duties.append(asyncio.create_task(tick(liveness), name="syncd-tick"))
        duties.append(asyncio.create_task(progress.show(director.statuses), name="syncd-progress"))
        duties.append(asyncio.create_task(watchdog_loop(
            notifier, watchdog_interval(env), status=lambda: summarize(director.statuses()),
            healthy=liveness.healthy), name="syncd-watchdog"))
        notifier.ready(summarize(director.statuses()))

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
    try:
        if config.health.listen:
            server = await serve(config.health.listen, director.statuses, liveness,
                                 max_lag_seconds=config.health.max_lag_seconds)
        return await director.run(on_started)
    finally:
        for t in duties:
            t.cancel()
        for t in duties:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if server is not None:
            await server.close()
        notifier.stopping()
        notifier.close()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
