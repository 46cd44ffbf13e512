"""Snapshot progress bars for a terminal: one line per table or collection.

Only drawn when stderr is a TTY (``run``, ``run --until-caught-up``, ``export`` and
``import``); in logs, journald or CI there are no bars, only the log events. A stream's
bars come from its status (:func:`show`); work that is not a stream (``export``) counts its
rows into a :class:`Meter`, which draws the same bars.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
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


class Meter:
    """Bars for rows counted by hand: :meth:`begin` an object with its total, :meth:`add` rows as
    they are done; redrawn at most every *interval* seconds. Nothing at all when *out* (stderr by
    default) is not a TTY."""

    def __init__(self, name: str, out: TextIO | None = None, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        out = out or sys.stderr
        self.bars = ProgressBars(out) if out.isatty() else None
        self.name, self.interval, self.clock = name, interval, clock
        self.status: StreamStatus | None = None
        self._began = self._drawn = 0.0
        self._first = 0

    def begin(self, obj: str, total: int | None, done: int = 0) -> None:
        """A new object (*done* rows of it already there: a resumed run); the one before is done."""
        self._draw(force=True)  # its last numbers, not the last drawn
        self._began, self._first = self.clock(), done
        self.status = StreamStatus(name=self.name, phase=Phase.SNAPSHOT, snapshot_object=obj,
                                   snapshot_object_copied=done, snapshot_object_total=total)
        self._draw(force=True)

    def add(self, rows: int) -> None:
        if self.status is None:
            return
        done = self.status.snapshot_object_copied + rows
        took = self.clock() - self._began
        speed = (done - self._first) / took if took > 0 else 0.0
        total = self.status.snapshot_object_total
        self.status = dataclasses.replace(self.status, snapshot_object_copied=done, rows_per_second=speed,
                                          snapshot_object_total=None if total is None else max(total, done))
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if self.bars is None or self.status is None or (not force and now - self._drawn < self.interval):
            return
        self._drawn = now
        self.bars.draw([self.status])

    def close(self) -> None:
        """The last object's final line: "done" when all its rows are, else where it stopped."""
        if self.bars is None:
            return
        self._draw(force=True)
        st = self.status
        if st is not None and st.snapshot_object_copied >= (st.snapshot_object_total or 0):
            self.bars.draw([StreamStatus(name=self.name, phase=Phase.STREAMING)])
        self.bars.close()
        self.status = None
