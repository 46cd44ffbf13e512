"""One contract every Sink adapter keeps (:class:`syncd.ports.Sink`): the same cases run against
the PostgreSQL, pgvector, SQLite and Chroma sinks, each on its real store, read back with the
store's own client (see :mod:`tests.contract.harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from syncd.errors import StrictModeStop, SyncdError
from syncd.model import START, Batch, Change, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.state import Fenced
from syncd.ports import Sink
from tests.contract.harness import REFUSED, Harness


@asynccontextmanager
async def opened(h: Harness, *, strict: bool = False) -> AsyncIterator[Sink]:
    sink = await h.open(strict=strict)
    try:
        yield sink
    finally:
        await sink.close()


async def started(h: Harness, sink: Sink, position: Position = START) -> None:
    """Load the (absent) checkpoint and record the start, as the stream does on its first run."""
    if h.fresh_checkpoint_error is None:
        assert await sink.load_checkpoint(h.stream) is None
    await h.start(sink, position)
    cp = await sink.load_checkpoint(h.stream)
    assert cp is not None and cp.position == position


def batch(*changes: Change) -> Batch:
    return Batch(list(changes), changes[-1].position)


async def test_fresh_stream(harness: Harness) -> None:
    """A stream never run has no checkpoint (or, for a sink that only starts where the cutover
    put it, a clear error saying so); nothing is written by asking. Its start then reads back."""
    h = harness
    async with opened(h) as sink:
        if h.fresh_checkpoint_error is None:
            assert await sink.load_checkpoint(h.stream) is None
        else:
            with pytest.raises(h.fresh_checkpoint_error, match="cutover"):
                await sink.load_checkpoint(h.stream)
    assert await h.checkpoint() is None
    assert await h.rows() == {}
    async with opened(h) as sink:  # the stream's start, as its first run records it
        await started(h, sink, Position(5))
    assert await h.checkpoint() == 5


async def test_inserts(harness: Harness) -> None:
    """Rows are readable and the checkpoint is the batch's position."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        result = await sink.apply(h.stream, batch(h.insert("a", 1, 1), h.insert("b", 2, 2),
                                                  h.insert("c", 3, 3)))
        assert (result.applied, result.rejected) == (3, 0)
        cp = await sink.load_checkpoint(h.stream)
        assert cp is not None and cp.position == Position(3)
    assert await h.rows() == {"a": 1, "b": 2, "c": 3}
    assert await h.checkpoint() == 3
    assert await h.rejects() == []


async def test_batch_position_beyond_its_changes(harness: Harness) -> None:
    """The checkpoint is the batch's position, also when it is past the last change (changes of
    objects the stream does not hold) or the batch is empty."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, Batch([h.insert("a", 1, 2)], Position(9)))
        assert await h.checkpoint() == 9
        await sink.apply(h.stream, Batch([], Position(12)))
    assert await h.checkpoint() == 12
    assert await h.rows() == {"a": 1}


async def test_same_batch_twice(harness: Harness) -> None:
    """Replaying a batch (a crash after the commit, before the source learned of it) changes
    nothing: no row doubled, no reject, the same checkpoint — also from a new sink."""
    h = harness
    first = batch(h.insert("a", 1, 1), h.insert("b", 2, 2), h.insert("c", 3, 3))
    second = batch(h.update("a", 10, 4), h.delete("b", 5), h.insert("d", 4, 6), h.update("d", 40, 7))
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, first)
        await sink.apply(h.stream, second)
        want = await h.rows()
        assert want == {"a": 10, "c": 3, "d": 40}
        await sink.apply(h.stream, second)
        assert await h.rows() == want
    async with opened(h) as sink:
        await sink.load_checkpoint(h.stream)
        await sink.apply(h.stream, first)
        await sink.apply(h.stream, second)
    assert await h.rows() == want
    assert await h.checkpoint() == 7
    assert await h.rejects() == []


async def test_updates_and_deletes(harness: Harness) -> None:
    """Updates and deletes, several of one key in one batch, give the final state."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1), h.insert("b", 2, 2), h.insert("c", 3, 3)))
        await sink.apply(h.stream, batch(
            h.update("a", 10, 4), h.update("a", 11, 5),   # two updates: the last wins
            h.delete("b", 6),                             # gone
            h.delete("c", 7), h.insert("c", 30, 8),       # deleted and back
            h.insert("e", 5, 9), h.delete("e", 10),       # in and out within the batch
        ))
    assert await h.rows() == {"a": 11, "c": 30}
    assert await h.checkpoint() == 10
    assert await h.rejects() == []


