"""What a stream reports about itself: one immutable value per stream.

Streams publish a fresh :class:`StreamStatus` after every batch / chunk / error;
the health server, metrics, systemd STATUS= and ``syncd status`` only read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Required, TypedDict

from syncd.model import Phase

NOT_STARTED: Final = "not-started"
"""A stored phase: capture installed, nothing copied yet."""
NOT_INITIALISED: Final = "not-initialised"
"""A stored phase: no change capture in the source and no checkpoint (``syncd init`` not run)."""
UNINSTALLED: Final = "uninstalled"
"""A stored phase: a checkpoint exists but change capture was removed (``syncd uninstall``)."""


@dataclass(frozen=True, slots=True)
class StreamStatus:
    name: str
    """e.g. ``sqlite:users.db->postgres`` or ``chroma:docs->pgvector``."""
    phase: Phase
    source_position: int | None = None
    checkpoint: int | None = None
    pending: int | None = None
    lag_seconds: float | None = None
    rejects: int = 0
    applied: int = 0
    rows_per_second: float = 0.0
    retries: int = 0
    last_error: str | None = None
    degraded: bool = False
    """A store is unreachable and the stream is retrying."""
    snapshot_copied: int = 0
    snapshot_total: int | None = None
    snapshot_eta_seconds: float | None = None
    snapshot_object: str | None = None
    """The table / collection being copied now, with its own progress."""
    snapshot_object_copied: int = 0
    snapshot_object_total: int | None = None
    last_checkpoint_at: float | None = None
    updated_at: float = 0.0

    @property
    def snapshot_percent(self) -> float | None:
        if not self.snapshot_total:
            return None
        return min(100.0, 100.0 * self.snapshot_copied / self.snapshot_total)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["snapshot_percent"] = self.snapshot_percent
        return data

    def not_ready_reason(self, max_lag_seconds: float) -> str | None:
        """Why this stream is not ready for cutover, or None if it is."""
        if self.phase is Phase.FAILED:
            return f"stopped: {self.last_error or 'failed'}"
        if self.degraded:
            return f"degraded: {self.last_error or 'a store is unreachable'}"
        if self.phase is Phase.SNAPSHOT:
            pct = self.snapshot_percent
            return f"snapshot at {pct:.0f} %" if pct is not None else "snapshot in progress"
        if self.phase is not Phase.STREAMING:
            return f"phase is {self.phase.value}"
        if self.lag_seconds is not None and self.lag_seconds > max_lag_seconds:
            return (f"lag {self.lag_seconds:.1f} s over the limit of {max_lag_seconds:g} s "
                    f"({self.pending or 0:,} changes behind)")
        return None


class StreamReport(TypedDict, total=False):
    """One stream as ``syncd status`` and ``cutover`` read it: the daemon's ``/status``
    (:meth:`StreamStatus.to_json`), or the same keys read from the stores with the daemon
    stopped. ``phase`` is a :class:`~syncd.model.Phase` value or one of the stored phases
    (:data:`NOT_STARTED`, :data:`NOT_INITIALISED`, :data:`UNINSTALLED`)."""

    name: Required[str]
    phase: Required[str]
    collection: str
    table: str
    source_position: int | None
    checkpoint: int | None
    pending: int | None
    lag_seconds: float | None
    rejects: int
    applied: int
    rows_per_second: float
    retries: int
    last_error: str | None
    degraded: bool
    snapshot_copied: int | None
    snapshot_total: int | None
    snapshot_eta_seconds: float | None
    snapshot_percent: float | None
    snapshot_object: str | None
    snapshot_object_copied: int
    snapshot_object_total: int | None
    last_checkpoint_at: float | None
    updated_at: float
    daemon: str
