"""The application's config file, as ``syncd cutover`` / ``syncd rollback`` flip it.

Three formats, each edited in place so that everything but the changed values stays
byte for byte as it was (comments, blank lines, key order, quoting, line endings):

- ``env`` (``.env``, ``.env.production``): ``KEY=value`` lines, optionally ``export KEY=value``,
  values plain, ``"double"``, ``'single'`` or ```backtick``` quoted, an inline ``# comment``
  after a plain value needs whitespace before the ``#``. A key that appears more than once:
  dotenv loaders (Node's ``dotenv``, ``python-dotenv``) let the last one win, so the last
  one is read and changed; the others are left as they are (a note in
  :attr:`FlipResult.notes` says so). A key the file lacks is appended as ``KEY=value``.
- ``yaml``: keys are dotted paths (``storage.vector_store``); only a scalar on one line
  is replaced (block scalars and multi-line values are refused). A missing key is created
  under its parent mapping, a missing parent as a new block under the nearest existing one.
- ``toml``: dotted paths as well, edited with tomlkit, which keeps the rest of the document.

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
import json
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.items
import yaml

from syncd.errors import ConfigError

FORMATS = ("env", "yaml", "toml")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
BACKUP_INFIX = ".syncd-backup-"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENV_LINE = re.compile(r"(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)"
                       r"(?P<eq>[ \t]*=[ \t]*)(?P<rest>.*)")
_ENV_PLAIN_SAFE = re.compile(r"[^\s#'\"`\\$]*")
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


class AppConfigError(ConfigError):
    """The app's config file cannot be read, parsed or replaced; the message names the file."""


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


# --- env ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EnvValue:
    start: int  # offset of the value (with its quotes) in the text
    end: int
    quote: str  # "", '"', "'" or "`"
    value: str


def _env_value(rest: str, base: int, where: str) -> _EnvValue:
    """Parse the value part of a ``KEY=`` line (*rest*, starting at text offset *base*)."""
    if rest[:1] in ("'", '"', "`"):
        quote = rest[0]
        i = 1
        chars: list[str] = []
        while i < len(rest):
            ch = rest[i]
            if quote == '"' and ch == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
                continue
            if ch == quote:
                return _EnvValue(base, base + i + 1, quote, "".join(chars))
            chars.append(ch)
            i += 1
        raise AppConfigError(f"{where}: the {quote} quote is not closed; multi-line values are not "
                             "supported — close the quote on the same line")
    m = re.search(r"[ \t]+#|[ \t\r]*$", rest)
    end = m.start() if m else len(rest)
    return _EnvValue(base, base + end, "", rest[:end])


def _env_entries(text: str, path: str) -> dict[str, list[_EnvValue]]:
    entries: dict[str, list[_EnvValue]] = {}
    offset = 0
    for number, line in enumerate(_LINES.findall(text), start=1):
        body = line.rstrip("\r\n")
        m = _ENV_LINE.fullmatch(body)
        if m and not body.lstrip().startswith("#"):
            where = f"{path} line {number} ({m['key']})"
            entries.setdefault(m["key"], []).append(_env_value(m["rest"], offset + m.start("rest"), where))
        offset += len(line)
    return entries


def _env_quoted(value: str, quote: str) -> str:
    if quote == "" and _ENV_PLAIN_SAFE.fullmatch(value):
        return value
    if quote in ("'", "`") and quote not in value:
        return f"{quote}{value}{quote}"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render_env(text: str, values: Mapping[str, str], path: str) -> str:
    entries = _env_entries(text, path)
    edits: list[tuple[int, int, str]] = []
    appended: list[str] = []
    for key, value in values.items():
        if not _ENV_KEY.fullmatch(key):
            raise AppConfigError(f"cutover key {key!r} for {path}: not a valid .env variable name "
                                 "(letters, digits, _ . -, not starting with a digit)")
        if "\n" in value or "\r" in value:
            raise AppConfigError(f"cutover value of {key} for {path} has a line break; .env values "
                                 "written by syncd must fit on one line")
        found = entries.get(key)
        if found:
            last = found[-1]
            if last.value != value:
                edits.append((last.start, last.end, _env_quoted(value, last.quote)))
        else:
            appended.append(f"{key}={_env_quoted(value, '')}")
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    if appended:
        newline = "\r\n" if "\r\n" in text else "\n"
        if text and not text.endswith("\n"):
            text += newline
        text += newline.join(appended) + newline
    return text


# --- yaml --------------------------------------------------------------------------------------


