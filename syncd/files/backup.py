"""`syncd backup`: an online, consistent copy of the app's SQLite file and Chroma directory.

SQLite is copied with SQLite's backup API in one step: one read transaction, so the
copy is the database at one commit, and the app keeps writing (in WAL mode without
waiting; in rollback-journal mode its writers wait on the busy timeout for the copy).

A Chroma persist directory is ``chroma.sqlite3`` (catalog, the write-ahead log
``embeddings_queue``, the metadata segment, and per vector segment ``max_seq_id``: how
far its HNSW files on disk go) plus one directory of HNSW files per vector segment.
Chroma writes those files from time to time and then raises ``max_seq_id``; it purges
the log only up to the lowest ``max_seq_id``. The copy takes the segment files first,
then ``chroma.sqlite3`` through the backup API, and checks that no segment file and no
``max_seq_id`` changed in between (otherwise it copies again): then the copied files are
the HNSW state at the copied ``max_seq_id`` and the copied log holds every write after
it, which Chroma replays when it opens the copy.

The backup is written to ``<name>.partial`` and renamed when complete, with its
manifest (:mod:`syncd.files.manifest`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from syncd.config import Config
from syncd.errors import FatalError, SourceError
from syncd.files import manifest as mf
from syncd.sql import qi
from syncd.stores.chroma.records import OP_ADD, OP_DELETE, OP_UPSERT, seq_value
from syncd.stores.sqlite.schema import changelog_head, list_tables, uri

log = structlog.get_logger("syncd.backup")

PREFIX = "syncd-backup-"
CHROMA_DB = "chroma.sqlite3"
_SQLITE_SIDE = ("-wal", "-shm", "-journal")
_CHROMA_ATTEMPTS = 5
_BUSY_MS = 30_000


@dataclass(frozen=True, slots=True)
class Result:
    path: Path
    manifest: mf.Manifest
    pruned: tuple[Path, ...]


def backup_dir(cfg: Config) -> Path:
    return cfg.backup.dir if cfg.backup.dir is not None else cfg.state_dir / "backups"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def needed_bytes(cfg: Config) -> int:
    total = 0
    if cfg.sqlite is not None:
        total += sum(_size(Path(f"{cfg.sqlite.path}{s}")) for s in ("", "-wal"))
    if cfg.chroma is not None and cfg.chroma.path is not None:
        total += _size(cfg.chroma.path)
    return total


def check_space(cfg: Config, directory: Path) -> None:
    """Refuse (FatalError, one line) unless the backup fits with ``backup.min_free_mb`` to spare."""
    need = needed_bytes(cfg)
    free = shutil.disk_usage(directory).free
    reserve = cfg.backup.min_free_mb * 1024 * 1024
    if free - need < reserve:
        mb = 1024 * 1024
        raise FatalError(f"backup: not enough disk space in {directory}: {free // mb} MB free, the backup "
                         f"needs about {need // mb + 1} MB and backup.min_free_mb = "
                         f"{cfg.backup.min_free_mb} MB must stay free; free space or set backup.dir "
                         "elsewhere (nothing was written)")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_sqlite(src: Path, dst: Path) -> None:
    """The database at *src* as of one commit, into the new file *dst* (SQLite's backup API)."""
    if not src.is_file():
        raise SourceError(f"backup: SQLite database {src} does not exist (source.sqlite.path)")
    try:
        source = sqlite3.connect(uri(src, "ro"), uri=True, timeout=_BUSY_MS / 1000)
        try:
            target = sqlite3.connect(dst)
            try:
                source.backup(target, pages=-1)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise SourceError(f"backup: cannot copy SQLite database {src}: {exc} (source.sqlite.path)") from exc
    _fsync(dst)


def _quick_facts(db: Path) -> tuple[str, sqlite3.Connection]:
    """integrity_check of the copy at *db*, and a connection to read more. Read-write, so that
    closing it removes the ``-wal`` / ``-shm`` a WAL-mode copy gets when opened (see :func:`_close`)."""
    conn = sqlite3.connect(db)
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return ("ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])), conn


def _close(conn: sqlite3.Connection, db: Path) -> None:
    """Close the last connection to the copy; a backup holds the database file alone."""
    conn.close()
    for side in _SQLITE_SIDE:
        extra = Path(f"{db}{side}")
        if extra.exists():
            if side == "-wal" and extra.stat().st_size:
                raise SourceError(f"backup: {extra} kept changes after its last connection closed")
            extra.unlink()


def sqlite_facts(db: Path) -> dict[str, Any]:
    """integrity_check, row counts and the capture position of the copy at *db*."""
    check, conn = _quick_facts(db)
    try:
        tables = {t: conn.execute(f"SELECT count(*) FROM {qi(t)}").fetchone()[0] for t in list_tables(conn)}
        head = None
        with contextlib.suppress(sqlite3.Error):
            head = changelog_head(conn)
    finally:
        _close(conn, db)
    return {"integrity_check": check, "tables": tables, "capture_position": head}


def _segment_state(persist: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(persist.rglob("*")):
        rel = p.relative_to(persist).as_posix()
        if p.is_file() and "/" in rel:
            st = p.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _max_seq_ids(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(uri(db, "ro"), uri=True, timeout=_BUSY_MS / 1000)
    try:
        return {str(s): int.from_bytes(v, "big") if isinstance(v, bytes) else int(v)
                for s, v in conn.execute("SELECT segment_id, seq_id FROM max_seq_id")}
    finally:
        conn.close()


def copy_chroma(persist: Path, dst: Path) -> None:
    """The persist directory into *dst*: segment files, then ``chroma.sqlite3``, retried until no
    segment file and no ``max_seq_id`` changed during the copy."""
    db = persist / CHROMA_DB
    if not db.is_file():
        raise SourceError(f"backup: {persist} is not a Chroma persist directory (no {CHROMA_DB})")
    for attempt in range(1, _CHROMA_ATTEMPTS + 1):
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        before, seq_before = _segment_state(persist), _max_seq_ids(db)
        for rel in before:
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(persist / rel, out)
            _fsync(out)
        copy_sqlite(db, dst / CHROMA_DB)
        if _segment_state(persist) == before and _max_seq_ids(dst / CHROMA_DB) == seq_before:
            for d in {(dst / rel).parent for rel in before} | {dst}:
                mf.fsync_dir(d)
            return
        log.info("Chroma wrote its index files during the copy; copying again", attempt=attempt)
    raise SourceError(f"backup: Chroma kept rewriting its index files in {persist} during {_CHROMA_ATTEMPTS} "
                      "copies; run the backup again when the app writes less")


def _item_count(conn: sqlite3.Connection, collection_id: str, segment_id: str) -> int:
    """Items Chroma shows for the collection: the metadata segment, plus the log rows after
    what it has applied (Chroma applies them when it opens the directory)."""
    ids = {r[0] for r in conn.execute("SELECT embedding_id FROM embeddings WHERE segment_id = ?",
                                      (segment_id,))}
    row = conn.execute("SELECT seq_id FROM max_seq_id WHERE segment_id = ?", (segment_id,)).fetchone()
    applied = seq_value(row[0]) if row and row[0] is not None else -1
    for item_id, op in conn.execute(
            "SELECT id, operation FROM embeddings_queue WHERE topic LIKE ? AND seq_id > ? ORDER BY seq_id",
            (f"%/{collection_id}", applied)):
        if op in (OP_ADD, OP_UPSERT):
            ids.add(item_id)
        elif op == OP_DELETE:
            ids.discard(item_id)
    return len(ids)


def chroma_facts(db: Path) -> dict[str, Any]:
    """integrity_check, item count per collection and the log position of the copy at *db*."""
    check, conn = _quick_facts(db)
    try:
        counts = {name: _item_count(conn, cid, sid) for name, cid, sid in conn.execute(
            "SELECT c.name, c.id, s.id FROM collections c JOIN segments s ON s.collection = c.id "
            "AND s.scope = 'METADATA' ORDER BY c.name").fetchall()}
        head = conn.execute("SELECT max(seq_id) FROM embeddings_queue").fetchone()[0]
    finally:
        _close(conn, db)
    return {"integrity_check": check, "collections": counts,
            "log_position": int(head) if head is not None else None}


def prune(directory: Path, keep: int) -> tuple[Path, ...]:
    """Remove the oldest complete backups in *directory* beyond *keep* (0: keep all)."""
    if keep <= 0:
        return ()
    done = sorted(p for p in directory.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and (p / mf.MANIFEST).is_file())
    old = tuple(done[:-keep])
    for p in old:
        shutil.rmtree(p)
    return old


def remove_abandoned(directory: Path) -> list[Path]:
    """Remove ``<name>.<pid>.partial`` directories whose writer is gone (a backup killed part-way)."""
    removed = []
    for p in directory.glob(f"{PREFIX}*.partial"):
        pid = p.name.rsplit(".", 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        except PermissionError:
            continue  # alive, another user's
    return removed


def take(cfg: Config, to: Path | None = None, reason: str = "manual") -> Result:
    """Write one complete backup under *to* (default ``backup.dir``); prune to ``backup.keep``."""
    if cfg.sqlite is None and (cfg.chroma is None or cfg.chroma.path is None):
        raise FatalError("backup: nothing to back up: configure source.sqlite.path and/or source.chroma.path "
                         "(a Chroma server without its persist directory cannot be copied)")
    directory = to if to is not None else backup_dir(cfg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"backup: cannot create {directory}: {exc.strerror}") from exc
    check_space(cfg, directory)
    now = dt.datetime.now(dt.UTC)
    name = f"{PREFIX}{now:%Y%m%dT%H%M%S%f}Z-{reason}"
    remove_abandoned(directory)
    partial = directory / f"{name}.{os.getpid()}.partial"
    try:
        return _write(cfg, directory, name, partial, now)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise FatalError(f"backup: writing {partial} failed: {exc.strerror or exc} (the partial copy was "
                         "removed; nothing else changed)") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _write(cfg: Config, directory: Path, name: str, partial: Path, now: dt.datetime) -> Result:
    partial.mkdir()
    sqlite_info = chroma_info = None
    if cfg.sqlite is not None:
        (partial / "sqlite").mkdir()
        dst = partial / "sqlite" / cfg.sqlite.path.name
        copy_sqlite(cfg.sqlite.path, dst)
        sqlite_info = {"source": str(cfg.sqlite.path), "file": f"sqlite/{dst.name}", **sqlite_facts(dst)}
    if cfg.chroma is not None and cfg.chroma.path is not None:
        copy_chroma(cfg.chroma.path, partial / "chroma")
        chroma_info = {"source": str(cfg.chroma.path), "dir": "chroma",
                       **chroma_facts(partial / "chroma" / CHROMA_DB)}
    for what, info in (("SQLite", sqlite_info), ("Chroma", chroma_info)):
        if info is not None and info["integrity_check"] != "ok":
            raise SourceError(f"backup: the copy of the {what} database fails PRAGMA integrity_check "
                              f"({info['integrity_check']}); the source may be damaged: check it before "
                              "changing anything")
    manifest = mf.Manifest(created_at=now.isoformat(), files=mf.entries(partial), sqlite=sqlite_info,
                           chroma=chroma_info)
    mf.write(partial, manifest)
    final = directory / name
    os.replace(partial, final)
    mf.fsync_dir(directory)
    pruned = prune(directory, cfg.backup.keep)
    log.info("backup written", path=str(final), files=len(manifest.files), pruned=len(pruned))
    return Result(final, manifest, pruned)