async def test_missing_keys(harness: Harness) -> None:
    """An update of a key the store lacks and a delete of a missing row do not fail."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        result = await sink.apply(h.stream, batch(h.update("x", 1, 1), h.delete("y", 2)))
        assert result.rejected == 0
    assert await h.rows() == ({"x": 1} if h.update_of_missing_creates else {})
    assert await h.checkpoint() == 2
    assert await h.rejects() == []


async def test_refused_row(harness: Harness) -> None:
    """A row the store refuses is a reject (counted, recorded with its key and a reason); the
    other changes of the batch apply and the checkpoint moves."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        result = await sink.apply(h.stream, batch(h.insert("a", 1, 1), h.refused("b", 2),
                                                  h.insert("c", 3, 3)))
        assert result.rejected == 1
        assert result.applied == 2
    assert await h.rows() == {"a": 1, "c": 3}
    assert await h.checkpoint() == 3
    [reject] = await h.rejects()
    assert reject.key == ["b"] and reject.position == 2
    assert reject.error.strip() and "\n" not in reject.error, reject.error  # one line, as operators read it


async def test_refused_row_replayed(harness: Harness) -> None:
    """The batch with a reject replayed records the reject once, not twice (the open rejects
    are what status and health count)."""
    h = harness
    refused = batch(h.insert("a", 1, 1), h.refused("b", 2))
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, refused)
        await sink.apply(h.stream, refused)
    assert await h.rows() == {"a": 1}
    # the pgvector sink writes the id as Chroma holds it, which is not at all here: resolved
    assert [r.key for r in await h.rejects()] == ([] if h.refreshes_rejected else [["b"]])


async def test_refused_row_fixed(harness: Harness) -> None:
    """A later change of a rejected key that the store takes resolves its reject (the usual way a
    reject closes: the row is changed again at the source)."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1), h.refused("b", 2)))
        assert [r.key for r in await h.rejects()] == [["b"]]
        result = await sink.apply(h.stream, batch(h.update("b", 2, 3)))
        assert result.rejected == 0
    assert await h.rejects() == []
    # the pgvector sink writes the id as Chroma holds it, which is not at all here
    assert await h.rows() == ({"a": 1} if h.refreshes_rejected else {"a": 1, "b": 2})
    assert await h.checkpoint() == 3


async def test_strict_mode(harness: Harness) -> None:
    """In strict mode a refused row stops the stream: nothing of its batch is written, no reject
    is recorded, and the checkpoint stays."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1)))
    async with opened(h, strict=True) as sink:
        assert (cp := await sink.load_checkpoint(h.stream)) is not None and cp.position == Position(1)
        with pytest.raises(StrictModeStop):
            await sink.apply(h.stream, batch(h.insert("c", 3, 2), h.refused("b", 3), h.update("a", 9, 4)))
    assert await h.checkpoint() == 1
    assert await h.rows() == {"a": 1}
    assert await h.rejects() == []


