"""SQLite sink (reverse direction): changes made in PostgreSQL written back into the app's file.

Each batch is one ``BEGIN IMMEDIATE`` transaction that

1. sets ``_syncd_origin.suppress = 1``, so that the forward capture triggers skip syncd's
   writes (no echo) and the cutover's fence triggers let them pass;
2. applies deletes and upserts in position order (``INSERT ... ON CONFLICT (pk) DO UPDATE``;
   by ``rowid`` for tables without a primary key);
3. records refused rows in ``_syncd_rejects`` and writes the checkpoint into
   ``_syncd_checkpoints`` — only while the row still holds the fencing generation this
   process claimed the stream with (stamped by :meth:`SqliteSink.load_checkpoint`; see
   :mod:`syncd.streams.ownership`), else :class:`~syncd.pg.state.Fenced` rolls the batch back;
4. sets ``suppress`` back to 0 and commits.

A crash anywhere rolls all of it back, the flag included: the checkpoint is never ahead of
the rows. "database is locked" is :class:`~syncd.errors.SourceBusy` (retried). All SQLite
work runs on one worker thread, one hop per batch.

Rejects stay in the SQLite file, next to the rows they belong to, so that a rollback
carries them: ``_syncd_rejects`` holds the table, key and row image (JSON), the error and
the position. A later applied change of the same key marks the reject resolved.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from syncd.config import SqliteConfig
from syncd.errors import CaptureError, StrictModeStop
from syncd.model import Batch, Change, Checkpoint, Op, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.state import jsonable
from syncd.ports import ApplyResult, Chunk
from syncd.ports.tables import ROWID_COLUMN, Table, Unfit
from syncd.sql import call_on, qi
from syncd.stores.sqlite import capture
from syncd.stores.sqlite.connect import open_connection, translate
from syncd.stores.sqlite.schema import discover

log = structlog.get_logger("syncd.sink.sqlite")
T = TypeVar("T")

CHECKPOINTS = "_syncd_checkpoints"
REJECTS = "_syncd_rejects"

SETUP = f"""
CREATE TABLE IF NOT EXISTS {capture.ORIGIN} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    suppress INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO {capture.ORIGIN} (id, suppress) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    stream     TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    source_id  TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    owner      TEXT
);
CREATE TABLE IF NOT EXISTS {REJECTS} (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT NOT NULL,
    object      TEXT NOT NULL,
    key         TEXT NOT NULL,
    position    INTEGER,
    row_image   TEXT,
    error       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    resolved_at REAL
)
"""
_SUPPRESS = f"UPDATE {capture.ORIGIN} SET suppress = ? WHERE id = 1"
_FENCE_COLUMNS = (("generation", "INTEGER NOT NULL DEFAULT 0"), ("owner", "TEXT"))


def _add_fence_columns(conn: sqlite3.Connection) -> None:
    """Files whose checkpoint table predates the fencing generation get its columns."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({CHECKPOINTS})")}
    for name, kind in _FENCE_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE {CHECKPOINTS} ADD COLUMN {name} {kind}")


@dataclass(frozen=True, slots=True)
class Reject:
    object: str
    key: Sequence[Any]
    row: Any
    error: str
    position: Position


@dataclass(frozen=True, slots=True)
class Statements:
    """The SQL that writes one table's changes."""

    table: Table

    @property
    def name(self) -> str:
        return qi(self.table.name)

    def delete(self) -> str:
        if self.table.synthetic_key:
            return f"DELETE FROM {self.name} WHERE rowid = ?"
        return f"DELETE FROM {self.name} WHERE " + " AND ".join(f"{qi(k)} = ?" for k in self.table.pk)

    def upsert(self, columns: Sequence[str]) -> str:
        cols = ", ".join(qi(c) for c in columns)
        params = ", ".join("?" for _ in columns)
        rest = [c for c in columns if c not in self.table.pk]
        action = ("DO UPDATE SET " + ", ".join(f"{qi(c)} = excluded.{qi(c)}" for c in rest)
                  if rest else "DO NOTHING")
        pk = ", ".join(qi(k) for k in self.table.pk)
        return f"INSERT INTO {self.name} ({cols}) VALUES ({params}) ON CONFLICT ({pk}) {action}"

    def update_by_rowid(self, columns: Sequence[str]) -> str:
        return (f"UPDATE {self.name} SET " + ", ".join(f"{qi(c)} = ?" for c in columns)
                + " WHERE rowid = ?")

    def insert_with_rowid(self, columns: Sequence[str]) -> str:
        cols = ", ".join(["rowid", *(qi(c) for c in columns)])
        return f"INSERT INTO {self.name} ({cols}) VALUES ({', '.join('?' for _ in range(len(columns) + 1))})"


def _unfit(change: Change) -> str | None:
    """The error of the first value SQLite cannot hold in *change*, if any."""
    for v in (*change.key, *(change.row.values() if change.row is not None else ())):
        if isinstance(v, Unfit):
            return v.error
    return None


