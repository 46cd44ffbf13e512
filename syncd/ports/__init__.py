"""The two interfaces every stream is built from.

A :class:`Source` yields the rows it holds (snapshot) and the changes after a
position (log); a :class:`Sink` writes both and owns the checkpoint, committing
it in the same transaction as the rows. Adapters live in ``syncd.stores``, one
room per store; in-memory ones for tests in ``syncd.testing``.

The rest of what crosses between stores is here too, so that no store imports another:
:mod:`syncd.ports.tables` (a SQLite table as every store sees it) and
:mod:`syncd.ports.collections` (a Chroma collection and its items, and what the pgvector and
Chroma rooms ask of each other).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncd.model import Batch, Checkpoint, Key, Position, SnapshotState


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of snapshot rows of one object, in key order (or in the source's own order).

    ``rows`` are tuples in ``columns`` order; ``last_key`` is the key of the last
    row, from which the next chunk starts — or any position the source reads on from
    (a SQLite table paged by rowid: its rowid cursor, then the row's key).
    """

    object: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[Any, ...]]
    last_key: Key
    prepared: Any = None
    """What the sink's ``prepare_chunk`` made of ``rows``, when the source ran it for the sink
    on its reading thread (so that converting a chunk overlaps writing the previous one)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """Changes a source holds after a position, and the oldest one's commit time.

    ``held_back``: how many of them are committed but not yet readable (PostgreSQL's changelog
    reads only up to its safe horizon while an older transaction is open); a stream with such
    changes is not caught up, even when its last read came back empty.
    """

    count: int
    oldest_committed_at: float | None
    head: Position
    held_back: int = 0


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    rejected: int


class Source(Protocol):
    """Where changes come from."""

    async def head(self) -> Position:
        """The position of the newest change in the log (``START`` if none)."""
        ...

    def snapshot_objects(self) -> Sequence[str]:
        """Objects to copy, in copy order."""
        ...

    async def count(self, obj: str) -> int:
        """Rows *obj* holds now (for progress; may be an estimate)."""
        ...

    def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                        prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        """Chunks of *obj* in key order, starting after key *after*; *prepare* is applied to each
        chunk off the event loop and its result stored in ``Chunk.prepared``."""
        ...

    async def changes(self, after: Position, limit: int) -> Batch:
        """Up to *limit* changes after *after*, in position order (may be empty)."""
        ...

    async def pending(self, after: Position) -> Pending:
        ...

    async def wait(self, timeout: float) -> None:
        """Return when new changes may exist, or after *timeout* seconds."""
        ...

    async def prune(self, upto: Position) -> int:
        """Drop log entries at or below *upto*; return how many."""
        ...


class Sink(Protocol):
    """Where changes go. Writes and the checkpoint commit together."""

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        ...

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        """Record the snapshot's start position before any row is copied."""
        ...

    def prepare_chunk(self, chunk: Chunk) -> Any:
        """Convert a chunk's rows for writing; pure and thread-safe."""
        ...

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        """Write *chunk* and the updated *state* in one transaction."""
        ...

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        """Mark the snapshot complete (checkpoint = ``state.start``)."""
        ...

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        """Apply *batch* idempotently; checkpoint ``batch.position`` in the same transaction."""
        ...

    async def after_catch_up(self, stream: str) -> None:
        """Build what waits for a consistent target: secondary indexes, foreign keys."""
        ...

    async def ping(self) -> None:
        """Check the store still answers (an outage shows in health while nothing changes)."""
        ...

    async def close(self) -> None:
        ...
