"""The application's config file, as ``syncd cutover`` / ``syncd rollback`` flip it.

Three formats, each edited in place so that everything but the changed values stays
byte for byte as it was (comments, blank lines, key order, quoting, line endings):

- ``env`` (``.env``, ``.env.production``): ``KEY=value`` lines; a key that appears more than
  once is read and changed where dotenv reads it, the last one (:mod:`syncd.cutover.appconfig_env`).
- ``yaml``: keys are dotted paths (``storage.vector_store``); only a scalar on one line
  is replaced (:mod:`syncd.cutover.appconfig_yaml`).
- ``toml``: dotted paths as well, edited with tomlkit (:mod:`syncd.cutover.appconfig_toml`).

A value keeps the quoting of the value it replaces; a plain value that would read back
differently (``true``, ``a # b``, leading spaces) is quoted. Values of keys whose name
contains PASSWORD, SECRET, TOKEN or KEY never appear in messages nor in
:attr:`FlipResult.changed` (shown as ``***``).

:func:`flip` writes the new text to a temporary file in the same directory, fsyncs it,
gives it the original's mode (and owner and group when permitted), renames it over the
original and fsyncs the directory: a crash leaves either the old file or the new one.
The previous file is first copied to ``NAME.syncd-backup-YYYYMMDDTHHMMSSZ`` next to it.
A symbolic link is followed: the file it points to is replaced, the link stays.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from syncd.cutover.appconfig_common import AppConfigError
from syncd.cutover.appconfig_env import env_entries, render_env
from syncd.cutover.appconfig_toml import read_toml, render_toml
from syncd.cutover.appconfig_yaml import read_yaml, render_yaml

FORMATS = ("env", "yaml", "toml")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
BACKUP_INFIX = ".syncd-backup-"

__all__ = ["BACKUP_INFIX", "FORMATS", "SECRET_WORDS", "AppConfigError", "FlipResult", "check_writable",
           "detect_format", "flip", "is_secret", "read_text_values", "read_values", "render", "shown"]


@dataclass(frozen=True)
class FlipResult:
    """What :func:`flip` did: ``changed`` maps each key it changed to (old, new); old is None
    when the key was added. Empty ``changed`` and no backup: the file already had the values."""

    path: Path
    backup: Path | None
    changed: dict[str, tuple[str | None, str]]
    notes: tuple[str, ...] = ()


def is_secret(key: str) -> bool:
    upper = key.upper()
    return any(word in upper for word in SECRET_WORDS)


def shown(key: str, value: str | None) -> str:
    """*value* as it may appear in a message: masked for secret keys."""
    if value is None:
        return "(absent)"
    return "***" if is_secret(key) else repr(value)


def detect_format(path: Path, declared: str | None) -> str:
    if declared is not None:
        if declared not in FORMATS:
            raise AppConfigError(f"cutover.format = {declared!r} for {path}: expected one of "
                                 f"{', '.join(FORMATS)}")
        return declared
    name = path.name.lower()
    if name == ".env" or name.endswith(".env") or name.startswith(".env."):
        return "env"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if name.endswith(".toml"):
        return "toml"
    raise AppConfigError(f"cutover.app_config {path}: cannot tell the format from the file name; set "
                         f"cutover.format to one of {', '.join(FORMATS)}")


# --- the pure API ------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise AppConfigError(f"app config format {fmt!r}: expected one of {', '.join(FORMATS)}")


def read_text_values(text: str, fmt: str, keys: Iterable[str], *, where: str = "app config"
                     ) -> dict[str, str | None]:
    """The current value of each key in *text* (None: absent)."""
    _check_format(fmt)
    if fmt == "env":
        entries = env_entries(text, where)
        return {k: (entries[k][-1].value if k in entries else None) for k in keys}
    if fmt == "yaml":
        return read_yaml(text, keys, where)
    return read_toml(text, keys, where)


def render(text: str, fmt: str, values: Mapping[str, str], *, where: str = "app config") -> str:
    """*text* with each key of *values* set; everything else unchanged."""
    _check_format(fmt)
    for key, value in values.items():
        if not isinstance(value, str):
            raise AppConfigError(f"cutover value of {key} for {where} is a {type(value).__name__}; "
                                 "write it as a string in syncd's config")
    if fmt == "env":
        return render_env(text, values, where)
    if fmt == "yaml":
        return render_yaml(text, values, where)
    return render_toml(text, values, where)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AppConfigError(f"{path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    except FileNotFoundError:
        raise AppConfigError(f"{path} does not exist; set cutover.app_config to the app's config "
                             "file") from None
    except PermissionError:
        raise AppConfigError(f"{path} is not readable by uid {os.geteuid()}; give syncd's user read access "
                             "to it") from None
    except IsADirectoryError:
        raise AppConfigError(f"{path} is a directory; set cutover.app_config to the config file "
                             "in it") from None


def read_values(path: Path, fmt: str, keys: Iterable[str]) -> dict[str, str | None]:
    return read_text_values(_read_text(path), fmt, keys, where=str(path))


# --- the file ----------------------------------------------------------------------------------


def check_writable(path: Path, fmt: str | None = None) -> None:
    """Raise :class:`AppConfigError` unless :func:`flip` can replace *path*. *fmt* (or the
    format the file name implies) is used to check that the file parses."""
    if not path.exists() and not path.is_symlink():
        raise AppConfigError(f"{path} does not exist; set cutover.app_config to the app's config file")
    real = path.resolve()
    if not real.exists():
        raise AppConfigError(f"{path} is a symbolic link to {real}, which does not exist; fix the link")
    if not real.is_file():
        raise AppConfigError(f"{real} is not a regular file; set cutover.app_config to the config file")
    if not os.access(real, os.R_OK):
        raise AppConfigError(f"{real} is not readable by uid {os.geteuid()}; give syncd's user read access")
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise AppConfigError(f"directory {real.parent} is not writable by uid {os.geteuid()}; syncd replaces "
                             f"{real.name} by writing a new file next to it and renaming it — give syncd's "
                             "user write access to the directory")
    text = _read_text(real)
    if fmt is None:
        try:
            fmt = detect_format(path, None)
        except AppConfigError:
            return
    read_text_values(text, fmt, (), where=str(real))
    if fmt == "env":
        env_entries(text, str(real))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)  # small files: one write
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup(real: Path, data: bytes, mode: int, now: dt.datetime) -> Path:
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = real.with_name(f"{real.name}{BACKUP_INFIX}{stamp}")
    candidate, n = base, 0
    while True:
        try:
            _write_new(candidate, data, mode)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


def _keep_owner(fd: int, st: os.stat_result) -> list[str]:
    """Give the new file the old one's owner and group, or as much of that as permitted."""
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        return []
    except PermissionError:
        pass
    try:
        os.fchown(fd, -1, st.st_gid)
    except PermissionError:
        return [f"the new file could not be given owner uid {st.st_uid} / gid {st.st_gid}; it belongs to "
                f"uid {os.geteuid()} with mode {st.st_mode & 0o7777:o}"]
    return [f"the new file could not be given owner uid {st.st_uid}; it belongs to uid {os.geteuid()}, "
            f"group {st.st_gid}"]