def _json(value: Any) -> str:
    if isinstance(value, Unfit):
        value = value.value
    if isinstance(value, dict):
        value = {k: v.value if isinstance(v, Unfit) else v for k, v in value.items()}
    if isinstance(value, list | tuple):
        value = [v.value if isinstance(v, Unfit) else v for v in value]
    return json.dumps(jsonable(value), default=str, ensure_ascii=False)


class SqliteSink:
    """Writes one stream's changes into a SQLite database. Create with :meth:`open`."""

    def __init__(self, config: SqliteConfig, conn: sqlite3.Connection, tables: Sequence[Table],
                 executor: ThreadPoolExecutor, *, strict: bool,
                 on_reject: Callable[[int], None] | None, source_id: str | None) -> None:
        self.config = config
        self.path = config.path
        self._conn = conn
        self.tables = {t.name: Statements(t) for t in tables}
        self._executor = executor
        self.strict = strict
        self.on_reject = on_reject
        self.source_id = source_id
        self._fences: dict[str, int] = {}
        """Stream -> the generation this process claimed it with (checkpoint writes need it)."""

    @classmethod
    async def open(cls, config: SqliteConfig, *, strict: bool = False,
                   on_reject: Callable[[int], None] | None = None,
                   source_id: str | None = None) -> SqliteSink:
        """Open the SQLite file of *config* and create syncd's bookkeeping tables in it."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-sqlite-sink")

        def setup() -> tuple[sqlite3.Connection, list[Table]]:
            conn = open_connection(config.path)
            try:
                tables = discover(conn, tables=config.tables, exclude=config.exclude,
                                  no_primary_key=config.no_primary_key)
                conn.executescript(SETUP)
                _add_fence_columns(conn)
            except BaseException:
                conn.close()
                raise
            return conn, tables

        try:
            conn, tables = await call_on(executor, lambda exc: translate(exc, config.path), setup)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(config, conn, tables, executor, strict=strict, on_reject=on_reject, source_id=source_id)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await call_on(self._executor, lambda exc: translate(exc, self.path), fn, *args)

    async def close(self) -> None:
        try:
            await self._call(self._conn.close)
        finally:
            self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._call(lambda: self._conn.execute("SELECT 1").fetchone())

    # --- checkpoint ---------------------------------------------------------------------

    def _load(self, stream: str) -> Checkpoint | None:
        row = self._conn.execute(
            f"SELECT position, source_id FROM {CHECKPOINTS} WHERE stream = ?", (stream,)).fetchone()
        return None if row is None else Checkpoint(Position(int(row[0])), None, row[1])

    def _stamp(self, stream: str, generation: int, owner: str) -> None:
        """Put this process's generation on the checkpoint row, unless a newer owner's is there."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(f"SELECT generation, owner FROM {CHECKPOINTS} WHERE stream = ?",
                               (stream,)).fetchone()
            if row is not None and int(row[0]) > generation:
                raise pgstate.fenced(stream, generation, json.loads(row[1]) if row[1] else None)
            if row is not None and int(row[0]) < generation:
                conn.execute(f"UPDATE {CHECKPOINTS} SET generation = ?, owner = ? WHERE stream = ?",
                             (generation, owner, stream))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        generation, claims = pgstate.generation_of(stream), pgstate.claims.get()
        if generation is not None and claims is not None:
            await self._call(self._stamp, stream, generation, json.dumps(dict(claims.owner)))
            self._fences[stream] = generation
        cp = await self._call(self._load, stream)
        if cp is not None and cp.source_id and self.source_id and cp.source_id != self.source_id:
            raise CaptureError(
                f"reverse capture in PostgreSQL was reinstalled since stream {stream!r} checkpointed "
                "(its changelog restarted, so positions no longer match); changes made in PostgreSQL "
                f"meanwhile cannot be replayed: compare the stores (`syncd verify`), then set the start "
                f"again (DELETE FROM {CHECKPOINTS} WHERE stream = '{stream}' in {self.path} and run "
                "the cutover's reverse start)")
        return cp

    def _save(self, stream: str, position: Position) -> None:
        generation = self._fences.get(stream)
        if generation is not None:
            updated = self._conn.execute(
                f"""UPDATE {CHECKPOINTS} SET position = ?, source_id = coalesce(?, source_id)
                    WHERE stream = ? AND generation = ?""",
                (position.offset, self.source_id, stream, generation)).rowcount
            if updated != 1:
                row = self._conn.execute(f"SELECT owner FROM {CHECKPOINTS} WHERE stream = ?",
                                         (stream,)).fetchone()
                raise pgstate.fenced(stream, generation, json.loads(row[0]) if row and row[0] else None)
            return
        self._conn.execute(
            f"""INSERT INTO {CHECKPOINTS} (stream, position, source_id) VALUES (?, ?, ?)
                ON CONFLICT (stream) DO UPDATE SET position = excluded.position,
                source_id = coalesce(excluded.source_id, source_id)""",
            (stream, position.offset, self.source_id))

    async def set_checkpoint(self, stream: str, position: Position) -> None:
        """Record where *stream* starts (the cutover, at the flip): its own transaction."""
        def run() -> None:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._save(stream, position)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        await self._call(run)

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        raise CaptureError(
            f"stream {stream!r} has no start position in {self.path} ({CHECKPOINTS}): the reverse "
            "stream starts where `syncd cutover` recorded it at the flip, and copies no snapshot; "
            "run the cutover (or record the position with SqliteSink.set_checkpoint)")

    def prepare_chunk(self, chunk: Chunk) -> Any:
        return None

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        raise CaptureError(f"stream {stream!r}: the reverse stream copies no snapshot")

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        raise CaptureError(f"stream {stream!r}: the reverse stream copies no snapshot")

    async def after_catch_up(self, stream: str) -> None:
        return None

    # --- applying -----------------------------------------------------------------------

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        for ch in batch.changes:
            if ch.object not in self.tables:
                raise CaptureError(
                    f"the reverse stream has a change for table {ch.object!r}, which SQLite file "
                    f"{self.path} does not have among the synced tables; create it in SQLite (or stop "
                    "capturing it in PostgreSQL), then restart")
        applied, rejects = await self._call(self._apply, stream, batch)
        if rejects:
            for r in rejects:
                log.warning("row rejected", stream=stream, table=r.object, key=_json(list(r.key)),
                            error=r.error)
            if self.on_reject:
                self.on_reject(len(rejects))
        return ApplyResult(applied=applied, rejected=len(rejects))

    def _apply(self, stream: str, batch: Batch) -> tuple[int, list[Reject]]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SUPPRESS, (1,))
            applied: list[Change] = []
            rejects: list[Reject] = []
            for ch in batch.changes:
                error = _unfit(ch) or self._write(ch)
                if error is None:
                    applied.append(ch)
                else:
                    rejects.append(Reject(ch.object, ch.key, ch.row, error, ch.position))
            if rejects and self.strict:
                r = rejects[0]
                raise StrictModeStop(
                    f"strict mode: SQLite refused a change of table {r.object!r}, key {_json(list(r.key))}: "
                    f"{r.error}; fix the row in PostgreSQL, or set target.strict = false to record such "
                    f"rows in {REJECTS}")
            self._record_rejects(stream, rejects, applied)
            self._save(stream, batch.position)
            conn.execute(_SUPPRESS, (0,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(applied), rejects

    def _write(self, ch: Change) -> str | None:
        """Apply one change; the error text if SQLite refuses it (constraint), else None."""
        st = self.tables[ch.object]
        try:
            if ch.op is Op.DELETE:
                self._conn.execute(st.delete(), ch.key)
            elif st.table.synthetic_key:
                assert ch.row is not None
                cols = [c for c in ch.row if c != ROWID_COLUMN]
                values = [ch.row[c] for c in cols]
                updated = bool(cols) and self._conn.execute(
                    st.update_by_rowid(cols), (*values, ch.key[0])).rowcount > 0
                if not updated:
                    self._conn.execute(st.insert_with_rowid(cols), (ch.key[0], *values))
            else:
                assert ch.row is not None
                cols = list(ch.row)
                self._conn.execute(st.upsert(cols), [ch.row[c] for c in cols])
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, OverflowError) as exc:
            return f"SQLite refused it: {exc}"
        return None

    def _record_rejects(self, stream: str, rejects: list[Reject], applied: list[Change]) -> None:
        now = time.time()
        if rejects:  # one still open for the key and position (a replayed batch) is not recorded again
            self._conn.executemany(
                f"""INSERT INTO {REJECTS} (stream, object, key, position, row_image, error, created_at)
                    SELECT :stream, :object, :key, :position, :row, :error, :now
                    WHERE NOT EXISTS (SELECT 1 FROM {REJECTS} WHERE stream = :stream AND object = :object
                                      AND key = :key AND position = :position AND resolved_at IS NULL)""",
                [{"stream": stream, "object": r.object, "key": _json(list(r.key)),
                  "position": r.position.offset, "row": _json(r.row) if r.row is not None else None,
                  "error": r.error, "now": now}
                 for r in rejects])
        if not applied or not self._conn.execute(
                f"SELECT 1 FROM {REJECTS} WHERE stream = ? AND resolved_at IS NULL LIMIT 1",
                (stream,)).fetchone():
            return
        last: dict[tuple[str, str], tuple[int, bool]] = {}
        for ch in applied:
            k = (ch.object, _json(list(ch.key)))
            last[k] = max(last.get(k, (-1, False)), (ch.position.offset, True))
        for r in rejects:
            k = (r.object, _json(list(r.key)))
            last[k] = max(last.get(k, (-1, False)), (r.position.offset, False))
        self._conn.executemany(
            f"UPDATE {REJECTS} SET resolved_at = ? WHERE stream = ? AND object = ? AND key = ? "
            "AND resolved_at IS NULL",
            [(now, stream, obj, key) for (obj, key), (_, ok) in last.items() if ok])

    async def count_rejects(self, stream: str) -> int:
        """Open (unresolved) rejects of *stream*."""
        def run() -> int:
            return int(self._conn.execute(
                f"SELECT count(*) FROM {REJECTS} WHERE stream = ? AND resolved_at IS NULL",
                (stream,)).fetchone()[0])
        return await self._call(run)
