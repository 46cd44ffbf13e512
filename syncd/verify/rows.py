"""The values a table check passes around: rows of both sides, key ranges, findings."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.model import Key
from syncd.verify.sqlite import Bounds, SqliteReader

CanonKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableOptions:
    chunk_rows: int = 5000
    fanout: int = 16
    leaf_rows: int = 64
    max_differences: int = 20_000
    """Stop collecting a table's suspect rows past this many (the result says the rest is unchecked)."""
    chunk_wait_seconds: float = 2.0
    """A differing chunk waits at most this long for the stream to pass the position it was read at."""
    settle_seconds: float = 60.0
    stall_seconds: float = 10.0
    """Stop waiting when the stream's checkpoint has not moved for this long."""
    digest_rows: int = 10_000
    """Rows per key range compared by digest (:mod:`syncd.verify.fastpath`); 0: row by row only."""
    digest_workers: int | None = None
    """Processes digesting SQLite key ranges in parallel; 0: verify's own thread; None: one per CPU."""
    stream_keys: bool | None = None
    """Force (True) or forbid (False) streaming key hashes instead of range aggregates; None: auto."""


@dataclass(slots=True)
class Row:
    """A SQLite row as the stream would write it."""

    raw_key: Key
    conv_key: Key | None
    """The key as written to PostgreSQL; None when the key itself cannot be written."""
    key: CanonKey
    parts: list[str] | None
    """Canonical parts; None when the row cannot be written (it is a reject)."""
    hash: int = 0
    error: str | None = None
    column: str | None = None
    """The column the mapping refused, when ``error`` is set."""
    raw: tuple[Any, ...] | None = None
    """The SQLite values (for describing a difference)."""


@dataclass(frozen=True, slots=True)
class PgRow:
    key_values: tuple[Any, ...]
    key: CanonKey
    hash: int
    part_hashes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Range:
    """``(lo, hi]`` between two SQLite rows with writable keys; None is unbounded."""

    lo: Row | None
    hi: Row | None

    @property
    def ident(self) -> tuple[Key | None, Key | None]:
        return (self.lo.raw_key if self.lo else None, self.hi.raw_key if self.hi else None)

    def bounds(self) -> Bounds:
        return Bounds(self.lo.raw_key if self.lo else None, self.hi.raw_key if self.hi else None)


@dataclass(slots=True)
class Finding:
    """A key whose rows differ: one side may be missing."""

    key: CanonKey
    sqlite: Row | None
    pg: PgRow | None
    ranges: list[Range] = field(default_factory=list)
    """The ranges the key was read in."""


class Stall:
    """Whether the stream's checkpoint has stopped moving while verify waits for it.

    Only time spent watching counts: after a pause in the observations (verify was busy
    scanning), the clock starts again, so an idle but healthy stream is never "stuck".
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: int | None = None
        self.since = self.checked = time.monotonic()

    def seen(self, position: int) -> None:
        now = time.monotonic()
        if position != self.last or now - self.checked > 1.0:
            self.last, self.since = position, now
        self.checked = now

    @property
    def stuck(self) -> bool:
        return self.last is not None and time.monotonic() - self.since > self.seconds


@dataclass(slots=True)
class TableContext:
    """What a table check needs from the verify run."""

    conn: asyncpg.Connection
    reader: SqliteReader
    stream: str
    checkpoint: Callable[[], Awaitable[int]]
    """The stream's checkpoint position now (on ``conn``, so inside its transaction if one is open)."""
    progress: Callable[[str, int], None] = field(default=lambda name, rows: None)
    stall: Stall = field(default_factory=lambda: Stall(10.0))
    """Shared by every check of a run, so that a stopped stream is noticed once, not per table."""


def sort_key(key: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """Orders keys of any types: numbers by value, everything else by its text."""
    return tuple((0, v) if isinstance(v, int | float) and not isinstance(v, bool) else (1, str(v))
                 for v in key)


__all__ = ["CanonKey", "Finding", "PgRow", "Range", "Row", "Stall", "TableContext", "TableOptions",
           "sort_key"]
