"""`syncd run`: the process around the streams — ownership, signals, health, systemd, exit codes.

Start: the state-dir lock first (a second daemon on the same state dir exits 1 before it does
anything), then the health server, then the streams of the direction ``syncd.cutover`` names
(:class:`Director`), each claimed in the target before it starts (:mod:`syncd.streams.ownership`).

Exit codes: 0 stopped cleanly (plain ``run`` on SIGTERM) or every stream caught up
(``--until-caught-up``); 1 a stream or store failed, or another process owns the state dir or
a stream; 3 ``--until-caught-up`` stopped by a signal before every stream caught up;
4 ``--until-caught-up --timeout`` ran out first. So ``run --until-caught-up && next-step`` runs
the next step only when the target holds everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

import asyncpg
import structlog

from syncd.config import Config
from syncd.errors import RetryableError, SyncdError
from syncd.pg.connect import close_quietly, connect
from syncd.service import progress
from syncd.service.health import Liveness, serve, tick
from syncd.service.identity import identify
from syncd.service.notify import Notifier, summarize, watchdog_interval, watchdog_loop
from syncd.status import StreamStatus
from syncd.streams.ownership import Holder, Ownership, StateDirLock
from syncd.streams.supervisor import Supervisor, target_dsn

log = structlog.get_logger("syncd.streams.supervisor")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TIMEOUT = 0, 1, 3, 4


class Director:
    """Runs the streams of the direction ``syncd.cutover`` names, and switches when it changes.

    Forward (the app on SQLite/Chroma) runs sqlite → postgres and chroma → pgvector; reverse
    (after `syncd cutover`) runs postgres → sqlite and pgvector → chroma. `syncd cutover` and
    `syncd rollback` change the direction and NOTIFY; the director also polls, so a missed
    notification delays the switch by at most ``poll`` seconds.
    """

    def __init__(self, config: Config, *, until_caught_up: bool, liveness: Liveness,
                 ownership: Ownership | None = None, poll: float = 1.0) -> None:
        self.config, self.until_caught_up, self.liveness, self.poll = config, until_caught_up, liveness, poll
        self.ownership = ownership
        self.current: Supervisor | None = None
        self.stopping = False
        self.forced = False
        self.last_error: str | None = None

    def statuses(self) -> Sequence[StreamStatus]:
        return self.current.statuses() if self.current else []

    @property
    def caught_up(self) -> bool:
        return self.current is not None and self.current.caught_up()

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
                self.last_error = str(exc)
                log.warning("cannot read the cutover state; retrying", error=str(exc))
                await asyncio.sleep(min(self.config.stream.retry_max_seconds, 2.0))
                if self.stopping:
                    return EXIT_OK
                continue
            sup = Supervisor(self.config, until_caught_up=self.until_caught_up, liveness=self.liveness,
                             direction=direction, ownership=self.ownership)
            self.current = sup
            if self.stopping:
                return EXIT_OK
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


def _not_caught_up(director: Director) -> str:
    """Where each stream stood when it was stopped, for the last line of the run."""
    parts = []
    for s in director.statuses():
        if s.snapshot_total and s.snapshot_copied < s.snapshot_total:
            where = f"snapshot, {s.snapshot_copied:,} of {s.snapshot_total:,} rows copied"
        else:
            where = f"checkpoint {s.checkpoint} of {s.source_position}"
        parts.append(f"{s.name} at {where}" + (f" ({s.last_error})" if s.degraded and s.last_error else ""))
    if not parts and director.last_error:
        parts.append(director.last_error)
    return "; ".join(parts) or "no stream had started"


async def run(config: Config, *, until_caught_up: bool = False, timeout: float | None = None,
              install_signals: bool = True, env: Mapping[str, str] | None = None) -> int:
    """`syncd run`: streams, the health server and systemd notification. Returns the exit code."""
    holder = Holder.this_process(config)
    dir_lock = StateDirLock(config.state_dir)
    dir_lock.acquire(holder)  # before anything else: a second daemon stops here
    ownership = Ownership(config, holder)
    uninstall = ownership.install()
    try:
        return await _run(config, ownership, until_caught_up=until_caught_up, timeout=timeout,
                          install_signals=install_signals, env=os.environ if env is None else env)
    finally:
        uninstall()
        await ownership.close()
        dir_lock.release()


async def _run(config: Config, ownership: Ownership, *, until_caught_up: bool, timeout: float | None,
               install_signals: bool, env: Mapping[str, str]) -> int:
    liveness = Liveness(stale_after=config.health.stale_after_seconds)
    director = Director(config, until_caught_up=until_caught_up, liveness=liveness, ownership=ownership)
    notifier = Notifier.from_env(env)
    server = None
    duties: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    signals = 0
    timed_out = False
    lost: list[str] = []

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

    def on_timeout() -> None:
        nonlocal timed_out
        timed_out = True
        log.warning("--timeout reached before every stream caught up: stopping", seconds=timeout)
        director.request_stop()

    def on_lost(message: str) -> None:
        lost.append(message)
        director.request_stop()

    def on_started() -> None:
        duties.append(asyncio.create_task(tick(liveness), name="syncd-tick"))
        duties.append(asyncio.create_task(progress.show(director.statuses), name="syncd-progress"))
        duties.append(asyncio.create_task(ownership.watch(on_lost=on_lost), name="syncd-ownership"))
        duties.append(asyncio.create_task(watchdog_loop(
            notifier, watchdog_interval(env), status=lambda: summarize(director.statuses()),
            healthy=liveness.healthy), name="syncd-watchdog"))
        notifier.ready(summarize(director.statuses()))

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
    timer = loop.call_later(timeout, on_timeout) if timeout is not None else None
    try:
        if config.health.listen:
            server = await serve(config.health.listen, director.statuses, liveness,
                                 max_lag_seconds=config.health.max_lag_seconds, identity=identify(config))
        code = await director.run(on_started)
    finally:
        if timer is not None:
            timer.cancel()
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
    if lost:
        print(f"syncd: {lost[0]}", file=sys.stderr)
        return EXIT_FAILED
    if code != EXIT_OK or not until_caught_up or director.caught_up:
        return code
    if timed_out:
        print(f"syncd: not caught up after {timeout:g} s (--timeout), stopped: {_not_caught_up(director)}",
              file=sys.stderr)
        return EXIT_TIMEOUT
    print(f"syncd: stopped by a signal before every stream caught up (not caught up): "
          f"{_not_caught_up(director)}", file=sys.stderr)
    return EXIT_INTERRUPTED
