"""TOML config -> frozen, validated objects. Parsed once, passed down.

``${NAME}`` is replaced by the environment variable NAME and ``${file:/path}``
by the stripped contents of that file (systemd ``LoadCredential=``), so that no
password has to be written in the config. Every error names the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from syncd.config.dsn import normalize as normalize_dsn
from syncd.config.settings import (
    Backup,
    ChromaConfig,
    CollectionTarget,
    Config,
    Cutover,
    Health,
    SqliteConfig,
    StreamOptions,
    Target,
)
from syncd.errors import ConfigError

_VAR = re.compile(r"\$\{([^}]+)\}")
_NO_PK = ("rowid", "refuse")


def interpolate(value: str, key: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("file:"):
            file = Path(name[5:])
            try:
                return file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {file}: {exc.strerror}") from exc
        if name not in env:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return env[name]

    return _VAR.sub(sub, value)


class _Reader:
    """Typed access to one TOML table, with errors that name the full key."""

    def __init__(self, data: Mapping[str, Any], prefix: str, env: Mapping[str, str]) -> None:
        self.data, self.prefix, self.env = data, prefix, env
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            want = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.key(name)}: expected {want}, got {value!r}")
        if isinstance(value, str):
            value = interpolate(value, self.key(name), self.env)
        return value

    def require(self, name: str, kind: type) -> Any:
        if name not in self.data:
            raise ConfigError(f"{self.key(name)}: required key is missing")
        return self.get(name, kind)

    def strings(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name, list)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings")
        return tuple(value)

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value is not None and value <= 0:
            raise ConfigError(f"{self.key(name)}: must be > 0, got {value}")
        return value

    def table(self, name: str) -> _Reader:
        value = self.get(name, dict, {})
        return _Reader(value, self.key(name), self.env)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(self.seen), n=1)
            hint = f" (did you mean {self.key(close[0])}?)" if close else \
                f"; known here: {', '.join(sorted(self.seen))}" if self.seen else ""
            raise ConfigError(f"{self.key(unknown[0])}: unknown key{hint}")


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def parse(data: Mapping[str, Any], *, base: Path, env: Mapping[str, str]) -> Config:
    """Build a :class:`Config` from parsed TOML; relative paths resolve against *base*."""
    root = _Reader(data, "", env)
    source = root.table("source")
    sqlite = chroma = None
    if "sqlite" in source.data:
        s = source.table("sqlite")
        no_pk = s.get("no_primary_key", str, "rowid")
        if no_pk not in _NO_PK:
            raise ConfigError(f"source.sqlite.no_primary_key: expected one of {_NO_PK}, got {no_pk!r}")
        sqlite = SqliteConfig(
            path=_path(s.require("path", str), base),
            tables=s.strings("tables"),
            exclude=s.strings("exclude") or (),
            no_primary_key=no_pk,
        )
        s.check_unknown()
    if "chroma" in source.data:
        c = source.table("chroma")
        path = c.get("path", str)
        on_delete = c.get("on_delete", str, "keep")
        if on_delete not in ("keep", "drop"):
            raise ConfigError(f"source.chroma.on_delete: expected \"keep\" or \"drop\", got {on_delete!r}")
        chroma = ChromaConfig(
            url=_chroma_url(c.get("url", str)),
            path=_path(path, base) if path else None,
            collections=c.strings("collections"),
            tenant=c.get("tenant", str, "default_tenant"),
            database=c.get("database", str, "default_database"),
            on_delete=on_delete,
        )
        if chroma.url is None and chroma.path is None:
            raise ConfigError("source.chroma: set url (a Chroma server) or path (its persist directory)")
        c.check_unknown()
    source.check_unknown()
    if sqlite is None and chroma is None:
        raise ConfigError("source: configure [source.sqlite] and/or [source.chroma]")

    t = root.table("target")
    column_types = t.table("column_types")
    for k, v in column_types.data.items():
        if "." not in k or not isinstance(v, str) or not v.strip():
            raise ConfigError(f"target.column_types.{k}: expected \"table.column\" = \"postgres type\"")
    table_names = _table_names(t.table("table_names"))
    collections = []
    for i, item in enumerate(t.get("collections", list, [])):
        c = _Reader(item, f"target.collections[{i}]", env)
        cols = c.get("columns", dict, {})
        if not all(isinstance(v, str) for v in cols.values()):
            raise ConfigError(f"target.collections[{i}].columns: values must be strings")
        collections.append(
            CollectionTarget(name=c.require("name", str), table=c.require("table", str), columns=cols,
                             create=c.get("create", str, None) or None,
                             documents=c.get("documents", str, None) or None,
                             constants=_constants(c, i, cols))
        )
        c.check_unknown()
    schema = t.get("schema", str, "public")
    if not schema.strip() or len(schema.encode()) > PG_NAME_BYTES:
        raise ConfigError(f"target.schema: {schema!r} is not a PostgreSQL schema name "
                          f"(1 to {PG_NAME_BYTES} bytes)")
    target = Target(
        dsn=normalize_dsn(t.require("dsn", str)),
        schema=schema,
        strict=t.get("strict", bool, False),
        column_types=dict(column_types.data),
        table_names=table_names,
        collections=tuple(collections),
        reindex_ivfflat=t.get("reindex_ivfflat", bool, True),
        connect_timeout=t.positive("connect_timeout", float, 10.0),
        command_timeout=t.positive("command_timeout", float, 60.0),
    )
    t.check_unknown()

    st = root.table("state")
    state_dir = _path(st.get("dir", str, "/var/lib/syncd"), base)
    st.check_unknown()

    so = root.table("stream")
    stream = StreamOptions(
        batch_size=so.positive("batch_size", int, None),
        chunk_rows=so.positive("chunk_rows", int, 5000),
        poll_interval=so.positive("poll_interval", float, 1.0),
        prune_interval=so.positive("prune_interval", float, 5.0),
        retry_max_seconds=so.positive("retry_max_seconds", float, 30.0),
        release_idle_seconds=so.positive("release_idle_seconds", float, 30.0),
    )
    so.check_unknown()

    h = root.table("health")
    health = Health(
        listen=check_listen(h.get("listen", str, "127.0.0.1:8085")),
        max_lag_seconds=h.positive("max_lag_seconds", float, 5.0),
        stale_after_seconds=h.positive("stale_after_seconds", float, 60.0),
    )
    h.check_unknown()
    cutover = _cutover(root.table("cutover"), base)
    backup = _backup(root.table("backup"), base)
    root.check_unknown()
    return Config(target=target, state_dir=state_dir, sqlite=sqlite, chroma=chroma,
                  stream=stream, health=health, cutover=cutover, backup=backup)


def _backup(b: _Reader, base: Path) -> Backup:
    directory = b.get("dir", str)
    keep = b.get("keep", int, 5)
    if keep < 0:
        raise ConfigError(f"backup.keep: must be 0 (keep all) or more, got {keep}")
    min_free = b.get("min_free_mb", int, 64)
    if min_free < 0:
        raise ConfigError(f"backup.min_free_mb: must be 0 or more, got {min_free}")
    backup = Backup(dir=_path(directory, base) if directory else None, keep=keep,
                    auto=b.get("auto", bool, True), min_free_mb=min_free)
    b.check_unknown()
    return backup


PG_NAME_BYTES = 63
"""PostgreSQL's identifier limit (NAMEDATALEN - 1): longer names are cut, silently."""


