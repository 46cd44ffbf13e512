"""The manifest of a backup: what it holds, how big, its checksums, and the format version.

``manifest.json`` sits at the top of a backup directory. ``files`` lists every file of
the backup (path relative to the backup directory, size, sha256); a restore checks all of
them before it overwrites anything. A backup written by a newer syncd (a higher
``format``) is refused: this syncd cannot know what it would leave out. docs/files.md
describes the format.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.errors import FatalError

FORMAT = "syncd-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    """Relative to the backup directory, ``/``-separated."""
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    created_at: str
    files: tuple[FileEntry, ...]
    sqlite: dict[str, Any] | None = None
    """``source`` (the app's file), ``file`` (in the backup), ``integrity_check``, ``tables``
    (row counts), ``capture_position`` (the changelog head, when capture is installed)."""
    chroma: dict[str, Any] | None = None
    """``source`` (the persist directory), ``dir`` (in the backup), ``integrity_check``,
    ``collections`` (name -> item count), ``log_position`` (the log's last seq_id)."""
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "created_at": self.created_at,
                "sqlite": self.sqlite, "chroma": self.chroma,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
                **self.extra}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def entries(root: Path) -> tuple[FileEntry, ...]:
    """Every regular file under *root* except the manifest, sorted, with size and sha256."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out.append(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)))
    return tuple(out)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` in *root*: tmp -> fsync -> rename."""
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    fsync_dir(root)


def load(root: Path, *, fmt: str, newest: int, what: str, command: str,
         then: str) -> tuple[dict[str, Any], int]:
    """The JSON manifest of the *what* (``backup``, ``export bundle``) at *root*, with its format
    version: refused with one line when missing, damaged, of another format, or newer than
    *newest* (*command* wrote it; *then* is what the operator does with it)."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FatalError(f"{root}: not a syncd {what} (no {MANIFEST}); pass a directory "
                         f"`syncd {command}` wrote") from exc
    except (OSError, ValueError) as exc:
        raise FatalError(f"{path}: unreadable or not JSON ({exc}); the {what} is damaged") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise FatalError(f"{path}: not a syncd {what} manifest (format is not {fmt!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FatalError(f"{path}: version {version!r} is not a format version")
    if version > newest:
        raise FatalError(f"{root}: {what} format version {version} is newer than this syncd reads "
                         f"({newest}); {then} it with the syncd version that wrote it or newer")
    return data, version


def read(root: Path) -> Manifest:
    """Read and check the manifest of the backup at *root* (refuses a newer format version)."""
    path = root / MANIFEST
    data, version = load(root, fmt=FORMAT, newest=FORMAT_VERSION, what="backup", command="backup",
                         then="restore")
    try:
        files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FatalError(f"{path}: the files list is malformed ({exc}); the backup is damaged") from exc
    for f in files:
        if f.path.startswith("/") or ".." in f.path.split("/"):
            raise FatalError(f"{path}: file {f.path!r} is outside the backup; refusing it")
    return Manifest(created_at=str(data.get("created_at")), files=files, sqlite=data.get("sqlite"),
                    chroma=data.get("chroma"), version=version)


def check_files(root: Path, manifest: Manifest) -> None:
    """Every listed file is there with its size and sha256, and nothing else (FatalError names the first)."""
    listed = {f.path for f in manifest.files}
    for f in manifest.files:
        p = root / f.path
        if not p.is_file():
            raise FatalError(f"backup {root}: {f.path} is missing; nothing was restored")
        if p.stat().st_size != f.size or sha256_file(p) != f.sha256:
            raise FatalError(f"backup {root}: {f.path} does not match its sha256 in {MANIFEST} "
                             "(corrupted or changed); nothing was restored")
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.name != MANIFEST and rel not in listed:
            raise FatalError(f"backup {root}: {rel} is not listed in {MANIFEST}; nothing was restored")
