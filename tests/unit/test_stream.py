"""The stream loop against in-memory stores: phases, resume, retries, position discipline."""

from __future__ import annotations

import asyncio
import random

import pytest

from syncd.config import StreamOptions
from syncd.errors import SchemaChanged, SchemaError, SourceBusy, TargetUnavailable
from syncd.model import Batch, Phase, Position
from syncd.ports import Sink
from syncd.stream import Stream
from syncd.testing import MemorySink, MemorySource, same_rows

FAST = StreamOptions(batch_size=7, chunk_rows=5, poll_interval=0.01, prune_interval=0.01,
                     retry_max_seconds=0.05)


def make(source: MemorySource, sink: MemorySink, **kw: object) -> Stream:
    async def open_sink() -> Sink:
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


async def test_a_schema_change_copies_the_object_again_then_streams_on() -> None:
    """The source says an object changed; the sink hands back a snapshot of just that object:
    the stream copies it (whatever the sink held of it is gone), replays, streams on —
    without counting a retry or showing degraded."""
    src, sink = seeded(20), MemorySink()
    for i in range(9):
        src.write("u", (i,), {"w": i})
    phases: list[Phase] = []
    stop = asyncio.Event()
    stream = make(src, sink, on_progress=lambda st: phases.append(st.phase))
    task = asyncio.create_task(stream.run(stop))
    while stream.status.phase is not Phase.STREAMING:
        await asyncio.sleep(0.005)
    copied = sink.copied_rows
    sink.rows["u"][(3,)] = {"w": "stale"}  # what a change logged without its new column left
    sink.copy_again = ["u"]
    src.fail_next = [SchemaChanged("u: columns now w, x")]
    src.write("u", (4,), {"w": "after"})
    for _ in range(400):
        if sink.rows.get("u", {}).get((4,)) == {"w": "after"} and stream.status.phase is Phase.STREAMING:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert same_rows(src, sink)
    assert sink.copied_rows - copied == 9  # only u, once
    assert stream.status.retries == 0 and not stream.status.degraded
    streaming = [i for i, p in enumerate(phases) if p is Phase.STREAMING]
    assert Phase.SNAPSHOT in phases[streaming[0]:], phases


async def test_the_log_is_pruned_while_the_stream_is_still_behind() -> None:
    """A writer faster than the stream: no poll comes back empty for a long time, yet what was
    applied must be pruned meanwhile (the changelog grew without bound while the stream lagged)."""
    src, sink = seeded(3), MemorySink()
    read = src.changes
    calls = 0

    async def writer_ahead(after: Position, limit: int) -> Batch:
        nonlocal calls
        calls += 1
        if calls < 200:
            for i in range(2 * limit):
                src.write("t", (i % 50,), {"v": calls})
            await asyncio.sleep(0.001)
        return await read(after, limit)

    src.changes = writer_ahead  # type: ignore[method-assign]
    await make(src, sink).run(asyncio.Event(), until_caught_up=True)
    assert same_rows(src, sink)
    behind = [(upto, after) for upto, after in src.pruned if after > 0]
    assert behind, f"nothing pruned while changes were pending: {src.pruned}"
    assert all(upto <= sink.checkpoints["mem"].position.offset for upto, _ in src.pruned)
