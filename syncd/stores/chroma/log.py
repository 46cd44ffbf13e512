"""Chroma's persist directory read from outside: the catalog and the log in ``chroma.sqlite3``.

Chroma 1.5.9 writes every change of every collection to ``embeddings_queue``
(``seq_id``, operation, item id, float32 vector, metadata JSON with the document
under ``chroma:document``), then applies it to the metadata segment (tables
``embeddings`` / ``embedding_metadata``, whose ``embeddings.seq_id`` is the last
operation that took effect per item) and to the HNSW index. The catalog is in
``collections`` / ``segments`` / ``max_seq_id``. See docs/chroma.md.

Reads run on one read-only connection (``mode=ro``, busy timeout 5 s), each a
short read transaction, on one worker thread: Chroma's journal mode is
``delete``, so a long read would stall its writer. The two writes syncd makes —
the retention switch (:mod:`syncd.stores.chroma.retention`) and pruning rows it has
checkpointed past — go through a second connection (:attr:`ChromaLog.rw`), in
short transactions, on the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import structlog
import watchfiles

from syncd.errors import SourceError, SourceUnavailable, SyncdError
from syncd.ports.collections import CollectionInfo, Doubt, Item, ItemPage
from syncd.sql import call_on, named, sqlite_error
from syncd.stores.chroma.catalog import read_catalog, read_images
from syncd.stores.chroma.doubt import scan
from syncd.stores.chroma.prune import prune_rows
from syncd.stores.chroma.records import DEFAULT_TOPIC_PREFIX, Gap, LogRow, seq_value

log = structlog.get_logger("syncd.source.chroma")
T = TypeVar("T")

SQLITE_FILE = "chroma.sqlite3"


def translate(exc: BaseException, path: Path) -> SyncdError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in text:
        name = str(getattr(exc, "sqlite_errorname", "") or "")
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        if name not in ("", "SQLITE_READONLY") or writable:
            # an extended code (recovery after a crash, a file replaced) or a file syncd may
            # write: Chroma's log was busy being recovered or replaced (a Chroma restart)
            return SourceUnavailable(f"{path}: {text} ({name or 'SQLITE_READONLY'}) although syncd may "
                                     "write there: Chroma's log is being recovered or was replaced "
                                     "(a Chroma restart?); reopening it and retrying")
        return SourceError(f"{path}: {text}: syncd writes two things there (the switch that keeps Chroma's "
                           "log, and pruning the rows it has copied); give its user write access to the file "
                           "and its directory (a shared group or an ACL)")
    return sqlite_error(exc, f"Chroma log {path}")


class ChromaLog:
    """One persist directory's ``chroma.sqlite3``, shared by every collection stream."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SQLITE_FILE
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-chroma")
        self._ro: sqlite3.Connection | None = None
        self._rw: sqlite3.Connection | None = None
        self._reopen = False
        self._topic_prefix: str | None = None
        self._has_arrays = True
        self._subscribers: set[asyncio.Event] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watch = asyncio.Event()

    @classmethod
    async def open(cls, directory: Path) -> ChromaLog:
        chroma_log = cls(directory)
        try:
            await chroma_log.call(chroma_log._open)
        except BaseException:
            chroma_log._executor.shutdown(wait=False)
            raise
        return chroma_log

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(
                f"{self.path} does not exist: source.chroma.path must be Chroma's persist directory "
                "(the --path given to `chroma run`, or to PersistentClient)")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise SourceError(f"{self.path}: not a Chroma database: {exc}") from exc
        missing = {"embeddings_queue", "collections", "segments", "embeddings", "max_seq_id",
                   "embedding_metadata", "embeddings_queue_config"} - tables
        if missing:
            conn.close()
            raise SourceError(f"{self.path}: not a Chroma 1.x database (no table {sorted(missing)[0]}); "
                              "syncd reads the log of Chroma 1.5")
        self._has_arrays = "embedding_metadata_array" in tables
        self._ro = conn

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await call_on(self._executor, self._translate, fn, *args)

    def _translate(self, exc: BaseException) -> SyncdError:
        error = translate(exc, self.path)
        if isinstance(error, SourceUnavailable):
            self._reopen = True  # the write connection is opened again before its next use
        return error

    async def close(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher

        def shut() -> None:
            for conn in (self._ro, self._rw):
                if conn is not None:
                    conn.close()
            self._ro = self._rw = None

        with contextlib.suppress(Exception):
            await self.call(shut)
        self._executor.shutdown(wait=True)

    @property
    def has_arrays(self) -> bool:
        """Whether this Chroma keeps array metadata values (``embedding_metadata_array``)."""
        return self._has_arrays

    @property
    def ro(self) -> sqlite3.Connection:
        assert self._ro is not None, "ChromaLog used before open()"
        return self._ro

    @property
    def rw(self) -> sqlite3.Connection:
        if self._reopen and self._rw is not None:
            with contextlib.suppress(sqlite3.Error):
                self._rw.close()
            self._rw = None
        self._reopen = False
        if self._rw is None:
            uri = f"file:{quote(str(self.path.resolve()))}?mode=rw"
            self._rw = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None,
                                       check_same_thread=False)
        return self._rw

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* in one short read transaction (a consistent view)."""
        conn = self.ro
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def topic(self, collection_id: str) -> str:
        if self._topic_prefix is None:
            row = self.ro.execute(
                "SELECT topic FROM embeddings_queue ORDER BY seq_id DESC LIMIT 1").fetchone()
            if row is None:
                return DEFAULT_TOPIC_PREFIX + collection_id
            self._topic_prefix = str(row[0]).rsplit("/", 1)[0] + "/"
        return self._topic_prefix + collection_id

    # --- catalog -------------------------------------------------------------------------

    def _catalog(self, tenant: str, database: str) -> list[CollectionInfo]:
        return self.read(lambda conn: read_catalog(conn, tenant, database))

    async def catalog(self, tenant: str, database: str) -> list[CollectionInfo]:
        """The collections of one tenant / database, by name."""
        return await self.call(self._catalog, tenant, database)

    def _key_types(self, info: CollectionInfo, keys: Sequence[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for key in keys:
            kinds: set[str] = set()
            row = self.ro.execute(
                """SELECT count(m.string_value), count(m.int_value), count(m.float_value), count(m.bool_value)
                   FROM embedding_metadata m JOIN embeddings e ON e.id = m.id
                   WHERE e.segment_id = ? AND m.key = ?""", (info.metadata_segment, key)).fetchone()
            for kind, n in zip(("str", "int", "float", "bool"), row, strict=True):
                if n:
                    kinds.add(kind)
            if self._has_arrays and self.ro.execute(
                    """SELECT 1 FROM embedding_metadata_array m JOIN embeddings e ON e.id = m.id
                       WHERE e.segment_id = ? AND m.key = ? LIMIT 1""",
                    (info.metadata_segment, key)).fetchone():
                kinds.add("array")
            out[key] = kinds
        return out

    async def key_types(self, info: CollectionInfo, keys: Sequence[str]) -> dict[str, set[str]]:
        """For each metadata key, the kinds of value the collection holds (str, int, float, bool, array)."""
        return await self.call(self._key_types, info, list(keys))

    # --- positions -----------------------------------------------------------------------

    def _applied(self, conn: sqlite3.Connection, info: CollectionInfo) -> int | None:
        row = conn.execute("SELECT seq_id FROM max_seq_id WHERE segment_id = ?",
                           (info.metadata_segment,)).fetchone()
        return seq_value(row[0]) if row and row[0] is not None else None

    def _consistent_head(self, info: CollectionInfo) -> int:
        def read(conn: sqlite3.Connection) -> int:
            applied = self._applied(conn, info)
            row = conn.execute("SELECT max(seq_id) FROM embeddings_queue WHERE topic = ?",
                               (self.topic(info.id),)).fetchone()
            newest = row[0] if row else None
            if applied is None or newest is None:
                return 0
            return min(applied, int(newest))

        return self.read(read)

    async def consistent_head(self, info: CollectionInfo) -> int:
        """A position P such that every operation at or below P is visible in the metadata segment,
        and every later operation of the collection gets a seq_id above P."""
        return await self.call(self._consistent_head, info)

    async def applied(self, info: CollectionInfo) -> int | None:
        """The metadata segment's ``max_seq_id``: the last operation Chroma applied."""
        return await self.call(lambda: self.read(lambda c: self._applied(c, info)))

    async def hnsw_saved(self, info: CollectionInfo) -> int:
        """The HNSW segment's ``max_seq_id``: the last operation in the index Chroma saved (0: none)."""
        def read() -> int:
            row = self.ro.execute("SELECT seq_id FROM max_seq_id WHERE segment_id = ?",
                                  (info.vector_segment,)).fetchone()
            return seq_value(row[0]) if row and row[0] is not None else 0

        return await self.call(read)

    async def vector_doubts(self, info: CollectionInfo) -> dict[str, Doubt]:
        """Ids whose vector Chroma's index may hold from an UPDATE of a missing id
        (:mod:`syncd.stores.chroma.doubt`), from the whole log, in short read transactions."""
        return await self.call(lambda: scan(self.read, self.topic(info.id)))

    def _pending(self, info: CollectionInfo, after: int) -> tuple[int, float | None, int]:
        row = self.ro.execute(
            """SELECT count(*), min(CAST(strftime('%s', created_at) AS INTEGER)), max(seq_id)
               FROM embeddings_queue WHERE seq_id > ? AND topic = ?""",
            (after, self.topic(info.id))).fetchone()
        return int(row[0]), float(row[1]) if row[1] is not None else None, int(row[2] or after)

    async def pending(self, info: CollectionInfo, after: int) -> tuple[int, float | None, int]:
        """Rows after *after*: how many, the oldest one's time, and the newest seq_id."""
        return await self.call(self._pending, info, after)

    # --- changes -------------------------------------------------------------------------

    def _changes(self, info: CollectionInfo, after: int, limit: int,
                 check_gap: bool) -> tuple[list[LogRow], Gap | None]:
        def read(conn: sqlite3.Connection) -> tuple[list[LogRow], Gap | None]:
            rows = [LogRow(seq=int(r[0]), op=int(r[1]), id=r[2], vector=r[3], encoding=r[4], metadata=r[5],
                           created_at=float(r[6]) if r[6] is not None else None)
                    for r in conn.execute(
                        """SELECT seq_id, operation, id, vector, encoding, metadata,
                                  CAST(strftime('%s', created_at) AS INTEGER)
                           FROM embeddings_queue WHERE seq_id > ? AND topic = ? ORDER BY seq_id LIMIT ?""",
                        (after, self.topic(info.id), limit))]
            return rows, self._gap(conn, info, after, rows[0].seq if rows else None) if check_gap else None

        return self.read(read)

    def _gap(self, conn: sqlite3.Connection, info: CollectionInfo, after: int,
             first: int | None) -> Gap | None:
        """Rows the collection may have lost after *after*.

        Chroma purges a collection's rows below the ``max_seq_id`` of its segments, which
        is at most the metadata segment's. So rows of ours that are gone lie between
        *after* and the first row still there (*first*), below that bound; a hole in the
        global sequence there may be one of them.
        """
        applied = self._applied(conn, info)
        if applied is None:
            return None
        before = min(first, applied) if first is not None else applied
        if before - after <= 1:
            return None
        present = conn.execute("SELECT count(*) FROM embeddings_queue WHERE seq_id > ? AND seq_id < ?",
                               (after, before)).fetchone()[0]
        missing = before - after - 1 - int(present)
        return Gap(after=after, before=before, missing=missing) if missing > 0 else None

    async def changes(self, info: CollectionInfo, after: int, limit: int,
                      check_gap: bool) -> tuple[list[LogRow], Gap | None]:
        """Up to *limit* log rows of the collection after *after*, and the gap before them if any."""
        return await self.call(self._changes, info, after, limit, check_gap)

    # --- items ---------------------------------------------------------------------------

    def _items(self, info: CollectionInfo, after: str | None, limit: int,
               changed_after: int | None) -> ItemPage:
        def read(conn: sqlite3.Connection) -> ItemPage:
            if after is None:
                rows = conn.execute(
                    "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
                    "ORDER BY embedding_id LIMIT ?", (info.metadata_segment, limit)).fetchall()
            else:
                rows = conn.execute(
                    "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
                    "AND embedding_id > ? ORDER BY embedding_id LIMIT ?",
                    (info.metadata_segment, after, limit)).fetchall()
            keys = [(r[1], seq_value(r[2])) for r in rows]
            wanted = [(int(r[0]), r[1], seq) for r, (_, seq) in zip(rows, keys, strict=True)
                      if changed_after is None or seq > changed_after]
            return ItemPage(keys=keys, items=read_images(conn, self.topic(info.id), wanted, self._has_arrays))

        return self.read(read)

    async def items(self, info: CollectionInfo, after: str | None, limit: int,
                    changed_after: int | None = None) -> ItemPage:
        """Up to *limit* ids after key *after* (binary order), with the images of all of them, or
        of those whose last effective operation is after *changed_after*."""
        return await self.call(self._items, info, after, limit, changed_after)

    def _items_by_ids(self, info: CollectionInfo, ids: Sequence[str]) -> list[Item]:
        def read(conn: sqlite3.Connection) -> list[Item]:
            rows = conn.execute(
                "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
                "AND embedding_id IN (SELECT value FROM json_each(?))",
                (info.metadata_segment, json.dumps(list(ids)))).fetchall()
            return read_images(conn, self.topic(info.id), [(int(r[0]), r[1], seq_value(r[2])) for r in rows],
                               self._has_arrays)

        return self.read(read)

    async def items_by_ids(self, info: CollectionInfo, ids: Sequence[str]) -> list[Item]:
        """The current images of *ids* that the collection holds."""
        return await self.call(self._items_by_ids, info, list(ids))

    def _current_seqs(self, info: CollectionInfo, ids: Sequence[str]) -> dict[str, int]:
        rows = self.ro.execute(
            "SELECT embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
            "AND embedding_id IN (SELECT value FROM json_each(?))", (info.metadata_segment, json.dumps(ids)))
        return {r[0]: seq_value(r[1]) for r in rows}

    async def current_seqs(self, info: CollectionInfo, ids: Sequence[str]) -> dict[str, int]:
        return await self.call(self._current_seqs, info, list(ids))

    async def count(self, info: CollectionInfo) -> int:
        def run() -> int:
            return int(self.ro.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?",
                                       (info.metadata_segment,)).fetchone()[0])
        return await self.call(run)

    # --- pruning -------------------------------------------------------------------------

    def _prune(self, info: CollectionInfo, upto: int) -> int:
        return prune_rows(self.rw, info, self.topic(info.id), upto)

    async def prune(self, info: CollectionInfo, upto: int) -> int:
        return await self.call(self._prune, info, upto)

    # --- waking --------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Event:
        """An event set whenever ``chroma.sqlite3`` changes (start the watcher on first use)."""
        event = asyncio.Event()
        self._subscribers.add(event)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="syncd-chroma-watch")
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._subscribers.discard(event)

    async def _watch(self) -> None:
        names = {SQLITE_FILE, SQLITE_FILE + "-journal", SQLITE_FILE + "-wal"}
        only_db = named(names)
        try:
            async for _ in watchfiles.awatch(self.directory, watch_filter=only_db, debounce=20, step=5,
                                             stop_event=self._stop_watch, recursive=False):
                for event in self._subscribers:
                    event.set()
        except Exception as exc:  # the slow poll still covers us
            log.warning("file watch stopped; falling back to polling", error=str(exc))
