"""SQLite source: snapshot chunks from the tables, changes from ``_syncd_changelog``.

All database work runs on one worker thread with the stdlib ``sqlite3`` module,
one hop per chunk or batch (not per statement). Every read is its own short
transaction, so the app's writers are never held up by a long read, in WAL or
rollback-journal mode. ``database is locked`` becomes :class:`SourceBusy` and is
retried by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
import watchfiles

from syncd.config import SqliteConfig
from syncd.errors import CaptureError, SchemaChanged, SourceBusy
from syncd.model import START, Batch, Key, Position, RowidCursor
from syncd.ports import Chunk, Pending
from syncd.ports.tables import Captured, Table
from syncd.sql import call_on, named, qi
from syncd.stores.sqlite import capture, follow, images, paging, prune, rowid_pages, rowids, values
from syncd.stores.sqlite.connect import open_connection, translate
from syncd.stores.sqlite.schema import changelog_head, discover

log = structlog.get_logger("syncd.source.sqlite")
T = TypeVar("T")


class SqliteSource:
    """Reads one SQLite database. Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, config: SqliteConfig, conn: sqlite3.Connection, tables: list[Table],
                 executor: ThreadPoolExecutor) -> None:
        self.config = config
        self.path = config.path
        self._conn = conn
        self.tables = {t.name: t for t in tables}
        self._executor = executor
        self._pruner = prune.Pruner(self.path)
        self._woken = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watch = asyncio.Event()
        self.source_id: str | None = None
        self.captured: dict[str, Captured] = {}
        """Per table, when its capture was (re)installed (``_syncd_captured``)."""
        self._schema_version: int | None = None  # None: capture not followed (init, verify)
        self._file: int | None = None
        """Inode of the file open, while capture is followed: another one at the path means
        the file was replaced (a copy renamed over it)."""
        self._replaced: str | None = None  # a replacement followed, for the next read to report
        self._checkpoint_due = False  # the last read found changes (:meth:`_checkpoint`)

    @classmethod
    async def open(cls, config: SqliteConfig, *, check_capture: bool = True) -> SqliteSource:
        """Open the database; with *check_capture*, bring capture up to date with the tables.

        A table that changed while syncd was not running (a column added, the table rebuilt by
        a migration, a new table, rowids renumbered by VACUUM, the file replaced) is captured
        again here, as :meth:`changes` does while running; the sink then copies it again
        (``_syncd_captured``).
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-sqlite")
        loop = asyncio.get_running_loop()

        def setup() -> tuple[sqlite3.Connection, list[Table], int | None]:
            conn = open_connection(config.path)
            try:
                if check_capture:
                    followed = follow.follow(conn, config)
                    return conn, followed.tables, followed.version
                tables = discover(conn, tables=config.tables, exclude=config.exclude,
                                  no_primary_key=config.no_primary_key)
            except BaseException:
                conn.close()
                raise
            return conn, tables, None

        try:
            conn, tables, version = await loop.run_in_executor(executor, setup)
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise translate(exc, config.path) from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        source = cls(config, conn, tables, executor)
        if check_capture:
            source.source_id = await source._call(capture.generation, conn)
            source.captured = await source._call(capture.captured_since, conn)
            source._file = await source._call(rowids.file_id, conn)
            source._schema_version = version
        return source

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await call_on(self._executor, lambda exc: translate(exc, self.path), self._on_file, fn, *args)

    def _on_file(self, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn* on the worker thread, first making sure the path still names the file open:
        a connection to a file renamed over would read it forever (and, as SQLite warns, may
        take the new file's journal for its own)."""
        if self._file is not None:
            try:
                now = os.stat(self.path).st_ino
            except FileNotFoundError:
                raise SourceBusy(f"SQLite database {self.path} is missing (being replaced?)") from None
            if now != self._file:
                self._reopen(now)
        return fn(*args)

    def _reopen(self, inode: int) -> None:
        """The file at the path is another one: drop the old, follow the new (its tables keyed
        by rowid are copied again: their references name the old inode)."""
        conn = open_connection(self.path)
        try:
            generation = capture.generation(conn)
            if generation != self.source_id:
                raise CaptureError(
                    f"SQLite {self.path} was replaced by a database whose change capture is another "
                    f"install ({generation or 'none'}, not {self.source_id}): its changelog positions mean "
                    "nothing to syncd. Copy again: TRUNCATE the synced tables in PostgreSQL and DELETE "
                    "their stream's row FROM syncd.checkpoints, then `syncd init` and `syncd run`")
            before = dict(self.tables)
            followed = follow.follow(conn, self.config)
        except BaseException:
            conn.close()
            raise
        old, self._conn = self._conn, conn
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._file = inode
        self.tables = {t.name: t for t in followed.tables}
        self._schema_version = followed.version
        self.captured = capture.captured_since(conn)
        again = [*followed.recaptured, *followed.renumbered]
        log.warning("SQLite database file replaced: following the new one", path=str(self.path),
                    inode=inode, copied_again=again, changes=follow.describe_change(before, followed))
        copies = f" and copies again {', '.join(again)}" if again else ""
        self._replaced = (f"SQLite {self.path}: the database file was replaced (a copy renamed over it); "
                          f"syncd follows the new file{copies}")

    async def close(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        await call_on(self._executor, lambda exc: translate(exc, self.path), self._conn.close)
        self._executor.shutdown(wait=True)

    # --- capture ------------------------------------------------------------------------

    async def install_capture(self) -> list[str]:
        return await self._call(capture.install, self._conn, list(self.tables.values()))

    async def uninstall_capture(self) -> list[str]:
        return await self._call(capture.uninstall, self._conn)

    # --- positions ----------------------------------------------------------------------

    def _head(self) -> Position:
        head = changelog_head(self._conn)
        return Position(head) if head else START

    async def head(self) -> Position:
        return await self._call(self._head)

    def _pending(self, after: Position) -> Pending:
        head = self._head()
        count = self._conn.execute(f"SELECT count(*) FROM {capture.CHANGELOG} WHERE id > ?",
                                   (after.offset,)).fetchone()[0]
        oldest = self._conn.execute(f"SELECT ts FROM {capture.CHANGELOG} WHERE id > ? ORDER BY id "
                                    "LIMIT 1", (after.offset,)).fetchone()  # one writer: ids in commit order
        return Pending(count=int(count), oldest_committed_at=oldest[0] if oldest else None, head=head)

    async def pending(self, after: Position) -> Pending:
        return await self._call(self._pending, after)

    # --- snapshot -----------------------------------------------------------------------

    def snapshot_objects(self) -> Sequence[str]:
        return list(self.tables)

    async def count(self, obj: str) -> int:
        def run() -> int:
            return int(self._conn.execute(f"SELECT count(*) FROM {qi(obj)}").fetchone()[0])
        return await self._call(run)

    def _read_chunk(self, table: Table, after: Key | None, rows: int,
                    prepare: Callable[[Chunk], Any] | None) -> Chunk | None:
        sql, params = paging.keyed_select(table, after, limit=True)
        batch = values.fetch_all(self._conn, sql, (*params, rows))
        if not batch:
            return None
        columns = table.target_columns
        last_key: Key = tuple(batch[-1][columns.index(k)] for k in table.pk)
        return self._chunk(table, batch, last_key, prepare)

    def _chunk(self, table: Table, batch: list[tuple[Any, ...]], last_key: Key,
               prepare: Callable[[Chunk], Any] | None) -> Chunk:
        chunk = Chunk(table.name, table.target_columns, batch, last_key)
        if prepare is not None:
            chunk = Chunk(table.name, table.target_columns, batch, last_key, prepared=prepare(chunk))
        return chunk

    def _read_null_keys(self, table: Table, last_key: Key,
                        prepare: Callable[[Chunk], Any] | None) -> Chunk | None:
        """The rows whose key holds a NULL, in one last chunk (no key orders them, so they cannot be
        paged by key; PostgreSQL rejects each, so an app has few). Its ``last_key`` is the last key
        read before it: a resume reads no keyed row again and these rows once more (their rejects are
        recorded once)."""
        batch = values.fetch_all(self._conn, paging.null_key_select(table))
        return self._chunk(table, batch, last_key, prepare) if batch else None

    def _read_rowid_page(self, table: Table, after: Key | None, rows: int,
                         prepare: Callable[[Chunk], Any] | None,
                         logged: Any) -> tuple[Chunk | None, bool, Any]:
        try:
            page, logged = rowid_pages.read(self._conn, table, after, rows, self._head().offset,
                                            list(self.tables.values()), logged)
        except SchemaChanged:  # recorded to be copied again: the sink must see the new epoch
            self.captured = capture.captured_since(self._conn)
            raise
        if page is None:
            self.captured = capture.captured_since(self._conn)
            return None, False, logged
        return self._chunk(table, page.rows, (page.cursor, *page.anchor), prepare), page.full, logged

    def _read_key_page(self, table: Table, after: Key | None, rows: int,
                       prepare: Callable[[Chunk], Any] | None, state: Any) -> tuple[Chunk | None, bool, Any]:
        chunk = self._read_chunk(table, after, rows, prepare)
        return chunk, chunk is not None and len(chunk.rows) == rows, state

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        """Chunks in key order; the next chunk is read (and prepared) while the caller writes this one.
        A table whose key may hold NULLs ends with its NULL-key rows (:meth:`_read_null_keys`).
        A rowid table with a declared key is read in rowid order instead, NULL keys included
        (:mod:`.rowid_pages`), unless its copy began in key order (a checkpoint of an older syncd)."""
        table = self.tables[obj]
        by_rowid = rowid_pages.by_rowid(table) and (after is None or isinstance(after[0], RowidCursor))
        read = self._read_rowid_page if by_rowid else self._read_key_page
        next_read = asyncio.ensure_future(self._call(read, table, after, rows, prepare, None))
        last_key = after
        try:
            while True:
                chunk, full, state = await next_read
                if chunk is None:
                    break
                last_key = chunk.last_key
                if full:
                    next_read = asyncio.ensure_future(
                        self._call(read, table, chunk.last_key, rows, prepare, state))
                yield chunk
                if not full:
                    break
            if table.nullable_key and not by_rowid:
                upto = last_key if last_key is not None else (None,) * len(table.pk)
                nulls = await self._call(self._read_null_keys, table, upto, prepare)
                if nulls is not None:
                    yield nulls
        finally:
            if not next_read.done():
                next_read.cancel()
                with contextlib.suppress(BaseException):
                    await next_read

    # --- changes ------------------------------------------------------------------------

    def _read_changes(self, after: Position, limit: int) -> Batch:
        """One read transaction: the schema version, then the changes.

        If the schema changed since the last read, the changes are not read: a captured table
        that changed may have logged images that lack a column, or nothing at all (rebuilt
        tables lose their triggers), and a VACUUM may have renumbered rowids.
        :meth:`_follow_schema` deals with that first.
        """
        if self._replaced is not None:  # followed on this thread before this read
            replaced, self._replaced = self._replaced, None
            raise SchemaChanged(replaced)
        if self._checkpoint_due:
            self._checkpoint()
        # the transaction holds back the app's checkpoints: images are decoded in it only when
        # decoding reads rows (a REAL zero's sign)
        in_read = images.reads_rows(self.tables)
        self._conn.execute("BEGIN")
        try:
            version = capture.schema_version(self._conn)
            rows = None
            if self._schema_version is None or version == self._schema_version:
                head = self._head()
                rows = values.fetch_all(
                    self._conn, f"SELECT id, tbl, op, pk, row, ts FROM {capture.CHANGELOG} "
                    "WHERE id > ? ORDER BY id LIMIT ?", (after.offset, limit))
                if in_read:
                    changes = images.decode(self._conn, self.tables, rows)
        finally:
            self._conn.execute("COMMIT")
        if rows is None:
            self._follow_schema(version)
            return self._read_changes(after, limit)
        if not in_read:
            changes = images.decode(self._conn, self.tables, rows)
        self._checkpoint_due = bool(rows)
        if after > head:
            raise CaptureError(
                f"SQLite {self.path}: its changelog ends at id {head.offset}, but syncd already applied "
                f"changes up to id {after.offset} from it: the file was replaced by an older copy (a "
                "restored backup?), and its new changes would be skipped. Copy again: TRUNCATE the synced "
                "tables in PostgreSQL and DELETE their stream's row FROM syncd.checkpoints, then `syncd run`")
        position = Position(rows[-1][0]) if rows else after
        return Batch(changes=changes, position=position)

    def _checkpoint(self) -> None:
        """Copy what the app committed back into the database file (a PASSIVE checkpoint, what
        the app's own connections run at a commit once the WAL holds 1,000 pages), before the
        read after one that found changes: the next read is often the read-ahead, made while
        PostgreSQL applies the batch.

        A checkpoint copies back only what every open read transaction sees, and the WAL starts
        over only once all of it was copied. Beside a busy app, syncd's reads kept catching the
        app's checkpoints: its WAL grew to tens of MB, each of its commits checkpointed again
        and took 1.2-1.7x as long (docs/benchmarks.md). Here syncd holds no snapshot, so the
        checkpoint can get to the end and the app's next write start the WAL over. It never waits
        for the app; while it runs the app's own checkpoint skips, as when another of the app's
        connections checkpoints. A failure (a full disk) is left to the app's checkpoints."""
        self._checkpoint_due = False
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("checkpoint after a read failed", path=str(self.path), error=str(exc))

    def _follow_schema(self, version: int) -> None:
        """The schema changed: re-read the tables; if a captured one changed, a new one appeared
        or rowids were renumbered (VACUUM raises the version too), capture it again and raise
        :class:`SchemaChanged` (the stream re-opens its sink, which adds new columns and copies
        those tables again)."""
        before = dict(self.tables)
        followed = follow.follow(self._conn, self.config)
        for gone in sorted(set(before) - {t.name for t in followed.tables}):
            log.warning("table dropped or renamed in SQLite: its PostgreSQL table is left as it was; "
                        "drop it there too if the app's migration dropped it", table=gone)
        self.tables = {t.name: t for t in followed.tables}
        # without a re-capture, the version read with the changes: a later change is seen next time
        self._schema_version = followed.version if followed.recaptured else version
        if not followed.changed:
            return
        self.captured = capture.captured_since(self._conn)
        since = max(self.captured[n].since for n in [*followed.recaptured, *followed.renumbered])
        raise SchemaChanged(f"SQLite {self.path}: schema changed while streaming: "
                            f"{follow.describe_change(before, followed)}; recorded at changelog id "
                            f"{since}; syncd copies these tables again")

    async def changes(self, after: Position, limit: int) -> Batch:
        return await self._call(self._read_changes, after, limit)

    def _prune_step(self, upto: int, first: bool) -> int | None:
        return self._pruner.step(self._conn, upto, first)  # the connection now open (the file may move)

    async def prune(self, upto: Position) -> int:
        """Delete logged changes up to *upto*, a step at a time (:mod:`.prune`)."""
        total = 0
        while True:
            deleted = await self._call(self._prune_step, upto.offset, total == 0)
            if deleted is None:
                return total
            total += deleted
            if deleted < prune.STEP_ROWS:
                return total

    # --- waking -------------------------------------------------------------------------

    async def _watch(self) -> None:
        names = {self.path.name, self.path.name + "-wal", self.path.name + "-journal"}
        only_db = named(names)
        try:
            async for _ in watchfiles.awatch(self.path.parent, watch_filter=only_db, debounce=20,
                                             step=5, stop_event=self._stop_watch,
                                             recursive=False):
                self._woken.set()
        except Exception as exc:  # the slow poll still covers us
            log.warning("file watch stopped; falling back to polling", error=str(exc))

    async def wait(self, timeout: float) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="syncd-sqlite-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()

    async def run_sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read query on the worker thread (status, verification)."""
        def run() -> list[tuple[Any, ...]]:
            return values.fetch_all(self._conn, sql, params)
        return await self._call(run)


def now() -> float:
    return time.time()
