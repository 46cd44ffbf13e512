"""`syncd export --to DIR`: every table and collection as chunked JSONL files plus a manifest.

SQLite is read in one read transaction (every table at one commit, with the changelog
head, capture generation and per-table capture epochs of that same commit); Chroma's
``chroma.sqlite3`` in another (every collection at one log position: the metadata
segment, and the log rows that hold the vectors). Nothing is written to either store:
both are opened read-only. Rows are read in key order with a cursor, ``chunk_rows`` at a
time, so memory holds one chunk.

Progress is ``progress.json`` (the manifest so far); each chunk file is written and
fsynced before it is recorded there. A killed export run again keeps the chunks recorded
and goes on after the last one's key, in a new read transaction: the recorded capture
position stays the first run's, so the bundle is then consistent the way syncd's own
snapshot is (rows read later, the changelog from that position replayed over them). A
source without capture must not have changed in between (checked: file size and mtime).
``manifest.json`` is written last.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from syncd import killpoints
from syncd.config import Config
from syncd.errors import FatalError, SourceError
from syncd.files import bundle as bd
from syncd.files import chroma_export, parquet
from syncd.files.chunk_writer import die_with_parent, encode_table_chunk, sqlite_value
from syncd.ports.collections import CollectionInfo
from syncd.ports.tables import Table
from syncd.service.progress import Meter
from syncd.sql import qi
from syncd.stores.chroma.catalog import read_catalog
from syncd.stores.chroma.records import DEFAULT_TOPIC_PREFIX
from syncd.stores.pgvector.plan import plan as plan_vectors
from syncd.stores.postgres.tables import plan_table
from syncd.stores.sqlite import capture, paging
from syncd.stores.sqlite.schema import changelog_head, discover, uri
from syncd.verify.canon import row_hash_int
from syncd.verify.vectors import VectorCanon

log = structlog.get_logger("syncd.export")

PROGRESS = "progress.json"
WORKERS = 2
"""Processes encoding and hashing table chunks (at most the CPUs)."""
_BUSY_S = 30.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _stamp(path: Path) -> list[int]:
    """Size and mtime of a database file and its write-ahead log (has it changed?)."""
    out: list[int] = []
    for p in (path, Path(f"{path}-wal")):
        st = p.stat() if p.exists() else None
        out += [st.st_size, st.st_mtime_ns] if st else [0, 0]
    return out


class Exporter:
    def __init__(self, cfg: Config, root: Path, *, tables: Sequence[str] | None,
                 collections: Sequence[str] | None, chunk_rows: int, chunk_format: str = bd.JSONL) -> None:
        self.cfg, self.root, self.chunk_rows, self.format = cfg, root, chunk_rows, chunk_format
        self.only_tables, self.only_collections = tables, collections
        self.state: dict[str, Any] = {}
        self.kill = killpoints.counter("export")
        self.written = 0
        self.meter = Meter("export")
        """Bars on a terminal (stderr a TTY); nothing otherwise."""
        self.workers = max(1, min(WORKERS, os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        """Processes that encode, write and hash table chunks while this one reads the next."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent, initargs=(os.getpid(),))
        return self._pool

    def close(self) -> None:
        self.meter.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # --- progress ---------------------------------------------------------------------------

    def load(self) -> None:
        if (self.root / bd.MANIFEST).is_file():
            raise FatalError(f"{self.root} already holds a complete bundle; export to a new directory "
                             "(or remove it)")
        if self.root.exists() and not self.root.is_dir():
            raise FatalError(f"{self.root} is not a directory")
        progress = self.root / PROGRESS
        if progress.is_file():
            self.state = json.loads(progress.read_text())
            was = self.state.get("chunk_format", bd.JSONL)
            if was != self.format:
                raise FatalError(f"the export in {self.root} was started with --format {was}; run it again "
                                 f"with --format {was} (or export to a new directory)")
            log.info("export resumed", path=str(self.root))
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise FatalError(f"{self.root} is not empty and holds no export in progress; export to a new "
                             "or empty directory")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.state = {"created_at": _now(), "chunk_format": self.format, "tables": [], "collections": [],
                          "sqlite": None, "chroma": None}

    def save(self) -> None:
        tmp = self.root / (PROGRESS + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / PROGRESS)

    def finish(self) -> dict[str, Any]:
        self.state["finished_at"] = _now()
        bd.write_manifest(self.root, self.state)
        with contextlib.suppress(FileNotFoundError):
            (self.root / PROGRESS).unlink()
        return self.state

    def _chunk_done(self, obj: dict[str, Any], entry: bd.ChunkEntry) -> None:
        obj["chunks"].append(entry.to_json())
        obj["rows"] += entry.rows
        self.save()
        self.meter.add(entry.rows)
        self.written += 1
        self.kill()

    # --- SQLite -----------------------------------------------------------------------------

    def export_sqlite(self) -> None:
        assert self.cfg.sqlite is not None
        path = self.cfg.sqlite.path
        if not path.is_file():
            raise SourceError(f"SQLite database {path} does not exist (source.sqlite.path)")
        conn = sqlite3.connect(uri(path, "ro"), uri=True, timeout=_BUSY_S, isolation_level=None)
        conn.text_factory = bd.text_factory
        try:
            conn.execute("BEGIN")
            try:
                self._sqlite(conn, path)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SourceError(f"SQLite {path}: {exc}") from exc
        finally:
            conn.close()

    def _capture(self, conn: sqlite3.Connection) -> dict[str, Any] | None:
        has = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        if capture.CHANGELOG not in has:
            return None
        generation = capture.generation(conn) if capture.META in has else None
        return {"position": changelog_head(conn) or 0, "generation": generation,
                "captured": {t: [c.since, c.epoch] for t, c in capture.captured_since(conn).items()}}

    def _sqlite(self, conn: sqlite3.Connection, path: Path) -> None:
        assert self.cfg.sqlite is not None
        conf = self.cfg.sqlite
        cap = self._capture(conn)
        stamp = _stamp(path)
        if self.state["sqlite"] is None:
            chosen = tuple(self.only_tables) if self.only_tables else conf.tables
            tables = discover(conn, tables=chosen, exclude=conf.exclude, no_primary_key=conf.no_primary_key)
            self.state["sqlite"] = {"source": str(path), "capture": cap, "stamp": stamp}
            for i, t in enumerate(tables):
                tt = plan_table(t, self.cfg.target, None)
                self.state["tables"].append({
                    "name": t.name, "index": i, "schema": bd.table_to_json(t),
                    "target": {"schema": tt.schema, "table": tt.name,
                               "columns": [{"name": c.name, "pg_type": c.pg_type} for c in tt.columns]},
                    "rows": 0, "chunks": [], "done": False})
            self.save()
        else:
            was = self.state["sqlite"]["capture"]
            if (was is None) != (cap is None) or (was and cap and was["generation"] != cap["generation"]):
                raise FatalError(f"change capture in {path} was installed or reinstalled since this "
                                 f"export started; export again into a new directory")
            if cap is None and self.state["sqlite"]["stamp"] != stamp:
                raise FatalError(f"{path} changed since this export started and has no change "
                                 "capture to make up for it; export again into a new directory")
        for obj in self.state["tables"]:
            if not obj["done"]:
                self._table(conn, obj)

    def _resume_point(self, obj: dict[str, Any], table: Table) -> tuple[Any, ...] | None:
        """The key to read on after. A chunk that ended in a table's NULL-key rows (read last, in
        rowid order, after the keyed ones) is dropped with every chunk after it: they are read again
        (see :mod:`syncd.stores.sqlite.paging`)."""
        chunks = obj["chunks"]
        nulls = next((i for i, c in enumerate(chunks)
                      if paging.holds_null([bd.decode_value(v) for v in c["last_key"]])), None)
        if nulls is not None:
            obj["rows"] -= sum(c["rows"] for c in chunks[nulls:])
            del chunks[nulls:]
            self.save()
        return tuple(bd.decode_value(v) for v in chunks[-1]["last_key"]) if chunks else None

    def _table(self, conn: sqlite3.Connection, obj: dict[str, Any]) -> None:
        table = bd.table_from_json(obj["schema"])
        tt = plan_table(table, self.cfg.target, None)
        types = [(c.name, c.pg_type, c.rounded) for c in tt.columns]
        columns = table.target_columns
        key_idx = [columns.index(k) for k in table.pk]
        affinities = parquet.affinities(table) if self.format == bd.PARQUET else None
        last = self._resume_point(obj, table)
        if self.meter.bars is not None:
            total = conn.execute(f"SELECT count(*) FROM {qi(table.name)}").fetchone()[0]
            self.meter.begin(obj["name"], int(total), obj["rows"])
        reads = [paging.keyed_select(table, last, limit=False)]
        if table.nullable_key:
            reads.append((paging.null_key_select(table), []))
        batches = _batches(conn, reads, self.chunk_rows)
        pending: collections.deque[tuple[Future[tuple[str, int, str]], str, int, list[Any]]] = \
            collections.deque()
        try:
            while True:
                rows = next(batches, [])
                if rows:
                    rel = bd.chunk_name("tables", obj["index"], len(obj["chunks"]) + len(pending) + 1,
                                        self.format)
                    key = [bd.encode_value(sqlite_value(rows[-1][i])) for i in key_idx]
                    pending.append((self.pool().submit(encode_table_chunk, str(self.root), rel, columns,
                                                       types, rows, affinities), rel, len(rows), key))
                while pending and (not rows or len(pending) > self.workers):
                    future, rel, n, key = pending.popleft()
                    sha, hashed, xor = future.result()
                    self._chunk_done(obj, bd.ChunkEntry(rel, sha, n, hashed, xor, key))
                if not rows:
                    break
        finally:
            for future, *_ in pending:
                future.cancel()
        obj["done"] = True
        self.save()
        log.info("table exported", table=obj["name"], rows=obj["rows"], chunks=len(obj["chunks"]))

    # --- Chroma -----------------------------------------------------------------------------

    def export_chroma(self) -> None:
        assert self.cfg.chroma is not None
        if self.cfg.chroma.path is None:
            raise FatalError("a Chroma known only by its URL cannot be exported at one log position; "
                             "set source.chroma.path to its persist directory")
        db = self.cfg.chroma.path / "chroma.sqlite3"
        if not db.is_file():
            raise SourceError(f"{db} does not exist (source.chroma.path)")
        conn = sqlite3.connect(uri(db, "ro"), uri=True, timeout=_BUSY_S, isolation_level=None)
        try:
            conn.execute("BEGIN")
            try:
                self._chroma(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SourceError(f"Chroma {db}: {exc}") from exc
        finally:
            conn.close()

    def _chroma(self, conn: sqlite3.Connection) -> None:
        assert self.cfg.chroma is not None
        conf = self.cfg.chroma
        has_arrays = bool(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                       "name = 'embedding_metadata_array'").fetchone())
        row = conn.execute("SELECT topic FROM embeddings_queue ORDER BY seq_id DESC LIMIT 1").fetchone()
        prefix = str(row[0]).rsplit("/", 1)[0] + "/" if row else DEFAULT_TOPIC_PREFIX
        catalog = read_catalog(conn, conf.tenant, conf.database)
        if self.state["chroma"] is None:
            names = self.only_collections or conf.collections
            if names:
                missing = sorted(set(names) - {c.name for c in catalog})
                if missing:
                    raise FatalError(f"no collection {missing[0]!r} in {conf.path}")
            chosen = [c for c in catalog if (not names or c.name in names) and c.dimension is not None]
            self.state["chroma"] = {"source": str(conf.path), "tenant": conf.tenant,
                                    "database": conf.database}
            for i, info in enumerate(chosen):
                self.state["collections"].append({
                    "name": info.name, "id": info.id, "index": i, "dimension": info.dimension,
                    "space": info.space, "hnsw": None if info.hnsw is None else {
                        "max_neighbors": info.hnsw.max_neighbors,
                        "ef_construction": info.hnsw.ef_construction, "ef_search": info.hnsw.ef_search},
                    "position": chroma_export.head(conn, info, prefix + info.id), "rows": 0, "chunks": [],
                    "done": False})
            self.save()
        by_id = {c.id: c for c in catalog}
        for obj in self.state["collections"]:
            if obj["done"]:
                continue
            found = by_id.get(obj["id"])
            if found is None:
                raise FatalError(f"collection {obj['name']!r} was deleted since this export started; "
                                 "export again into a new directory")
            self._collection(conn, obj, found, prefix + found.id, has_arrays)

    def _collection(self, conn: sqlite3.Connection, obj: dict[str, Any], info: CollectionInfo, topic: str,
                    has_arrays: bool) -> None:
        canon = VectorCanon(plan_vectors(info, self.cfg.target, None, {}, lambda _w: None), "vector_send")
        after = obj["chunks"][-1]["last_key"][0] if obj["chunks"] else None
        if self.meter.bars is not None:
            self.meter.begin(obj["name"], chroma_export.count(conn, info), obj["rows"])
        for items in chroma_export.item_pages(conn, info, topic, after, self.chunk_rows, has_arrays):
            acc, hashed = 0, 0
            for item in items:
                if item.vector is None and item.error is None:
                    item.vector = item.logged  # no server here: the log's own replay (docs/files.md)
                if item.vector is None and item.error is None:
                    raise SourceError(
                        f"collection {info.name!r}: Chroma purged the log row that holds the vector "
                        f"of {item.id!r}; export reads vectors from the log: run `syncd init` (it keeps the "
                        "log) before the app writes, or export from a backup taken with the log")
                exp = canon.expected(item)
                if exp.parts is not None:
                    acc ^= row_hash_int("|".join(exp.parts))
                    hashed += 1
            rel = bd.chunk_name("collections", obj["index"], len(obj["chunks"]) + 1, self.format)
            if self.format == bd.PARQUET:
                sha = parquet.write_items(self.root, rel, items, info.dimension or 0)
            else:
                sha = bd.write_chunk(self.root, rel, (chroma_export.line(i) for i in items))
            entry = bd.ChunkEntry(rel, sha, len(items), hashed, f"{acc:016x}", [items[-1].id])
            self._chunk_done(obj, entry)
        obj["done"] = True
        self.save()
        log.info("collection exported", collection=obj["name"], items=obj["rows"], chunks=len(obj["chunks"]))


