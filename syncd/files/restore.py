"""`syncd restore BACKUP`: put the app's SQLite file and Chroma directory back as the backup holds them.

Order: read the manifest (a newer format version is refused), check every file's sha256,
refuse while any other process has a store open (the app, `syncd run`, a Chroma server)
or SQLite's write lock cannot be taken, say what will be overwritten — and only then
write: each store is copied next to its place (``*.syncd-restore``), fsynced, and
renamed over it. SQLite's ``-wal`` / ``-shm`` of the old file are removed first (an old
write-ahead log would be replayed into the restored file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from syncd.config import Config
from syncd.errors import FatalError
from syncd.files import manifest as mf
from syncd.files.backup import CHROMA_DB

_LOCK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    source: Path
    """In the backup."""
    dest: Path
    """The store it replaces."""

    def describe(self) -> str:
        size = _size(self.dest)
        now = f"{self.dest} ({size} bytes now)" if self.dest.exists() else f"{self.dest} (does not exist now)"
        return f"{self.what}: will overwrite {now} with {self.source} ({_size(self.source)} bytes)"


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def plan(cfg: Config, root: Path, manifest: mf.Manifest) -> list[Step]:
    steps = []
    if manifest.sqlite is not None:
        if cfg.sqlite is None:
            raise FatalError(f"backup {root} holds a SQLite database but the config has no "
                             "[source.sqlite]; set source.sqlite.path to where it goes")
        steps.append(Step("SQLite", root / str(manifest.sqlite["file"]), cfg.sqlite.path))
    if manifest.chroma is not None:
        if cfg.chroma is None or cfg.chroma.path is None:
            raise FatalError(f"backup {root} holds a Chroma directory but the config has no "
                             "source.chroma.path; set it to where it goes")
        steps.append(Step("Chroma", root / str(manifest.chroma["dir"]), cfg.chroma.path))
    return steps


def openers(path: Path) -> list[int]:
    """Processes other than this one that have *path* open (from /proc)."""
    target = os.path.realpath(path)
    found: list[int] = []
    if not Path("/proc").is_dir():  # then only the write lock tells
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(entry / "fd" / fd) == target for fd in os.listdir(entry / "fd")):
                found.append(int(entry.name))
    return sorted(found)


def _names(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})")
        except OSError:
            out.append(str(pid))
    return ", ".join(out)


def check_write_lock(db: Path) -> None:
    """Take and release SQLite's write lock on *db*; refuse when another connection holds a lock.
    The old write-ahead log is folded into the old file on the way (its state is then self-contained)."""
    if not db.exists():
        return
    conn = sqlite3.connect(db, timeout=_LOCK_TIMEOUT, isolation_level=None)
    try:
        try:
            conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            raise FatalError(f"cannot take the write lock on {db} ({exc}): the app or syncd is "
                             "using it; stop them and run restore again (nothing was changed)") from exc
        conn.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def check_unused(steps: list[Step]) -> None:
    for step in steps:
        files = [step.dest] if step.what == "SQLite" else [step.dest / CHROMA_DB]
        if step.what == "SQLite":
            files += [Path(f"{step.dest}-wal")]
        for f in files:
            pids = openers(f) if f.exists() else []
            if pids:
                raise FatalError(f"{f} is open in process {_names(pids)} (the app, `syncd run` or a "
                                 "Chroma server); stop it and run restore again (nothing was changed)")


def _fsync_tree(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _put_sqlite(step: Step) -> None:
    tmp = step.dest.with_name(step.dest.name + ".syncd-restore")
    shutil.copyfile(step.source, tmp)
    _fsync_tree(tmp)
    check_write_lock(step.dest)
    for side in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{step.dest}{side}")
    os.replace(tmp, step.dest)
    mf.fsync_dir(step.dest.parent)


def _put_dir(step: Step) -> None:
    tmp = step.dest.with_name(step.dest.name + ".syncd-restore")
    old = step.dest.with_name(step.dest.name + ".syncd-replaced")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    shutil.copytree(step.source, tmp)
    _fsync_tree(tmp)
    if step.dest.exists():
        os.replace(step.dest, old)
    os.replace(tmp, step.dest)
    mf.fsync_dir(step.dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def restore(cfg: Config, root: Path, *, dry_run: bool) -> list[str]:
    """Check, then (unless *dry_run*) put the stores back; returns the lines to print."""
    manifest = mf.read(root)
    mf.check_files(root, manifest)
    steps = plan(cfg, root, manifest)
    check_unused(steps)
    for step in steps:
        if step.what == "SQLite":
            check_write_lock(step.dest)
    lines = [f"backup {root} (format {manifest.version}, taken {manifest.created_at}): "
             f"{len(manifest.files)} files, checksums ok"]
    lines += [s.describe() for s in steps]
    stores = [i for i in (manifest.sqlite, manifest.chroma) if i is not None]
    for info, step in zip(stores, steps, strict=True):
        if str(info.get("source")) != str(step.dest):
            lines.append(f"{step.what}: the backup was taken from {info.get('source')}, not {step.dest}")
    if dry_run:
        return [*lines, "dry run: nothing was changed"]
    for step in steps:
        if step.what == "SQLite":
            _put_sqlite(step)
        else:
            _put_dir(step)
        lines.append(f"{step.what}: restored {step.dest}")
    positions = [p for p in ((manifest.sqlite or {}).get("capture_position"),
                             (manifest.chroma or {}).get("log_position")) if p is not None]
    if positions:
        lines.append("note: syncd's checkpoints in PostgreSQL may be past this backup; before `syncd run`, "
                     "copy again from scratch (docs/files.md, \"After a restore\")")
    return lines
