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
from collections.abc import Mapping, Sequence

import structlog

from syncd import killpoints, progress
from syncd.config import Config
from syncd.errors import FatalError, SyncdError
from syncd.health import Liveness, serve, tick
from syncd.model import Phase
from syncd.notify import Notifier, summarize, watchdog_interval, watchdog_loop
from syncd.pg import close_quietly, connect, resolve_dsn
from syncd.sinks import pgstate
from syncd.sinks.postgres import PostgresSink
from syncd.sources.sqlite import SqliteSource
from syncd.status import StreamStatus
from syncd.stream import Stream, StreamSink

log = structlog.get_logger("syncd.supervisor")

SQLITE_STREAM = "sqlite"


async def target_dsn(config: Config) -> str:
    """The target DSN; starting the embedded server runs in a thread (it blocks)."""
    return await asyncio.to_thread(resolve_dsn, config.target, config.state_dir)


async def open_sqlite_stream(config: Config, dsn: str, liveness: Liveness | None = None
                             ) -> tuple[Stream, SqliteSource]:
    assert config.sqlite is not None
    source = await SqliteSource.open(config.sqlite)
    rejects = 0
    try:
        conn = await connect(config.target, dsn)
        try:
            if await pgstate.has_state(conn):
                rejects = await pgstate.count_rejects(conn, SQLITE_STREAM)
        finally:
            await close_quietly(conn)
    except BaseException:
        await source.close()
        raise

    stream: Stream

    async def open_sink() -> StreamSink:
        conn = await connect(config.target, dsn)
        try:
            tables = await PostgresSink.prepare(conn, SQLITE_STREAM, list(source.tables.values()),
                                                config.target)
        except BaseException:
            await close_quietly(conn)
            raise
        return PostgresSink(conn, tables, strict=config.target.strict, on_reject=stream.count_rejects)

    kill = killpoints.from_environment()
    stream = Stream(SQLITE_STREAM, source, open_sink, config.stream, rejects=rejects,
                    on_chunk=kill.get("chunk"), on_batch=kill.get("batch"),
                    on_progress=liveness.observe if liveness else None,
                    busy=liveness.busy if liveness else None)
    return stream, source


class Supervisor:
    """Owns the streams of one `syncd run`: starts them, reports them, stops them in order."""

    def __init__(self, config: Config, *, until_caught_up: bool = False,
                 liveness: Liveness | None = None) -> None:
        self.config = config
        self.liveness = liveness
        self.until_caught_up = until_caught_up
        self.streams: list[Stream] = []
        self.stop_event = asyncio.Event()
        self._sources: list[SqliteSource] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.dsn = ""

    def statuses(self) -> Sequence[StreamStatus]:
        return [s.status for s in self.streams]

    async def start(self) -> None:
        self.dsn = await target_dsn(self.config)
        if self.config.sqlite is not None:
            stream, source = await open_sqlite_stream(self.config, self.dsn, self.liveness)
            self.streams.append(stream)
            self._sources.append(source)
        if not self.streams:
            raise FatalError("no stream to run: configure [source.sqlite]")
        self._tasks = [asyncio.create_task(s.run(self.stop_event, until_caught_up=self.until_caught_up),
                                           name=s.name) for s in self.streams]

    def request_stop(self) -> None:
        """Stop intake; each stream finishes the batch it is applying."""
        self.stop_event.set()

    def force_stop(self) -> None:
        """Cancel at once; open transactions roll back."""
        for t in self._tasks:
            t.cancel()

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
        finally:
            for src in self._sources:
                with contextlib.suppress(Exception):
                    await src.close()
        if failed or any(s.status.phase is Phase.FAILED for s in self.streams):
            for s in self.streams:
                if s.status.phase is Phase.FAILED:
                    print(f"syncd: stream {s.name} stopped: {s.status.last_error}")
            return 1
        return 0


async def run(config: Config, *, until_caught_up: bool = False, install_signals: bool = True,
              env: Mapping[str, str] | None = None) -> int:
    """`syncd run`: streams, the health server and systemd notification. Returns the exit code."""
    env = os.environ if env is None else env
    liveness = Liveness(stale_after=config.health.stale_after_seconds)
    sup = Supervisor(config, until_caught_up=until_caught_up, liveness=liveness)
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
            sup.request_stop()
        else:
            log.warning("stopping at once: the open batch is rolled back")
            sup.force_stop()

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
    try:
        if config.health.listen:
            server = await serve(config.health.listen, sup.statuses, liveness,
                                 max_lag_seconds=config.health.max_lag_seconds)
        await sup.start()
        duties.append(asyncio.create_task(tick(liveness), name="syncd-tick"))
        duties.append(asyncio.create_task(progress.show(sup.statuses), name="syncd-progress"))
        duties.append(asyncio.create_task(watchdog_loop(
            notifier, watchdog_interval(env), status=lambda: summarize(sup.statuses()),
            healthy=liveness.healthy), name="syncd-watchdog"))
        notifier.ready(summarize(sup.statuses()))
        return await sup.wait()
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
