"""In-memory Source and Sink, for unit tests of the stream logic (and users' own tests).

``MemorySource`` is a table store with a change log; ``MemorySink`` applies
batches and keeps its checkpoint "in the same transaction" (atomically with
the rows). Either can be told to fail on the next call, to exercise retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SyncdError
from syncd.model import START, Batch, Change, Checkpoint, Key, Op, Position, SnapshotState
from syncd.ports import ApplyResult, Chunk, Pending


@dataclass
class MemorySource:
    """Objects of rows keyed by a 1-tuple ``(id,)``, with an append-only change log."""

    rows: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    log: list[Change] = field(default_factory=list)
    fail_next: list[SyncdError] = field(default_factory=list)
    pruned: list[tuple[int, int]] = field(default_factory=list)
    """Each prune: (position pruned up to, changes the log held after it then)."""
    _woken: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, obj: str, key: Key, row: dict[str, Any] | None) -> None:
        table = self.rows.setdefault(obj, {})
        op = Op.DELETE if row is None else (Op.UPDATE if key in table else Op.INSERT)
        if row is None:
            table.pop(key, None)
        else:
            table[key] = dict(row)
        self.log.append(Change(op, obj, key, None if row is None else dict(row),
                               Position(len(self.log) + 1), committed_at=None))
        self._woken.set()

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    async def head(self) -> Position:
        return Position(len(self.log)) if self.log else START

    def snapshot_objects(self) -> list[str]:
        return sorted(self.rows)

    async def count(self, obj: str) -> int:
        return len(self.rows.get(obj, {}))

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        keys = sorted(k for k in self.rows.get(obj, {}) if after is None or k > after)
        for i in range(0, len(keys), rows):
            self._maybe_fail()
            part = keys[i:i + rows]
            chunk = Chunk(obj, ("key", "row"), [(k, dict(self.rows[obj][k])) for k in part], part[-1])
            if prepare is not None:
                chunk = Chunk(chunk.object, chunk.columns, chunk.rows, chunk.last_key, prepare(chunk))
            yield chunk

    async def changes(self, after: Position, limit: int) -> Batch:
        self._maybe_fail()
        part = self.log[after.offset:after.offset + limit]
        return Batch(part, part[-1].position if part else after)

    async def pending(self, after: Position) -> Pending:
        return Pending(len(self.log) - after.offset, None, await self.head())

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            pass
        self._woken.clear()

    async def prune(self, upto: Position) -> int:
        self.pruned.append((upto.offset, len(self.log) - upto.offset))  # position, changes still after it
        return 0


@dataclass
class MemorySink:
    """Rows and checkpoint, committed together or not at all."""

    rows: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    fail_next: list[SyncdError] = field(default_factory=list)
    applied_batches: int = 0
    copied_rows: int = 0
    closed: bool = False

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    copy_again: list[str] = field(default_factory=list)
    """Objects to empty and hand back to the stream as a snapshot at the next
    :meth:`load_checkpoint` after a complete one (what the PostgreSQL sink does for a table
    whose schema changed)."""

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        cp = self.checkpoints.get(stream)
        if cp is not None and self.copy_again and (cp.snapshot is None or cp.snapshot.complete):
            for obj in self.copy_again:
                self.rows.pop(obj, None)
            done = sorted(o for o in self.rows if o not in self.copy_again)
            cp = self.checkpoints[stream] = Checkpoint(cp.position, SnapshotState(cp.position, done=done))
            self.copy_again = []
        if cp is None or cp.snapshot is None:
            return cp
        return Checkpoint(cp.position, SnapshotState.from_json(cp.snapshot.to_json()))

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        self.checkpoints[stream] = Checkpoint(state.start, SnapshotState.from_json(state.to_json()))

    def prepare_chunk(self, chunk: Chunk) -> Any:
        return None

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        self._maybe_fail()
        table = self.rows.setdefault(chunk.object, {})
        for key, row in chunk.rows:
            if key in table:
                raise AssertionError(f"{chunk.object} {key} copied twice")
            table[key] = row
        self.copied_rows += len(chunk.rows)
        self.checkpoints[stream] = Checkpoint(state.start, SnapshotState.from_json(state.to_json()))
        return ApplyResult(len(chunk.rows), 0)

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        state.complete = True
        self.checkpoints[stream] = Checkpoint(state.start, SnapshotState.from_json(state.to_json()))

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        self._maybe_fail()
        staged = {k: dict(v) for k, v in self.rows.items()}
        for ch in batch.changes:
            table = staged.setdefault(ch.object, {})
            if ch.op is Op.DELETE:
                table.pop(ch.key, None)
            else:
                assert ch.row is not None
                table[ch.key] = dict(ch.row)
        self.rows = staged  # rows and checkpoint "commit" together
        self.checkpoints[stream] = Checkpoint(batch.position, None)
        self.applied_batches += 1
        return ApplyResult(len(batch), 0)

    async def after_catch_up(self, stream: str) -> None:
        pass

    async def ping(self) -> None:
        self._maybe_fail()

    async def close(self) -> None:
        self.closed = True


def same_rows(source: MemorySource, sink: MemorySink, objects: Sequence[str] | None = None) -> bool:
    names = objects or sorted(set(source.rows) | set(sink.rows))
    return all(source.rows.get(o, {}) == sink.rows.get(o, {}) for o in names)