def _table_names(r: _Reader) -> dict[str, str]:
    names: dict[str, str] = {}
    for k, v in r.data.items():
        key = r.key(f'"{k}"')
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{key}: expected \"sqlite_table\" = \"postgres_table\"")
        if len(v.encode()) > PG_NAME_BYTES:
            raise ConfigError(f"{key}: {v!r} is {len(v.encode())} bytes; PostgreSQL's limit is "
                              f"{PG_NAME_BYTES}: choose a shorter name")
        clash = next((other for other, name in names.items() if name == v), None)
        if clash is not None:
            raise ConfigError(f"{key}: {v!r} is also the name given to {clash!r}; each table needs "
                              "its own PostgreSQL name")
        names[k] = v
    return names


def check_listen(listen: str, key: str = "health.listen") -> str:
    """``host:port`` (or empty: no health server); a bracketed IPv6 host is allowed."""
    if not listen:
        return listen
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port such as 127.0.0.1:8085 (or \"\" for no "
                          f"health server), got {listen!r}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ConfigError(f"{key}: write an IPv6 host in brackets, e.g. [::1]:{port}; got {listen!r}")
    return listen


def exposed(listen: str) -> bool:
    """True when *listen* binds beyond loopback (every interface, or a non-loopback address)."""
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    if host in ("localhost", ""):
        return host == ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to anything


def _chroma_url(url: str | None) -> str | None:
    if url is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"source.chroma.url: expected http://HOST:PORT (the app's "
                          f"VECTOR_DB_CHROMA_URL), got {url!r}")
    del port
    return url