def flip(path: Path, fmt: str, values: Mapping[str, str], *, backup: bool = True,
         hook: Callable[[str], None] | None = None) -> FlipResult:
    """Set *values* in the config file at *path*, atomically. *hook*, when given, is called with
    ``"backup-written"``, ``"temp-written"`` and ``"renamed"`` as each step completes (crash tests)."""
    check_writable(path, fmt)
    real = path.resolve()
    st = real.stat()
    data = real.read_bytes()
    text = data.decode("utf-8")
    old = read_text_values(text, fmt, values.keys(), where=str(real))
    new_text = render(text, fmt, values, where=str(real))
    changed = {k: (_mask(k, old[k]), _mask(k, v) or "") for k, v in values.items() if old[k] != v}
    notes = _duplicate_notes(text, values, real) if fmt == "env" else []
    if new_text == text:
        return FlipResult(path, None, {}, tuple(notes))
    mode = st.st_mode & 0o7777
    tmp = real.with_name(f".{real.name}.syncd-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    backup_path = None
    try:
        if backup:
            backup_path = _backup(real, data, mode, dt.datetime.now(dt.UTC))
        if hook:
            hook("backup-written")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, new_text.encode("utf-8"))
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                notes += _keep_owner(fd, st)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if hook:
            hook("temp-written")
        now = real.stat()
        if (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
            raise AppConfigError(f"{real} changed while syncd was rewriting it; nothing was replaced — "
                                 "run the command again")
        os.replace(tmp, real)
    except OSError as exc:
        _unlink(tmp)
        raise AppConfigError(f"could not replace {real} ({exc.strerror or exc}); the file is unchanged — "
                             "fix the permissions or the disk and run the command again") from None
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(real.parent)
    if hook:
        hook("renamed")
    return FlipResult(path, backup_path, changed, tuple(notes))


def _duplicate_notes(text: str, values: Mapping[str, str], real: Path) -> list[str]:
    entries = env_entries(text, str(real))
    return [f"{key} appears {len(entries[key])} times in {real}; the last one (the one dotenv uses) "
            "was changed" for key in values if len(entries.get(key, ())) > 1]


def _mask(key: str, value: str | None) -> str | None:
    return "***" if value is not None and is_secret(key) else value


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
