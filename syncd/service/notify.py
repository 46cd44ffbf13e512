"""systemd's notify protocol (sd_notify), by hand: one datagram per message.

    READY=1        start-up finished (Type=notify: systemctl start returns now)
    STATUS=...     one line shown by ``systemctl status``
    WATCHDOG=1     "still alive"; missing it for WatchdogSec makes systemd restart us
    STOPPING=1     clean shutdown has begun

The socket comes from ``NOTIFY_SOCKET`` in the environment mapping handed to
:meth:`Notifier.from_env` (never read at import time); a leading ``@`` names an
abstract socket. Without it every call is a no-op, so the daemon runs the same
in a terminal, in Docker and under systemd. Sending never blocks and never
raises: a lost notification must not stop a stream.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, Sequence

import structlog

from syncd.errors import redact
from syncd.model import Phase
from syncd.status import StreamStatus

log = structlog.get_logger(__name__)

STATUS_EVERY = 10.0
"""Seconds between STATUS= updates when systemd runs no watchdog."""


class Notifier:
    """Sends notify messages to *address*, or does nothing when it is None."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        if self.address is not None:
            if not self.address.startswith(("/", "@")):
                log.warning("NOTIFY_SOCKET is neither a path nor @abstract; ignored",
                            notify_socket=self.address)
                self.address = None
            else:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; True if it was sent."""
        if self._sock is None or self.address is None or not fields:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            log.warning("systemd notification not sent", error=str(exc), fields=list(fields))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([status_field(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.send(status_field(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([status_field(status)] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_field(text: str) -> str:
    """``STATUS=`` with *text* on one line and redacted."""
    return "STATUS=" + " ".join(redact(text).split())


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog period systemd asks for, in seconds, or None if there is none.

    Like sd_watchdog_enabled(): ``WATCHDOG_USEC`` must be a positive integer and,
    when ``WATCHDOG_PID`` is set, it must name this process.
    """
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        if usec:
            log.warning("WATCHDOG_USEC is not a positive integer; watchdog off", value=usec)
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


def summarize(statuses: Sequence[StreamStatus]) -> str:
    """One line for ``systemctl status``: phases, worst lag, rejects, trouble."""
    if not statuses:
        return "no streams running"
    phases: dict[str, int] = {}
    for s in statuses:
        label = s.phase.value
        if s.phase is Phase.SNAPSHOT and s.snapshot_percent is not None:
            label = f"snapshot {s.snapshot_percent:.0f} %"
        phases[label] = phases.get(label, 0) + 1
    parts = [", ".join(f"{n} {label}" for label, n in phases.items())]
    lags = [s.lag_seconds for s in statuses if s.lag_seconds is not None]
    if lags:
        parts.append(f"max lag {max(lags):.1f} s")
    pending = sum(s.pending or 0 for s in statuses)
    if pending:
        parts.append(f"{pending:,} pending")
    rejects = sum(s.rejects for s in statuses)
    if rejects:
        parts.append(f"{rejects:,} rejected")
    degraded = [s.name for s in statuses if s.degraded]
    if degraded:
        parts.append("degraded: " + ", ".join(degraded))
    failed = [s.name for s in statuses if s.phase is Phase.FAILED]
    if failed:
        parts.append("FAILED: " + ", ".join(failed))
    return "; ".join(parts)


async def watchdog_loop(notifier: Notifier, interval: float | None, *,
                        status: Callable[[], str] | None = None,
                        healthy: Callable[[], bool] | None = None,
                        status_every: float = STATUS_EVERY) -> None:
    """Until cancelled: WATCHDOG=1 every *interval* / 2 seconds, with STATUS= from *status*.

    *interval* is :func:`watchdog_interval`'s answer; with None only STATUS= is
    sent, every *status_every* seconds. While *healthy* returns False (or
    raises) the WATCHDOG=1 ping is withheld, so that systemd restarts a daemon
    whose streams are stuck even though its event loop still runs; a blocked
    loop sends nothing at all. Returns at once when NOTIFY_SOCKET is unset.
    """
    if not notifier.enabled:
        return
    period = interval / 2 if interval else status_every
    withheld = False
    while True:
        fields: list[str] = []
        if interval:
            ok = _healthy(healthy)
            if ok:
                fields.append("WATCHDOG=1")
            if ok == withheld:
                withheld = not ok
                if withheld:
                    log.error("watchdog ping withheld: a stream or the event loop is stuck")
                else:
                    log.info("watchdog ping resumed")
        if status is not None:
            try:
                fields.append(status_field(status()))
            except Exception:
                log.exception("status line for systemd failed")
        notifier.send(*fields)
        await asyncio.sleep(period)


def _healthy(check: Callable[[], bool] | None) -> bool:
    if check is None:
        return True
    try:
        return check()
    except Exception:
        log.exception("liveness check for the watchdog failed")
        return False