_VERIFY = ("counts", "full", "off")


def _values(r: _Reader, name: str) -> dict[str, str]:
    values = r.table(name)
    for k, v in values.data.items():
        if not isinstance(v, str | int | float | bool):
            raise ConfigError(f"{values.key(k)}: expected a string, got {v!r}")
    return {k: interpolate(v, values.key(k), r.env) if isinstance(v, str) else
            (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.data.items()}


def _app_configs(value: str | list[object] | None, c: _Reader) -> list[str]:
    """``app_config``: one file, or a list of files flipped together (all or none)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not value or not all(isinstance(a, str) and a for a in value):
        raise ConfigError("cutover.app_config: expected a file or a list of files, e.g. "
                          "[\"/srv/app/.env\", \"/srv/app/config.yaml\"]")
    names = [interpolate(str(a), "cutover.app_config", c.env) for a in value]
    if len(set(names)) != len(names):
        raise ConfigError("cutover.app_config: a file is listed twice; list each file once")
    return names


def _cutover(c: _Reader, base: Path) -> Cutover:
    app_config = _app_configs(c.get("app_config", (str, list)), c)
    fmt = c.get("format", str)
    if fmt is not None and fmt not in ("env", "yaml", "toml"):
        raise ConfigError(f"cutover.format: expected \"env\", \"yaml\" or \"toml\", got {fmt!r}")
    command = c.get("reload_command", (str, list))
    if isinstance(command, list):
        if not command or not all(isinstance(a, str) for a in command):
            raise ConfigError("cutover.reload_command: expected a command line or a list of strings")
        argv = tuple(interpolate(a, "cutover.reload_command", c.env) for a in command)
    else:
        import shlex

        argv = tuple(shlex.split(command)) if command else ()
    verify = c.get("verify", str, "counts")
    if verify not in _VERIFY:
        raise ConfigError(f"cutover.verify: expected one of {_VERIFY}, got {verify!r}")
    forward, rollback = _values(c, "forward"), _values(c, "rollback")
    if app_config and not forward:
        raise ConfigError("cutover.forward: set the app config keys cutover writes, "
                          "e.g. RELATIONAL_DB_PROVIDER = \"postgres\"")
    missing = sorted(set(forward) - set(rollback))
    if missing:
        raise ConfigError(f"cutover.rollback.{missing[0]}: missing; every key cutover.forward "
                          "changes needs the value rollback writes back")
    cutover = Cutover(
        app_config=_path(app_config[0], base) if app_config else None,
        app_configs=tuple(_path(a, base) for a in app_config),
        format=fmt,
        forward=forward,
        rollback=rollback,
        reload_command=argv,
        reload_timeout=c.positive("reload_timeout", float, 10.0),
        max_lag_seconds=c.positive("max_lag_seconds", float, 2.0),
        drain_timeout=c.positive("drain_timeout", float, 10.0),
        lock_timeout=c.positive("lock_timeout", float, 5.0),
        verify=verify,
    )
    c.check_unknown()
    return cutover


def load(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at *path*."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory; name the file (syncd.toml)") from exc
    except PermissionError as exc:
        import pwd

        st = path.stat()
        me, owner = (pwd.getpwuid(uid).pw_name for uid in (os.geteuid(), st.st_uid))
        raise ConfigError(f"config file {path} cannot be read by user {me} (owner {owner}, mode "
                          f"{st.st_mode & 0o777:04o}): `sudo chgrp {me} {path} && sudo chmod g+r {path}`"
                          ) from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): is it the config?"
                          ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    cfg = parse(data, base=path.resolve().parent, env=os.environ if env is None else env)
    return dataclasses.replace(cfg, path=path)


def _constants(c: Any, i: int, columns: Mapping[str, str]) -> dict[str, str]:
    """``[[target.collections]] constants``: column -> the one text value every item gets there."""
    raw = c.get("constants", dict, {})
    where = f"target.collections[{i}].constants"
    if not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{where}: values must be strings (PostgreSQL casts them to the column's type)")
    both = sorted(set(raw) & set(columns))
    if both:
        raise ConfigError(f"{where}: column {both[0]!r} is also in columns; give it one source")
    return dict(raw)
