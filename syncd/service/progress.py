"""Snapshot progress bars for a terminal: one line per table or collection.

Only drawn when stderr is a TTY (``run`` and ``run --until-caught-up``); in
logs, journald or CI there are no bars, only the log events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from syncd.model import Phase
from syncd.status import StreamStatus

WIDTH = 28


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def render(status: StreamStatus) -> str | None:
    """The bar for *status*'s current object, or None when it is not copying."""
    if status.phase is not Phase.SNAPSHOT or status.snapshot_object is None:
        return None
    done, total = status.snapshot_object_copied, status.snapshot_object_total or 0
    frac = min(1.0, done / total) if total else 1.0
    filled = int(frac * WIDTH)
    bar = "█" * filled + "░" * (WIDTH - filled)
    speed = status.rows_per_second
    eta = (total - done) / speed if speed > 0 and total >= done else None
    return (f"{status.name} {status.snapshot_object:<20.20} {bar} {frac * 100:5.1f}% "
            f"{done:>11,}/{total:,} rows  {speed:,.0f} rows/s  ETA {_duration(eta)}")


class ProgressBars:
    """Redraws the bars of every stream in place; a finished object keeps its final line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.current: dict[str, StreamStatus] = {}  # stream -> last status drawn

    def draw(self, statuses: Sequence[StreamStatus]) -> None:
        lines = []
        for st in statuses:
            prev = self.current.get(st.name)
            line = render(st)
            if prev and (line is None or st.snapshot_object != prev.snapshot_object):
                total = prev.snapshot_object_total or prev.snapshot_object_copied
                final = render(dataclasses.replace(prev, snapshot_object_copied=total))
                self.out.write("\r\x1b[K" + (final or "").replace(" ETA --:--", " done")
                               .replace(" ETA 00:00", " done") + "\n")
                del self.current[st.name]
            if line is not None:
                self.current[st.name] = st
                lines.append(line)
        if lines:
            self.out.write("\r\x1b[K" + "  |  ".join(lines))
        self.out.flush()

    def close(self) -> None:
        if self.current:
            self.out.write("\n")
            self.out.flush()
        self.current.clear()


async def show(statuses: Callable[[], Sequence[StreamStatus]], out: TextIO | None = None,
               interval: float = 0.2) -> None:
    """Until cancelled: redraw the bars every *interval* seconds (no-op when not a TTY)."""
    out = out or sys.stderr
    if not out.isatty():
        return
    bars = ProgressBars(out)
    try:
        while True:
            bars.draw(statuses())
            await asyncio.sleep(interval)
    finally:
        bars.draw(statuses())
        bars.close()
