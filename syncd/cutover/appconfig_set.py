"""Several app config files flipped as one step: every file or none.

An app may read more than one config file (Signal Hub: a YAML file and a ``.env``). Cutover
and rollback change them in three stages (docs/cutover.md, "Several app config files"):

1. :func:`stage`: for every file, check it, render the new text, write the backup and the new
   text to a temporary file beside it (fsynced, the original's mode and owner). A file that
   cannot be read, parsed or written, or a key found in none of the files, raises
   :class:`AppConfigError` naming the file and key; every temporary file and backup written so
   far is removed, and no file has changed.
2. The caller records :func:`intent` (which files, their old and new SHA-256, the temporary
   files) in syncd's state before any rename.
3. :func:`commit`: checks that no file changed since it was staged, then renames each
   temporary file over its original and fsyncs the directories.

A crash between two renames leaves some files flipped. Running the flip again (``--resume``)
or the opposite flip (``syncd rollback``) stages from the files as they are: a file that
already holds the wanted values is left alone, the others are flipped; :func:`forget` removes
the temporary files the interrupted run left behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.cutover.appconfig import (
    _backup,
    _duplicate_notes,
    _fsync_dir,
    _keep_owner,
    _mask,
    _unlink,
    check_writable,
    read_text_values,
    read_values,
    render,
)
from syncd.cutover.appconfig_common import AppConfigError

__all__ = ["Staged", "assign", "commit", "discard", "forget", "intent", "stage"]


@dataclass(frozen=True)
class Staged:
    """One file of a flip, staged: *tmp* holds its new text (None: it already has the values)."""

    path: Path
    real: Path
    tmp: Path | None
    backup: Path | None
    old_sum: str
    new_sum: str
    changed: dict[str, tuple[str | None, str]]
    notes: tuple[str, ...] = ()


def _sum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assign(files: Sequence[tuple[Path, str]], values: Mapping[str, str]
           ) -> list[tuple[Path, str, dict[str, str]]]:
    """Which keys go to which file. One file takes every key (an absent key is added, as
    :func:`~syncd.cutover.appconfig.flip` does). With several, a key goes to every file that
    already has it; a key none of them has is refused, naming the key and the files."""
    if len(files) == 1:
        path, fmt = files[0]
        return [(path, fmt, dict(values))]
    out: list[tuple[Path, str, dict[str, str]]] = []
    homeless = set(values)
    for path, fmt in files:
        check_writable(path, fmt)
        present = read_values(path, fmt, values)
        mine = {k: v for k, v in values.items() if present[k] is not None}
        homeless -= set(mine)
        out.append((path, fmt, mine))
    if homeless:
        key = sorted(homeless)[0]
        raise AppConfigError(f"cutover key {key} is in none of the app config files "
                             f"({', '.join(str(p) for p, _ in files)}); with several files a key is written "
                             "where the app has it — add it to the file the app reads it from")
    return out


def _stage_one(path: Path, fmt: str, values: Mapping[str, str], *, backup: bool, now: dt.datetime,
               written: list[Path]) -> Staged:
    check_writable(path, fmt)
    real = path.resolve()
    st = real.stat()
    data = real.read_bytes()
    text = data.decode("utf-8")
    old = read_text_values(text, fmt, values.keys(), where=str(real))
    new_text = render(text, fmt, values, where=str(real))
    changed = {k: (_mask(k, old[k]), _mask(k, v) or "") for k, v in values.items() if old[k] != v}
    notes = _duplicate_notes(text, values, real) if fmt == "env" else []
    new = new_text.encode("utf-8")
    if new == data:
        return Staged(path, real, None, None, _sum(data), _sum(data), {}, tuple(notes))
    mode = st.st_mode & 0o7777
    backup_path = None
    if backup:
        backup_path = _backup(real, data, mode, now)
        written.append(backup_path)
    tmp = real.with_name(f".{real.name}.syncd-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written.append(tmp)
    try:
        os.write(fd, new)
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            notes += _keep_owner(fd, st)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Staged(path, real, tmp, backup_path, _sum(data), _sum(new), changed, tuple(notes))


def stage(files: Sequence[tuple[Path, str]], values: Mapping[str, str], *, backup: bool = True
          ) -> list[Staged]:
    """Stage every file (see the module's docstring); nothing is renamed. On any failure every
    file written so far is removed and :class:`AppConfigError` names the file."""
    written: list[Path] = []
    staged: list[Staged] = []
    now = dt.datetime.now(dt.UTC)
    current: Path | None = None
    try:
        for path, fmt, mine in assign(files, values):
            current = path
            staged.append(_stage_one(path, fmt, mine, backup=backup, now=now, written=written))
    except OSError as exc:
        _remove(written)
        raise AppConfigError(f"could not write the new {current} ({exc.strerror or exc}); no app config "
                             "file was changed — fix the permissions or the disk and run the command "
                             "again") from None
    except BaseException:
        _remove(written)
        raise
    return staged


def intent(staged: Sequence[Staged]) -> list[dict[str, Any]]:
    """What :func:`commit` is about to do, as recorded in syncd's state before the renames."""
    return [{"path": str(s.real), "tmp": str(s.tmp) if s.tmp else None, "old": s.old_sum, "new": s.new_sum,
             "backup": str(s.backup) if s.backup else None} for s in staged]


def commit(staged: Sequence[Staged], renamed: Callable[[int], None] | None = None) -> None:
    """Rename every staged file over its original. *renamed* is called with 1, 2, … after each
    rename (crash tests). Refuses, renaming nothing, when a file changed since it was staged."""
    for s in staged:
        if s.tmp is not None and _sum(s.real.read_bytes()) != s.old_sum:
            discard(staged)
            raise AppConfigError(f"{s.real} changed while syncd was rewriting it; no app config file was "
                                 "replaced — run the command again")
    n = 0
    for s in staged:
        if s.tmp is None:
            continue
        try:
            os.replace(s.tmp, s.real)
        except OSError as exc:
            raise AppConfigError(f"could not replace {s.real} ({exc.strerror or exc}) after {n} of the app "
                                 "config files were replaced; run the command again with --resume (or "
                                 "`syncd rollback`) to bring every file to the same side") from None
        _fsync_dir(s.real.parent)
        n += 1
        if renamed:
            renamed(n)


def discard(staged: Sequence[Staged]) -> None:
    """Remove the temporary files and backups of a flip that will not happen."""
    _remove([p for s in staged for p in (s.tmp, s.backup) if p is not None])


def forget(recorded: object) -> list[str]:
    """Remove the temporary files an interrupted flip recorded (:func:`intent`) and left behind;
    one note per file saying on which side it stands."""
    notes: list[str] = []
    if not isinstance(recorded, list):
        return notes
    for item in recorded:
        if not isinstance(item, dict) or not item.get("tmp"):
            continue
        _unlink(Path(str(item["tmp"])))
        real = Path(str(item["path"]))
        try:
            now = _sum(real.read_bytes())
        except OSError:
            continue
        side = ("flipped" if now == item.get("new") else "not flipped" if now == item.get("old")
                else "changed since")
        notes.append(f"{real}: {side}")
    return notes


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        _unlink(p)