def _yaml_root(text: str, path: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise AppConfigError(f"{path} is not valid YAML ({_one_line(exc)}); fix the file") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _split_path(key: str, path: str) -> list[str]:
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise AppConfigError(f"cutover key {key!r} for {path}: expected a dotted path such as "
                             "storage.vector_store (no empty parts)")
    return parts


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _yaml_find(root: yaml.Node | None, parts: list[str], key: str, path: str
               ) -> tuple[yaml.Node | None, int, yaml.MappingNode | None]:
    """Walk *parts*: (the value node or None, how many parts exist, the mapping that holds
    the deepest existing part — where the next part would go). A part that exists but is
    not a mapping while deeper parts follow is an error."""
    node, parent = root, None
    for depth, part in enumerate(parts):
        if depth == 0 and (node is None or _is_null(node)):
            return None, 0, None
        if not isinstance(node, yaml.MappingNode):
            raise AppConfigError(f"{path}: cannot reach {key}: {'.'.join(parts[:depth]) or 'the document'} "
                                 "is not a mapping; fix the file or the cutover key")
        parent = node
        match = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
        if not match:
            return None, depth, parent
        node = match[-1]
    return node, len(parts), parent


def _yaml_scalar(node: yaml.Node, key: str, path: str) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode):
        kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
        raise AppConfigError(f"{path}: {key} holds a {kind}, not a value; point cutover at the scalar key "
                             "below it")
    return node


def _yaml_plain_ok(value: str) -> bool:
    if value != value.strip() or not value:
        return False
    try:
        loaded = yaml.safe_load(f"k: {value}\n")
    except yaml.YAMLError:
        return False
    return isinstance(loaded, dict) and loaded.get("k") == value


def _yaml_typed_ok(old: str, value: str) -> bool:
    """A plain non-string value (5432, true) may be replaced by another of the same kind."""
    try:
        before = yaml.safe_load(f"k: {old}\n")["k"]
        after = yaml.safe_load(f"k: {value}\n")["k"]
    except (yaml.YAMLError, TypeError, KeyError):
        return False
    return not isinstance(before, str) and type(before) is type(after) and value == value.strip()


def _yaml_quoted(value: str, old: yaml.ScalarNode) -> str:
    if old.style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if old.style in ("", None) and (_yaml_plain_ok(value) or _yaml_typed_ok(str(old.value), value)):
        return value
    return json.dumps(value, ensure_ascii=False)


def _indent_step(text: str) -> int:
    indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()}
    positive = sorted(i for i in indents if i > 0)
    return positive[0] if positive else 2


