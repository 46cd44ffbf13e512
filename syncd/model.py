"""The values every stream passes around: Position, Op, Change, Batch, Phase."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import total_ordering
from typing import Any

Key = tuple[Any, ...]
"""A primary key as a tuple of column values, in primary-key column order."""

Row = Mapping[str, Any]
"""A full row image: column name -> Python value as read from the source."""


def jsonb_holds(text: str) -> bool:
    """Whether PostgreSQL's jsonb holds *text* as a string exactly: no NUL (jsonb refuses
    ``\\u0000``) and valid UTF-8 (no lone surrogates, which text decoded with
    ``surrogateescape`` from invalid UTF-8 has)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class InvalidText:
    """A SQLite TEXT value that is not valid UTF-8, as its bytes.

    SQLite stores whatever bytes an app binds as text. No PostgreSQL text type can hold them:
    converters refuse it (the row becomes a reject naming the column), a ``bytea`` column keeps
    the bytes exactly.
    """

    raw: bytes

    def __repr__(self) -> str:
        return f"text X'{self.raw.hex()}' (not valid UTF-8)"

    @staticmethod
    def read(data: bytes) -> str | InvalidText:
        """A SQLite ``text_factory`` that never raises: text, or the bytes that are not UTF-8."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return InvalidText(data)


@total_ordering
@dataclass(frozen=True, slots=True)
class Position:
    """A monotonic offset in one source's change log; never reused.

    SQLite: the id of the ``_syncd_changelog`` row. Chroma: ``embeddings_queue.seq_id``
    of one collection. Postgres (reverse): the id of ``syncd.changelog``.
    ``START`` is "before the first change".
    """

    offset: int

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"position must be >= 0, got {self.offset}")

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Position):
            return NotImplemented
        return self.offset < other.offset

    def __str__(self) -> str:
        return str(self.offset)

    def to_json(self) -> int:
        return self.offset

    @classmethod
    def from_json(cls, value: object) -> Position:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"not a position: {value!r}")
        return cls(value)


START = Position(0)
"""Before the first change of any log."""


class Op(enum.Enum):
    INSERT = "I"
    UPDATE = "U"
    DELETE = "D"


@dataclass(frozen=True, slots=True)
class Change:
    """One change to one row. ``row`` is the full image after it; None for DELETE."""

    op: Op
    object: str
    key: Key
    row: Row | None
    position: Position
    committed_at: float | None = None
    """Unix time the source committed it, when the source knows (for lag)."""

    def __post_init__(self) -> None:
        if (self.op is Op.DELETE) != (self.row is None):
            must = "must not" if self.op is Op.DELETE else "must"
            raise ValueError(f"{self.op.name} change {must} carry a row")


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes in position order; ``position`` is the last one's (the checkpoint to write)."""

    changes: Sequence[Change]
    position: Position

    def __post_init__(self) -> None:
        positions = [c.position for c in self.changes]
        if positions != sorted(positions):
            raise ValueError("batch changes are not in position order")
        if positions and positions[-1] > self.position:
            raise ValueError("batch position is behind its last change")

    def __len__(self) -> int:
        return len(self.changes)


class Phase(enum.Enum):
    """A stream's phase. Transitions are checked by :func:`transition`."""

    STARTING = "starting"
    SNAPSHOT = "snapshot"
    CATCH_UP = "catch-up"
    STREAMING = "streaming"
    FENCED = "fenced"
    DRAINED = "drained"
    STOPPED = "stopped"
    FAILED = "failed"


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.SNAPSHOT, Phase.CATCH_UP, Phase.STREAMING}),
    Phase.SNAPSHOT: frozenset({Phase.CATCH_UP}),
    Phase.CATCH_UP: frozenset({Phase.STREAMING, Phase.SNAPSHOT}),  # SNAPSHOT: a table copied again
    Phase.STREAMING: frozenset({Phase.FENCED, Phase.SNAPSHOT}),
    Phase.FENCED: frozenset({Phase.DRAINED, Phase.STREAMING}),
    Phase.DRAINED: frozenset({Phase.STREAMING}),
    Phase.STOPPED: frozenset(),
    Phase.FAILED: frozenset(),
}


def transition(current: Phase, new: Phase) -> Phase:
    """Return *new* if the move from *current* is allowed; any phase may stop or fail."""
    if new in (Phase.STOPPED, Phase.FAILED) or new in _ALLOWED[current]:
        return new
    raise ValueError(f"phase cannot go from {current.value} to {new.value}")


@dataclass(frozen=True, slots=True)
class RowidCursor:
    """Where a copy that pages a table by rowid stands, first in its resume key (the declared key
    of the last row read follows it). ``rowid``: the last rowid read; ``since``: the changelog head
    when this copy of the table began; ``schema_version``: ``PRAGMA schema_version`` at the last
    read; ``epoch``: the table's capture epoch when the copy began. What each guards:
    docs/architecture.md, "Paging by rowid"."""

    rowid: int
    since: int
    schema_version: int
    epoch: int

    def to_json(self) -> list[int]:
        return [self.rowid, self.since, self.schema_version, self.epoch]

    @classmethod
    def from_json(cls, value: object) -> RowidCursor:
        if not (isinstance(value, list) and len(value) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"not a rowid cursor: {value!r}")
        return cls(*value)


@dataclass(slots=True)
class SnapshotState:
    """Resumable progress of a snapshot, stored with the checkpoint.

    ``start`` is the change-log position recorded before the first row was read;
    ``done`` the objects fully copied; ``last_key`` the last key copied per object
    still in progress; ``copied`` rows copied per object (for progress and tests).
    """

    start: Position
    done: list[str] = field(default_factory=list)
    last_key: dict[str, list[Any]] = field(default_factory=dict)
    copied: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.to_json(),
            "done": list(self.done),
            "last_key": dict(self.last_key),
            "copied": dict(self.copied),
            "complete": self.complete,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotState:
        return cls(
            start=Position.from_json(data["start"]),
            done=list(data.get("done", [])),
            last_key={k: list(v) for k, v in data.get("last_key", {}).items()},
            copied={k: int(v) for k, v in data.get("copied", {}).items()},
            complete=bool(data.get("complete", False)),
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the sink has durably committed for one stream."""

    position: Position
    snapshot: SnapshotState | None
    source_id: str | None = None
    """Which change log the position counts in (changes when capture is reinstalled)."""
