"""The one loop: source -> batch -> sink.apply, with snapshot and catch-up first.

Phases: snapshot -> catch-up -> streaming. The position lives in the sink: it is
read from there at start and after every error (never trusted from memory), and
it only moves when the sink commits a batch with it. Retryable errors (network,
locks) are retried with exponential backoff and jitter; the stream reports
``degraded`` meanwhile. Fatal errors end the stream in phase ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import tenacity

from syncd.config import StreamOptions
from syncd.errors import RetryableError, SchemaChanged, SyncdError, TargetUnavailable
from syncd.model import (
    Batch,
    InvalidText,
    Key,
    Phase,
    Position,
    RowidCursor,
    SnapshotState,
    jsonb_holds,
    transition,
)
from syncd.ports import ApplyResult, Chunk, Pending, Sink, Source
from syncd.pruning import Pruning
from syncd.status import StreamStatus

log = structlog.get_logger("syncd.stream")

IDLE_PING_SECONDS = 5.0
"""While no change arrives, the sink is still checked this often."""
BATCH_SIZE = 2000
"""Changes per batch unless ``stream.batch_size`` says otherwise."""
TABLE_BATCH_SIZE = 5000
"""The same, for a SQLite database's tables: a catch-up applies 1.2-1.3x as many changes per
second as with 2,000 (and fewer with 10,000; docs/benchmarks.md). Collections keep 2,000:
PostgreSQL indexes a few hundred vectors a second, and a batch is one transaction."""
PENDING_EVERY_SECONDS = 0.5
"""While changes are applied, what the source still holds is published at most this often."""


def _encode_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$hex": v.hex()}
    if isinstance(v, RowidCursor):
        return {"$rowid": v.to_json()}
    if isinstance(v, InvalidText):
        return {"$invalid_text_hex": v.raw.hex()}
    if isinstance(v, str) and not jsonb_holds(v):
        return {"$text_hex": v.encode("utf-8", "surrogatepass").hex()}
    if isinstance(v, float) and not math.isfinite(v):  # JSON has no infinity
        return {"$float": repr(v)}
    return v


def _decode_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    if "$hex" in v:
        return bytes.fromhex(v["$hex"])
    if "$text_hex" in v:
        return bytes.fromhex(v["$text_hex"]).decode("utf-8", "surrogatepass")
    if "$invalid_text_hex" in v:
        return InvalidText(bytes.fromhex(v["$invalid_text_hex"]))
    if "$float" in v:
        return float(v["$float"])
    if "$rowid" in v:
        return RowidCursor.from_json(v["$rowid"])
    raise ValueError(f"unknown key encoding {sorted(v)}")


def encode_key(key: Key) -> list[Any]:
    """A key as JSON that jsonb stores exactly (the snapshot's resume position): blobs as
    ``{"$hex": …}``, text jsonb cannot hold (NUL, invalid UTF-8) as ``{"$text_hex": …}`` (its
    UTF-8 bytes, lone surrogates kept), SQLite text that is not UTF-8 (:class:`InvalidText`) as
    ``{"$invalid_text_hex": …}`` (its bytes), infinities as ``{"$float": "inf"}``, the cursor of a
    table paged by rowid as ``{"$rowid": [rowid, since, schema_version, epoch]}``."""
    return [_encode_value(v) for v in key]


def decode_key(key: list[Any]) -> Key:
    """The key :func:`encode_key` wrote, exactly."""
    return tuple(_decode_value(v) for v in key)


class Stream:
    """One source -> sink stream. Only the stream mutates its status."""

    def __init__(self, name: str, source: Source, open_sink: Callable[[], Awaitable[Sink]],
                 options: StreamOptions, *, rejects: int = 0, batch_size: int = BATCH_SIZE,
                 on_progress: Callable[[StreamStatus], None] | None = None,
                 on_chunk: Callable[[str, Chunk], Awaitable[None]] | None = None,
                 on_batch: Callable[[Batch], Awaitable[None]] | None = None,
                 busy: Callable[[str, str], contextlib.AbstractContextManager[None]] | None = None,
                 may_release: Callable[[Sink], bool] | None = None) -> None:
        self.name = name
        self.source = source
        self.open_sink = open_sink
        self.options = options
        self.batch_size = options.batch_size or batch_size
        self.sink: Sink | None = None
        self.status = StreamStatus(name=name, phase=Phase.STARTING, rejects=rejects,
                                   updated_at=time.time())
        self.on_progress = on_progress
        self.on_chunk = on_chunk  # test hooks: kill points after a chunk / batch committed
        self.on_batch = on_batch
        self.busy = busy or (lambda _name, _doing: contextlib.nullcontext())
        """Marks a long step that publishes no progress (index builds), for the liveness check."""
        self.may_release = may_release
        """Whether an idle stream may close its sink until its next change (``None``: never);
        asked after ``options.release_idle_seconds`` without a change, once an idle ping has
        run (the sink's idle work, e.g. settling vector doubts, is done first)."""
        self._wait = tenacity.wait_exponential_jitter(multiplier=0.2, max=options.retry_max_seconds)
        self._rate_window: list[tuple[float, int]] = []
        self._last_pending_check = 0.0
        self._pending_gap = PENDING_EVERY_SECONDS
        self._pruning = Pruning(source, name, options.prune_interval)
        self.caught_up = False
        """Set when ``run(until_caught_up=True)`` ended because nothing was left to apply."""

    # --- status -------------------------------------------------------------------------

    def _publish(self, **changes: Any) -> None:
        if "phase" in changes and changes["phase"] is not self.status.phase:
            old = self.status.phase
            changes["phase"] = transition(old, changes["phase"])
            log.info("phase", stream=self.name, phase=changes["phase"].value, previous=old.value)
        self.status = dataclasses.replace(self.status, updated_at=time.time(), **changes)
        if self.on_progress:
            self.on_progress(self.status)

    def count_rejects(self, n: int) -> None:
        self._publish(rejects=self.status.rejects + n)

    def _rate(self, n: int) -> float:
        now = time.monotonic()
        self._rate_window.append((now, n))
        self._rate_window = [(t, k) for t, k in self._rate_window if now - t <= 10.0]
        span = max(now - self._rate_window[0][0], 1e-3)
        return sum(k for _, k in self._rate_window) / span if len(self._rate_window) > 1 else 0.0

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        """Run until *stop* is set (or caught up); raise FatalError if the stream cannot go on."""
        attempt = 0
        try:
            while not stop.is_set():
                progress_before = self.status.applied + self.status.snapshot_copied
                try:
                    if self.sink is None:
                        self.sink = await self.open_sink()
                    await self._run(stop, until_caught_up)
                    break
                except SchemaChanged as exc:  # not a failure: the sink is prepared again, at once
                    log.info("schema changed", stream=self.name, change=str(exc),
                             position=self.status.checkpoint)
                    await self._drop_sink()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)
                except RetryableError as exc:
                    if self.status.applied + self.status.snapshot_copied > progress_before:
                        attempt = 0
                    attempt += 1
                    delay = self._backoff(attempt)
                    log.warning("retrying", stream=self.name, error=str(exc), attempt=attempt,
                                delay=round(delay, 2), position=self.status.checkpoint)
                    self._publish(degraded=True, last_error=str(exc), retries=self.status.retries + 1)
                    if isinstance(exc, TargetUnavailable):
                        await self._drop_sink()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        except SyncdError as exc:  # not retryable: fatal, config, strict mode
            log.error("stream stopped", stream=self.name, error=str(exc))
            self._publish(phase=Phase.FAILED, last_error=str(exc))
            raise
        finally:
            await self._drop_sink()
        if self.status.phase not in (Phase.FAILED,):
            self._publish(phase=Phase.STOPPED)

    def _backoff(self, attempt: int) -> float:
        state = tenacity.RetryCallState(retry_object=tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(self._wait(state))

    async def _drop_sink(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            with contextlib.suppress(Exception):
                await sink.close()

    async def _run(self, stop: asyncio.Event, until_caught_up: bool) -> None:
        assert self.sink is not None
        checkpoint = await self.sink.load_checkpoint(self.name)  # never trust memory
        # a sink may hand back a snapshot again: some objects must be copied anew (schema change)
        while checkpoint is None or (checkpoint.snapshot and not checkpoint.snapshot.complete):
            state = checkpoint.snapshot if checkpoint and checkpoint.snapshot else None
            done = await self._snapshot(stop, state)
            if not done:
                return
            checkpoint = await self.sink.load_checkpoint(self.name)
            assert checkpoint is not None
        if self.status.phase is Phase.STARTING:
            self._publish(phase=Phase.CATCH_UP)
        await self._stream(stop, checkpoint.position, until_caught_up)

    async def _snapshot(self, stop: asyncio.Event, state: SnapshotState | None) -> bool:
        assert self.sink is not None
        if state is None:
            state = SnapshotState(start=await self.source.head())
            await self.sink.begin_snapshot(self.name, state)
            log.info("snapshot start", stream=self.name, position=state.start.offset)
        else:
            log.info("snapshot resume", stream=self.name, position=state.start.offset,
                     done=state.done, copied=sum(state.copied.values()))
        objects = list(self.source.snapshot_objects())
        totals = {o: await self.source.count(o) for o in objects}
        total = sum(max(totals[o], state.copied.get(o, 0)) if o not in state.done else state.copied.get(o, 0)
                    for o in objects)
        started, copied0 = time.monotonic(), sum(state.copied.values())
        if self.status.phase is not Phase.SNAPSHOT:
            self._publish(phase=Phase.SNAPSHOT, snapshot_total=total, snapshot_copied=copied0,
                          checkpoint=state.start.offset, degraded=False)
        for obj in objects:
            if obj in state.done:
                continue
            after = decode_key(state.last_key[obj]) if obj in state.last_key else None
            self._publish(snapshot_object=obj, snapshot_object_copied=state.copied.get(obj, 0),
                          snapshot_object_total=max(totals[obj], state.copied.get(obj, 0)))
            chunks = self.source.snapshot_chunks(obj, after, self.options.chunk_rows,
                                                 prepare=self.sink.prepare_chunk)
            async for chunk in chunks:
                if stop.is_set():
                    return False
                step = SnapshotState.from_json(state.to_json())  # adopted only once committed
                step.last_key[obj] = encode_key(chunk.last_key)
                step.copied[obj] = step.copied.get(obj, 0) + len(chunk.rows)
                result = await self.sink.copy_chunk(self.name, chunk, step)
                state = step
                copied = sum(state.copied.values())
                elapsed = time.monotonic() - started
                speed = (copied - copied0) / elapsed if elapsed > 0 else 0.0
                eta = (total - copied) / speed if speed > 0 else None
                self._publish(snapshot_copied=copied, rows_per_second=speed,
                              snapshot_eta_seconds=eta, degraded=False, last_error=None,
                              applied=self.status.applied + result.applied,
                              snapshot_object_copied=state.copied[obj],
                              snapshot_object_total=max(totals[obj], state.copied[obj]))
                log.debug("chunk", stream=self.name, table=obj, rows=len(chunk.rows),
                          copied=copied, total=total)
                if self.on_chunk:
                    await self.on_chunk(obj, chunk)
            state.done.append(obj)
            state.last_key.pop(obj, None)
            log.info("table copied", stream=self.name, table=obj, rows=state.copied.get(obj, 0))
        await self.sink.finish_snapshot(self.name, state)
        log.info("snapshot done", stream=self.name, rows=sum(state.copied.values()),
                 seconds=round(time.monotonic() - started, 2))
        self._publish(phase=Phase.CATCH_UP, snapshot_copied=sum(state.copied.values()),
                      snapshot_eta_seconds=0.0, snapshot_object=None)
        return True

    async def _stream(self, stop: asyncio.Event, position: Position, until_caught_up: bool) -> None:
        try:
            await self._stream_from(stop, position, until_caught_up)
        except BaseException:
            await self._pruning.end(failed=True)
            raise
        await self._pruning.end(failed=False)

    async def _stream_from(self, stop: asyncio.Event, position: Position, until_caught_up: bool) -> None:
        assert self.sink is not None
        self._publish(checkpoint=position.offset, degraded=False)
        last_prune = last_contact = last_change = time.monotonic()
        ahead: Batch | None = None  # read while the previous batch was applied
        while not stop.is_set():
            batch = ahead or await self.source.changes(position, self.batch_size)
            ahead = None
            if batch.position > position:
                result, ahead = await self._apply_reading_next(batch)
                position = batch.position
                last_contact = last_change = time.monotonic()
                self._publish(checkpoint=position.offset, applied=self.status.applied + result.applied,
                              rows_per_second=self._rate(len(batch)), last_checkpoint_at=time.time(),
                              degraded=False, last_error=None)
                log.debug("batch", stream=self.name, changes=len(batch), position=position.offset)
                if self.on_batch:
                    await self.on_batch(batch)
                await self._update_pending(position, force=False)
                # a stream that stays behind prunes too
                last_prune = await self._pruning.due(position, last_prune)
                continue
            pending = await self._update_pending(position, force=True)
            if until_caught_up and pending is not None and pending.held_back:
                await self._sleep(stop)  # committed, but behind an open transaction: not caught up yet
                continue
            if self.status.phase is Phase.CATCH_UP:
                with self.busy(self.name, "creating indexes and foreign keys"):
                    await self.sink.after_catch_up(self.name)
                self._publish(phase=Phase.STREAMING)
                log.info("caught up", stream=self.name, position=position.offset)
            if until_caught_up:
                self.caught_up = True
                return
            now = time.monotonic()
            if now - last_contact >= IDLE_PING_SECONDS:
                await self.sink.ping()  # an outage shows in health even when nothing changes
                last_contact = now
                if (self.may_release is not None and now - last_change >= self.options.release_idle_seconds
                        and self.may_release(self.sink)):
                    ahead = await self._idle_released(stop, position)
                    if ahead is None:
                        return
                    last_change = last_contact = time.monotonic()
                    continue
            last_prune = await self._pruning.due(position, last_prune)
            await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until the source may have changes (or a poll interval), or *stop*."""
        wake = asyncio.ensure_future(self.source.wait(self.options.poll_interval))
        halt = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({wake, halt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (wake, halt):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

    async def _idle_released(self, stop: asyncio.Event, position: Position) -> Batch | None:
        """Close the sink (its connection) and wait for the next change without it; then open
        it again, check that the checkpoint is still *position*, and return the change's batch
        (None: stopped meanwhile)."""
        await self._drop_sink()
        log.debug("idle: connection released", stream=self.name, position=position.offset)
        last_prune = 0.0
        while not stop.is_set():
            batch = await self.source.changes(position, self.batch_size)
            if batch.position > position:
                self.sink = await self.open_sink()
                checkpoint = await self.sink.load_checkpoint(self.name)  # never trust memory
                unfinished = checkpoint is not None and checkpoint.snapshot is not None \
                    and not checkpoint.snapshot.complete
                if checkpoint is None or unfinished or checkpoint.position != position:
                    raise RetryableError("the checkpoint changed while the stream was idle; reading it again")
                log.debug("idle: connection opened again", stream=self.name, position=position.offset)
                return batch
            await self._update_pending(position, force=True)
            last_prune = await self._pruning.due(position, last_prune)
            await self._sleep(stop)
        return None

    async def _apply_reading_next(self, batch: Batch) -> tuple[ApplyResult, Batch]:
        """Apply *batch* while the batch after it is read: the source's reading and the sink's
        writing overlap. The source is called by nothing else until that read is in; a failed
        apply drops what was read ahead (the checkpoint is read again, :meth:`_run`)."""
        assert self.sink is not None
        reading = asyncio.ensure_future(self.source.changes(batch.position, self.batch_size))
        try:
            result = await self.sink.apply(self.name, batch)
        except BaseException:
            reading.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await reading
            raise
        return result, await reading

    async def _update_pending(self, position: Position, *, force: bool) -> Pending | None:
        """Publish what the source holds after *position* (unless *force*, at most every 0.5 s,
        or every 20 times what the last look took: counting a long backlog is work taken from
        applying it); return it, or None when not looked at."""
        now = time.monotonic()
        if not force and now - self._last_pending_check < self._pending_gap:
            return None
        pending = await self.source.pending(position)
        self._last_pending_check = time.monotonic()
        self._pending_gap = max(PENDING_EVERY_SECONDS, 20 * (self._last_pending_check - now))
        lag = 0.0 if not pending.count or pending.oldest_committed_at is None \
            else max(0.0, time.time() - pending.oldest_committed_at)
        self._publish(pending=pending.count, lag_seconds=lag, source_position=pending.head.offset)
        return pending