def _yaml_insert_line(lines: list[str], mapping: yaml.MappingNode) -> tuple[int, int]:
    """(index of the line after *mapping*'s last entry, the column of its keys)."""
    last_key = mapping.value[-1][0]
    column = mapping.value[0][0].start_mark.column
    index = last_key.start_mark.line
    last_content = index
    for i in range(index + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(lines[i]) - len(lines[i].lstrip(" ")) > column:
            last_content = i
            continue
        break
    return last_content + 1, column


def _render_yaml(text: str, values: Mapping[str, str], path: str) -> str:
    for key, value in values.items():
        parts = _split_path(key, path)
        root = _yaml_root(text, path)
        found, depth, parent = _yaml_find(root, parts, key, path)
        if found is None:
            text = _yaml_create(text, parts[depth:], parent, value, key, path)
            continue
        node = _yaml_scalar(found, key, path)
        if node.style in ("|", ">") or node.start_mark.line != node.end_mark.line:
            raise AppConfigError(f"{path} line {node.start_mark.line + 1}: {key} is a multi-line value; "
                                 "syncd only replaces one-line values — make it one line")
        start, end = node.start_mark.index, node.end_mark.index
        if node.value == value and (node.style or text[start:end] == value):
            continue
        text = text[:start] + _yaml_quoted(value, node) + text[end:]
    return text


def _yaml_create(text: str, missing: list[str], parent: yaml.MappingNode | None,
                 value: str, key: str, path: str) -> str:
    """Add *missing* (the parts of *key* not in the file) under *parent* (None: the root)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    step = _indent_step(text)
    lines = _LINES.findall(text)
    if parent is not None and (parent.flow_style or not parent.value):
        raise AppConfigError(f"{path} line {parent.start_mark.line + 1}: the mapping that would hold {key} "
                             "is written in flow style ({...}); add the key by hand")
    if parent is None:  # an empty document
        at, column = len(lines), 0
    else:
        at, column = _yaml_insert_line(lines, parent)
    block = []
    for i, part in enumerate(missing):
        indent = " " * (column + i * step)
        name = part if _yaml_plain_ok(part) else json.dumps(part, ensure_ascii=False)
        tail = f" {_yaml_quoted(value, yaml.ScalarNode('', ''))}" if i == len(missing) - 1 else ""
        block.append(f"{indent}{name}:{tail}{newline}")
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += newline
    lines[at:at] = block
    return "".join(lines)


def _read_yaml(text: str, keys: Iterable[str], path: str) -> dict[str, str | None]:
    root = _yaml_root(text, path)
    out: dict[str, str | None] = {}
    for key in keys:
        node, _, _ = _yaml_find(root, _split_path(key, path), key, path)
        if node is None:
            out[key] = None
            continue
        scalar = _yaml_scalar(node, key, path)
        out[key] = str(scalar.value)
    return out


# --- toml --------------------------------------------------------------------------------------


def _toml_doc(text: str, path: str) -> tomlkit.TOMLDocument:
    try:
        tomllib.loads(text)  # the strict parser: tomlkit accepts a few invalid documents
        return tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, tomlkit.exceptions.TOMLKitError) as exc:
        raise AppConfigError(f"{path} is not valid TOML ({_one_line(exc)}); fix the file") from None


def _toml_text(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, dict | list):
        raise TypeError
    return str(item)


def _toml_new(old: Any, value: str) -> Any:
    if isinstance(old, tomlkit.items.String):
        literal = old.type == tomlkit.items.StringType.SLL and "'" not in value and "\n" not in value
        return tomlkit.string(value, literal=literal)
    if isinstance(old, bool | int | float) and not isinstance(old, tomlkit.items.String):
        try:
            parsed = tomllib.loads(f"k = {value}")["k"]
        except tomllib.TOMLDecodeError:
            parsed = None
        if parsed is not None and type(parsed) is type(old.unwrap() if hasattr(old, "unwrap") else old):
            return tomlkit.item(parsed)
    return value


def _render_toml(text: str, values: Mapping[str, str], path: str) -> str:
    doc = _toml_doc(text, path)
    for key, value in values.items():
        parts = _split_path(key, path)
        container: Any = doc
        for i, part in enumerate(parts[:-1]):
            if part not in container:
                container[part] = tomlkit.table()
            container = container[part]
            if not isinstance(container, dict):
                raise AppConfigError(f"{path}: cannot set {key}: {'.'.join(parts[: i + 1])} is not a table; "
                                     "fix the file or the cutover key")
        leaf = parts[-1]
        old = container.get(leaf)
        if old is not None:
            try:
                if _toml_text(old) == value:
                    continue
            except TypeError:
                raise AppConfigError(f"{path}: {key} holds a table or array, not a value; point cutover at "
                                     "the key that holds the value") from None
        container[leaf] = _toml_new(old, value) if old is not None else value
    return tomlkit.dumps(doc)


def _read_toml(text: str, keys: Iterable[str], path: str) -> dict[str, str | None]:
    doc = _toml_doc(text, path)
    out: dict[str, str | None] = {}
    for key in keys:
        node: Any = doc
        for part in _split_path(key, path):
            node = node.get(part) if isinstance(node, dict) else None
        try:
            out[key] = None if node is None else _toml_text(node)
        except TypeError:
            raise AppConfigError(f"{path}: {key} holds a table or array, not a value; point cutover at "
                                 "the key that holds the value") from None
    return out


# --- the pure API ------------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise AppConfigError(f"app config format {fmt!r}: expected one of {', '.join(FORMATS)}")


def read_text_values(text: str, fmt: str, keys: Iterable[str], *, where: str = "app config"
                     ) -> dict[str, str | None]:
    """The current value of each key in *text* (None: absent)."""
    _check_format(fmt)
    if fmt == "env":
        entries = _env_entries(text, where)
        return {k: (entries[k][-1].value if k in entries else None) for k in keys}
    if fmt == "yaml":
        return _read_yaml(text, keys, where)
    return _read_toml(text, keys, where)


def render(text: str, fmt: str, values: Mapping[str, str], *, where: str = "app config") -> str:
    """*text* with each key of *values* set; everything else unchanged."""
    _check_format(fmt)
    for key, value in values.items():
        if not isinstance(value, str):
            raise AppConfigError(f"cutover value of {key} for {where} is a {type(value).__name__}; "
                                 "write it as a string in syncd's config")
    if fmt == "env":
        return _render_env(text, values, where)
    if fmt == "yaml":
        return _render_yaml(text, values, where)
    return _render_toml(text, values, where)


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
        _env_entries(text, str(real))


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
    entries = _env_entries(text, str(real))
    return [f"{key} appears {len(entries[key])} times in {real}; the last one (the one dotenv uses) "
            "was changed" for key in values if len(entries.get(key, ())) > 1]


def _mask(key: str, value: str | None) -> str | None:
    return "***" if value is not None and is_secret(key) else value


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