def _batches(conn: sqlite3.Connection, reads: Sequence[tuple[str, Sequence[Any]]],
             size: int) -> Iterator[list[Any]]:
    """The rows of *reads*, one after the other, *size* at a time (a batch may span two reads)."""
    batch: list[Any] = []
    for sql, params in reads:
        cur = conn.execute(sql, params)
        while rows := cur.fetchmany(size - len(batch)):
            batch.extend(rows)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def export(cfg: Config, to: Path, *, tables: Sequence[str] | None = None,
           collections: Sequence[str] | None = None, chunk_rows: int | None = None,
           out: Callable[[str], None] = print, chunk_format: str = bd.JSONL) -> dict[str, Any]:
    """Write (or complete) the bundle at *to*; return its manifest."""
    if cfg.sqlite is None and cfg.chroma is None:
        raise FatalError("nothing to export: configure [source.sqlite] and/or [source.chroma]")
    if tables and cfg.sqlite is None:
        raise FatalError("--table needs [source.sqlite] in the config")
    if collections and cfg.chroma is None:
        raise FatalError("--collection needs [source.chroma] in the config")
    ex = Exporter(cfg, to, tables=tables, collections=collections,
                  chunk_rows=chunk_rows or cfg.stream.chunk_rows, chunk_format=chunk_format)
    ex.load()
    only_one = bool(tables) != bool(collections)
    try:
        if cfg.sqlite is not None and not (only_one and collections):
            ex.export_sqlite()
        if cfg.chroma is not None and not (only_one and tables):
            ex.export_chroma()
    finally:
        ex.close()
    return ex.finish()
