"""Dropping applied changes from ``_syncd_changelog``, one short write transaction at a time.

Pruning shares the source's reading thread, a step at a time (:meth:`SqliteSource.prune
<syncd.stores.sqlite.source.SqliteSource.prune>` calls :func:`step` until it is done), so that
the stream's reads get in between its steps instead of waiting for a whole backlog's prune.
It gives way at once when someone holds the write lock: waiting out the usual busy timeout
would hold up reading changes for seconds — during a cutover fence, the drain itself.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from syncd.stores.sqlite import capture, rowids

log = structlog.get_logger("syncd.source.sqlite")

BUSY_MS = 20
"""How long a prune step waits for the write lock before it gives way."""
STEP_ROWS = 1000
"""Changes deleted per step (one write transaction). A step holds the app's write lock and the
source's reading thread for its length: 1,000 rows of ~1 KB images take ~1-3 ms, where 5,000
took 30-40 ms, for the same work per row (docs/benchmarks.md)."""


class Pruner:
    """The prune steps of one source; remembers whether the disk was full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.full = False

    def step(self, conn: sqlite3.Connection, upto: int, first: bool) -> int | None:
        """Delete up to :data:`STEP_ROWS` logged changes at or below *upto*; how many, or None
        when the app (or a cutover fence) holds the write lock or the disk is full (prune next
        time).

        The first step of a prune also moves the rowid references up to *upto*
        (:mod:`~syncd.stores.sqlite.rowids`), in the same transaction: they must never be behind
        a pruned change; and it drops the REPLACE notes of writes that did not happen
        (:func:`~syncd.stores.sqlite.capture.forget_notes`).
        """
        busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if first:
                        rowids.advance(conn, upto)
                        capture.forget_notes(conn)
                    # the newest row stays: its id is the head (schema.changelog_head)
                    cur = conn.execute(
                        f"DELETE FROM {capture.CHANGELOG} WHERE id IN (SELECT id FROM "
                        f"{capture.CHANGELOG} WHERE id <= ? AND id < (SELECT max(id) FROM "
                        f"{capture.CHANGELOG}) ORDER BY id LIMIT {STEP_ROWS})", (upto,))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLITE_FULL has rolled it back already
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return None
                if "full" in str(exc):  # SQLITE_FULL: the app's disk; reading goes on
                    if not self.full:
                        log.warning("cannot prune the changelog: the disk is full; pruning "
                                    "again once there is space", path=str(self.path), error=str(exc))
                    self.full = True
                    return None
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(busy)}")
        self.full = False
        return int(cur.rowcount)