async def test_failed_write(harness: Harness) -> None:
    """A batch whose write fails (the store lost the connection, or is locked) raises a
    SyncdError and leaves rows and checkpoint where they were; a new sink applies it."""
    h = harness
    todo = batch(h.insert("b", 2, 2), h.update("a", 10, 3))
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1)))
        async with h.broken(sink):
            with pytest.raises(SyncdError):
                await sink.apply(h.stream, todo)
            assert await h.checkpoint() == 1
    assert await h.rows() == {"a": 1}
    async with opened(h) as sink:
        assert (cp := await sink.load_checkpoint(h.stream)) is not None and cp.position == Position(1)
        await sink.apply(h.stream, todo)
    assert await h.rows() == {"a": 10, "b": 2}
    assert await h.checkpoint() == 3


async def test_checkpoint_refused(harness: Harness) -> None:
    """Rows and checkpoint commit together: when the checkpoint write is refused after the
    batch's rows were written (another process took the stream over), the rows and rejects of
    the batch go with it. Chroma has no such transaction: its items stay, the checkpoint does
    not move, and the replay by the new owner writes nothing twice."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1)))
    todo = batch(h.insert("b", 2, 2), h.update("a", 10, 3), h.refused("c", 4))
    token = pgstate.claims.set(pgstate.Claims(owner={"pid": 1}, generations={h.stream: 1}))
    try:
        async with opened(h) as sink:
            await sink.load_checkpoint(h.stream)  # claimed with generation 1
            await h.take_over()
            with pytest.raises(Fenced):
                await sink.apply(h.stream, todo)
    finally:
        pgstate.claims.reset(token)
    assert await h.checkpoint() == 1
    assert await h.rejects() == []
    assert await h.rows() == ({"a": 1} if h.rows_commit_with_checkpoint else {"a": 10, "b": 2})


async def test_reopened(harness: Harness) -> None:
    """A new sink (after close) reads back the checkpoint the last one committed, and goes on."""
    h = harness
    async with opened(h) as sink:
        await started(h, sink)
        await sink.apply(h.stream, batch(h.insert("a", 1, 1), h.insert("b", 2, 4)))
    async with opened(h) as sink:
        cp = await sink.load_checkpoint(h.stream)
        assert cp is not None and cp.position == Position(4)
        assert cp.snapshot is None or cp.snapshot.complete
        await sink.apply(h.stream, batch(h.delete("a", 5)))
    async with opened(h) as sink:
        cp = await sink.load_checkpoint(h.stream)
        assert cp is not None and cp.position == Position(5)
    assert await h.rows() == {"b": 2}


async def test_ping(harness: Harness) -> None:
    h = harness
    async with opened(h) as sink:
        await sink.ping()
        await started(h, sink)
        await sink.after_catch_up(h.stream)
        await sink.ping()


async def test_snapshot(harness: Harness) -> None:
    """A snapshot copies chunks (a row the mapping or the store refuses is a reject), and
    finishing it leaves the checkpoint at the snapshot's start, marked complete; changes then apply."""
    h = harness
    async with opened(h) as sink:
        assert await sink.load_checkpoint(h.stream) is None
        state = SnapshotState(start=Position(6))
        await sink.begin_snapshot(h.stream, state)
        chunk = h.chunk({"a": 1, "b": None, "c": 3, "d": REFUSED})
        result = await sink.copy_chunk(h.stream, chunk, state)
        assert (result.applied, result.rejected) == (2, 2)
        await sink.finish_snapshot(h.stream, state)
        cp = await sink.load_checkpoint(h.stream)
        assert cp is not None and cp.position == Position(6)
        assert cp.snapshot is not None and cp.snapshot.complete
        assert await h.rows() == {"a": 1, "c": 3}
        await sink.apply(h.stream, batch(h.update("a", 10, 7), h.insert("e", 4, 8)))
    assert await h.rows() == {"a": 10, "c": 3, "e": 4}
    assert await h.checkpoint() == 8
    rejects = await h.rejects()
    assert sorted(r.key for r in rejects) == [["b"], ["d"]]
    assert all(r.error.strip() and "\n" not in r.error for r in rejects), rejects
