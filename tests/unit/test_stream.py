"""The stream loop against in-memory stores: phases, resume, retries, position discipline."""

from __future__ import annotations

import asyncio
import random

import pytest

from syncd.config import StreamOptions
from syncd.errors import SchemaError, SourceBusy, TargetUnavailable
from syncd.model import Phase
from syncd.stream import Stream, StreamSink
from syncd.testing import MemorySink, MemorySource, same_rows

FAST = StreamOptions(batch_size=7, chunk_rows=5, poll_interval=0.01, prune_interval=0.01,
                     retry_max_seconds=0.05)


def make(source: MemorySource, sink: MemorySink, **kw: object) -> Stream:
    async def open_sink() -> StreamSink:
        return sink
    return Stream("mem", source, open_sink, FAST, **kw)  # type: ignore[arg-type]


def seeded(n: int) -> MemorySource:
    src = MemorySource()
    for i in range(n):
        src.write("t", (i,), {"v": i})
    return src


async def test_snapshot_then_changes_converge() -> None:
    src, sink = seeded(23), MemorySink()
    await make(src, sink).run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink) and sink.copied_rows == 23
    rng = random.Random(1)
    for _ in range(200):
        k = (rng.randrange(40),)
        src.write("t", k, None if rng.random() < 0.3 else {"v": rng.random()})
    stream = make(src, sink)
    await stream.run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink)
    assert stream.status.phase is Phase.STOPPED
    assert sink.checkpoints["mem"].position.offset == len(src.log)


async def test_retryable_errors_are_retried_and_position_reread_from_sink() -> None:
    src, sink = seeded(12), MemorySink()
    sink.fail_next = [TargetUnavailable("gone"), TargetUnavailable("still gone")]
    src.fail_next = [SourceBusy("database is locked")]
    stream = make(src, sink)
    await stream.run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink)
    assert stream.status.retries == 3 and not stream.status.degraded

    for i in range(30):
        src.write("t", (i,), {"v": -i})
    sink.fail_next = [TargetUnavailable("blip")]
    applied_before = sink.applied_batches
    stream = make(src, sink)
    await stream.run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink)
    # 30 changes in batches of 7 = 5 batches; the failed attempt committed nothing
    assert sink.applied_batches - applied_before == 5


async def test_snapshot_resumes_after_a_failure_without_recopying() -> None:
    src, sink = seeded(40), MemorySink()
    calls = 0

    async def fail_on_third(_obj: str, _chunk: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TargetUnavailable("connection reset during COPY")

    stream = make(src, sink, on_chunk=fail_on_third)
    await stream.run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink)
    assert sink.copied_rows == 40  # MemorySink raises if a key is copied twice


async def test_fatal_error_fails_the_stream() -> None:
    src, sink = seeded(3), MemorySink()
    sink.fail_next = [SchemaError("target column t.v is uuid")]
    stream = make(src, sink)
    with pytest.raises(SchemaError):
        await stream.run(asyncio.Event())
    assert stream.status.phase is Phase.FAILED
    assert stream.status.last_error is not None and "uuid" in stream.status.last_error
    assert stream.status.not_ready_reason(5.0) == "stopped: target column t.v is uuid"


async def test_stop_event_ends_streaming_cleanly_and_live_changes_arrive() -> None:
    src, sink = seeded(5), MemorySink()
    stop = asyncio.Event()
    stream = make(src, sink)
    task = asyncio.create_task(stream.run(stop))
    while stream.status.phase is not Phase.STREAMING:
        await asyncio.sleep(0.005)
    src.write("t", (100,), {"v": "live"})
    for _ in range(200):
        if sink.rows["t"].get((100,)) == {"v": "live"}:
            break
        await asyncio.sleep(0.005)
    assert sink.rows["t"][(100,)] == {"v": "live"}
    stop.set()
    await asyncio.wait_for(task, 5)
    assert stream.status.phase is Phase.STOPPED and sink.closed
