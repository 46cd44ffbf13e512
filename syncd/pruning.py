"""A stream's changelog prune, run beside the stream.

The source prunes what the stream has applied once per ``prune_interval``, as a task: the
stream reads and applies meanwhile (a catch-up's prune takes most of a second; the SQLite
source prunes in steps on its reading thread, so reads get in between). An error of the prune
is raised at the stream's next check; a stream that ends stops a prune under way, and the next
run prunes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from syncd.model import Position
from syncd.ports import Source

log = structlog.get_logger("syncd.stream")


class Pruning:
    """The prunes of one stream's source."""

    def __init__(self, source: Source, stream: str, interval: float) -> None:
        self.source = source
        self.stream = stream
        self.interval = interval
        self._task: asyncio.Future[None] | None = None

    async def due(self, position: Position, last: float) -> float:
        """Start a prune up to *position* (committed) when the interval since *last* is over and
        none is under way; the time the last one began. Raises the error of one that ended."""
        if self._task is not None:
            if not self._task.done():
                return last
            task, self._task = self._task, None
            await task
        now = time.monotonic()
        if now - last < self.interval:
            return last
        self._task = asyncio.ensure_future(self._prune(position))
        return now

    async def _prune(self, position: Position) -> None:
        pruned = await self.source.prune(position)
        if pruned:
            log.debug("pruned changelog", stream=self.stream, rows=pruned, upto=position.offset)

    async def end(self, *, failed: bool) -> None:
        """Stop a prune under way before the stream ends; raise the error of one that ended with
        it, unless the stream itself *failed*."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done() and not failed:
            await task
            return
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
