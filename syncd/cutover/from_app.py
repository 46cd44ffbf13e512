"""`syncd config --from-app FILE`: derive syncd.toml from the app's own config files.

The app already names its SQLite file, its Chroma server and the keys that choose its stores;
this reads them (``.env``, YAML or TOML) and writes a commented ``syncd.toml``. Two app shapes are
known (the seeds in docs/guides): qckstrt's ``.env`` (``RELATIONAL_DB_*``, ``VECTOR_DB_*``) and
Signal Hub's YAML (``storage.vector_store``, ``database.connection.*``). Every inferred key is
reported with the file and line it came from; every key that could not be inferred gets one line
saying what to add. A password is never written in clear: the target DSN's password becomes a
``${NAME}`` reference, resolved from the environment when syncd loads its config.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from syncd.cutover.appconfig import detect_format
from syncd.cutover.appconfig_common import AppConfigError, one_line
from syncd.cutover.appconfig_env import env_entries
from syncd.cutover.seed_schemas import (
    QCKSTRT_COLLECTION,
    QCKSTRT_DDL,
    SIGNAL_HUB_COLLECTION,
    SIGNAL_HUB_COLUMNS,
    SIGNAL_HUB_DDL,
)
from syncd.errors import ConfigError

DEFAULT_PASSWORD_ENV = "SYNCD_TARGET_PASSWORD"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SSL_ON = ("require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class Found:
    """One key of the app's config: its value and where it was (``file:line``)."""

    value: str
    where: str


@dataclass
class Derived:
    """What :func:`derive` inferred; ``lines`` is the report, one line per key."""

    sqlite_path: Found | None = None
    chroma_url: Found | None = None
    chroma_path: Found | None = None
    dimensions: Found | None = None
    qckstrt_vectors: bool = False
    """VECTOR_DB_PROVIDER seen: the collection goes to qckstrt's own ``vector_embeddings``."""
    signal_hub_vectors: bool = False
    """storage.vector_store seen: the collection goes to Signal Hub's ``documents`` + ``embeddings``."""
    collection: Found | None = None
    """``--collection``: the Chroma collection's name, instead of the app's default."""
    dsn: Found | None = None
    app_configs: list[Path] = field(default_factory=list)
    """The app's files cutover flips, in the order given (all of them as one step)."""
    forward: dict[str, Found] = field(default_factory=dict)
    rollback: dict[str, Found] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def read_app_config(path: Path) -> dict[str, Found]:
    """Every scalar key of *path* (dotted for YAML/TOML) with its value and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AppConfigError(f"--from-app {path}: cannot read it ({exc.strerror})") from None
    fmt = detect_format(path, None)
    if fmt == "env":
        entries = env_entries(text, str(path))
        return {k: Found(v[-1].value, f"{path}:{text.count(chr(10), 0, v[-1].start) + 1}")
                for k, v in entries.items()}
    if fmt == "yaml":
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise AppConfigError(f"{path} is not valid YAML ({one_line(exc)}); fix the file") from None
        out: dict[str, Found] = {}
        _walk_yaml(root, "", path, out)
        return out
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppConfigError(f"{path} is not valid TOML ({one_line(exc)}); fix the file") from None
    flat: dict[str, Found] = {}
    _walk_toml(data, "", path, text.splitlines(), flat)
    return flat


def _walk_yaml(node: yaml.Node | None, prefix: str, path: Path, out: dict[str, Found]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                _walk_yaml(v, f"{prefix}.{k.value}" if prefix else str(k.value), path, out)
    elif isinstance(node, yaml.ScalarNode) and prefix:
        out[prefix] = Found(str(node.value), f"{path}:{node.start_mark.line + 1}")


def _walk_toml(data: Mapping[str, object], prefix: str, path: Path, lines: list[str],
               out: dict[str, Found]) -> None:
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _walk_toml(v, key, path, lines, out)
        elif isinstance(v, str | int | float | bool):
            pattern = re.compile(rf"^\s*[\"']?{re.escape(k)}[\"']?\s*=")
            line = next((i for i, text in enumerate(lines, 1) if pattern.match(text)), 0)
            value = str(v).lower() if isinstance(v, bool) else str(v)
            out[key] = Found(value, f"{path}:{line}" if line else str(path))


def _target_parts(dsn: str, password_env: str) -> tuple[str, dict[str, str]]:
    """The DSN as syncd.toml should hold it (password as ``${NAME}``) and its parts."""
    if dsn == "embedded":
        raise ConfigError("--target embedded: the app cannot reach the embedded PostgreSQL; "
                          "pass the DSN of the PostgreSQL the app will use")
    url = urlsplit(dsn)
    if url.scheme not in ("postgres", "postgresql"):
        raise ConfigError("--target: expected a postgresql:// DSN, e.g. "
                          "postgresql://app@db.example:5432/app?sslmode=require")
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    parts = {"host": url.hostname or query.get("host", "localhost"),
             "port": str(url.port or query.get("port", 5432)),
             "database": unquote(url.path.lstrip("/")) or (url.username or ""),
             "user": unquote(url.username or ""),
             "sslmode": query.get("sslmode", "prefer")}
    password = url.password
    if password is not None and password != "":
        ref = _REF.fullmatch(unquote(password))
        name = ref.group(1) if ref else password_env
        parts["password"] = "${" + name + "}"
        netloc = f"{url.username}:${{{name}}}@{url.netloc.rpartition('@')[2]}"
        dsn = url._replace(netloc=netloc).geturl()
    return dsn, parts


def derive(files: Sequence[Path], target: str | None, password_env: str = DEFAULT_PASSWORD_ENV, *,
           chroma_path: str | None = None, chroma_url: str | None = None,
           collection: str | None = None) -> Derived:
    """Read each app config file and infer syncd's sources, target and cutover keys; *chroma_path*,
    *chroma_url* and *collection* are given on the command line and win over the app's files."""
    d = Derived()
    if chroma_path is not None:
        d.chroma_path = Found(str(Path(chroma_path).expanduser().resolve()), "--chroma-path")
    if collection is not None:
        if not collection.strip():
            raise ConfigError("--collection: expected the Chroma collection's name, "
                              "e.g. --collection signal-hub")
        d.collection = Found(collection, "--collection")
    seen: dict[str, tuple[Path, Found]] = {}
    for f in files:
        for key, found in read_app_config(f).items():
            seen[key] = (f, found)
    parts: dict[str, str] = {}
    if target is not None:
        dsn, parts = _target_parts(target, password_env)
        d.dsn = Found(dsn, "--target")
    elif "database.connection.host" in seen:
        d.dsn = _dsn_from_yaml(seen)
        password = seen.get("database.connection.password")
        if password is not None and not _REF.fullmatch(password[1].value):
            d.lines.append(f"target.dsn: the password at {password[1].where} is not copied in clear; add "
                           "it to the DSN as ${NAME} and set NAME in syncd's environment")
    _qckstrt(d, seen, parts)
    if chroma_url is not None:
        d.chroma_url = Found(chroma_url, "--chroma-url")
    _signal_hub(d, seen)
    if d.collection is not None and d.qckstrt_vectors and d.signal_hub_vectors:
        raise ConfigError("--collection: the app files hold both qckstrt's and Signal Hub's keys, each with "
                          "its own collection; run `syncd config --from-app` once per app")
    if d.dsn is None:
        d.lines.append("target.dsn: not found; pass --target postgresql://USER:PASSWORD@HOST:PORT/DB "
                       "(the password is written as a ${NAME} reference)")
    no_source = d.sqlite_path is None and d.chroma_url is None and d.chroma_path is None
    if no_source and not any(x.startswith("source") for x in d.lines):
        d.lines.append("source: neither a SQLite file nor a Chroma server found in the app's config; "
                       "add [source.sqlite] path = \"…\" and/or [source.chroma] url = \"…\" (or path)")
    return d


def _dsn_from_yaml(seen: Mapping[str, tuple[Path, Found]]) -> Found:
    def get(name: str, default: str) -> str:
        hit = seen.get(f"database.connection.{name}")
        return hit[1].value if hit else default

    user, password = get("user", "postgres"), get("password", "")
    auth = f"{user}:{password}@" if _REF.fullmatch(password) else f"{user}@"
    dsn = (f"postgresql://{auth}{get('host', 'localhost')}:{get('port', '5432')}/"
           f"{get('database', user)}?sslmode={get('sslmode', 'prefer')}")
    return Found(dsn, seen["database.connection.host"][1].where.rsplit(":", 1)[0] + " database.connection.*")


def _flip(d: Derived, key: str, forward: str, rollback: Found, app_file: Path,
          source: str = "the PostgreSQL store") -> None:
    """Cutover writes *forward* to *key* of *app_file*; rollback writes *rollback* back."""
    d.forward[key] = Found(forward, source)
    d.rollback[key] = rollback
    if app_file not in d.app_configs:
        d.app_configs.append(app_file)


def _qckstrt(d: Derived, seen: Mapping[str, tuple[Path, Found]], parts: Mapping[str, str]) -> None:
    provider = seen.get("RELATIONAL_DB_PROVIDER")
    if provider is not None:
        f, found = provider
        if found.value == "sqlite":
            db = seen.get("RELATIONAL_DB_DATABASE")
            if db is None:
                d.lines.append(f"source.sqlite.path: {f} has RELATIONAL_DB_PROVIDER=sqlite but no "
                               "RELATIONAL_DB_DATABASE; add [source.sqlite] path = \"…\"")
            else:
                p = Path(db[1].value).expanduser()
                p = p if p.is_absolute() else (db[0].parent / p).resolve()
                d.sqlite_path = Found(str(p), db[1].where)
        _flip(d, "RELATIONAL_DB_PROVIDER", "postgres", found, f)
        if parts:
            ssl = "true" if parts["sslmode"] in _SSL_ON else "false"
            for key, value in (("HOST", parts["host"]), ("PORT", parts["port"]),
                               ("DATABASE", parts["database"]), ("USERNAME", parts["user"]),
                               ("SSL", ssl), ("PASSWORD", parts.get("password"))):
                name = f"RELATIONAL_DB_{key}"
                if value is None:
                    d.lines.append(f"cutover.forward.{name}: the target DSN has no password; add "
                                   f"{name} = \"${{NAME}}\" if the app needs one")
                    continue
                before = seen.get(name)
                if before is None or key == "PASSWORD":  # a secret is never copied into syncd.toml
                    why = "absent" if before is None else f"{before[1].where}, not copied"
                    _flip(d, name, value, Found("", f"{why}: rollback empties it"), f, "--target")
                else:
                    _flip(d, name, value, before[1], f, "--target")
        else:
            d.lines.append("cutover.forward.RELATIONAL_DB_HOST/PORT/DATABASE/USERNAME/PASSWORD/SSL: "
                           "pass --target DSN to derive them")
    vector = seen.get("VECTOR_DB_PROVIDER")
    if vector is not None:
        d.qckstrt_vectors = True
        _flip(d, "VECTOR_DB_PROVIDER", "pgvector", vector[1], vector[0])
        url = seen.get("VECTOR_DB_CHROMA_URL")
        if vector[1].value == "chromadb" and url is None:
            d.lines.append(f"source.chroma.url: {vector[0]} has VECTOR_DB_PROVIDER=chromadb but no "
                           "VECTOR_DB_CHROMA_URL; add [source.chroma] url = \"…\" (or path)")
        elif url is not None:
            d.chroma_url = url[1]
    if "VECTOR_DB_DIMENSIONS" in seen:
        d.dimensions = seen["VECTOR_DB_DIMENSIONS"][1]


def _signal_hub(d: Derived, seen: Mapping[str, tuple[Path, Found]]) -> None:
    store = seen.get("storage.vector_store")
    if store is None:
        return
    f, found = store
    rollback = found if found.value != "postgresql" else Found("chromadb", f"{found.where} (now postgresql)")
    _flip(d, "storage.vector_store", "postgresql", rollback, f)
    d.signal_hub_vectors = True
    if d.chroma_url is None and d.chroma_path is None:
        d.lines.append(f"source.chroma: {f} names no Chroma location; add [source.chroma] "
                       "path = \"…\" (its persist directory) or url = \"http://…\"; or pass --chroma-path "
                       "DIR --chroma-url URL")


def _qckstrt_collection(d: Derived) -> list[str]:
    dim = d.dimensions.value.split("#")[0].strip() if d.dimensions else "384"
    if not dim.isdigit():
        d.lines.append(f"target.collections: VECTOR_DB_DIMENSIONS = {dim!r} is not a number; fix "
                       "vector(…) in the written create")
    where = f"{d.dimensions.where}" if d.dimensions else "qckstrt's default, no VECTOR_DB_DIMENSIONS"
    return ["# qckstrt's pgvector provider's table: syncd runs the app's own DDL when the table does",
            f"# not exist yet (vector({dim}): {where}); the text goes to content, the metadata keys",
            "# userId / documentId to their columns",
            "[[target.collections]]",
            f"name = {json.dumps(_collection_name(d, QCKSTRT_COLLECTION))}",
            'table = "vector_embeddings"',
            'columns = { user_id = "metadata.userId", document_id = "metadata.documentId", '
            'content = "document" }',
            'create = """', QCKSTRT_DDL.format(dim=dim) + '"""', ""]


def _collection_name(d: Derived, default: str) -> str:
    return d.collection.value if d.collection else default


def _signal_hub_collection(d: Derived) -> list[str]:
    name = _collection_name(d, SIGNAL_HUB_COLLECTION)
    origin = "--collection" if d.collection else "the default; --collection NAME names another"
    columns = ", ".join(f"{col} = {json.dumps(src)}" for col, src in SIGNAL_HUB_COLUMNS.items())
    return ["# Signal Hub's tables, created with the app's own schema (its migration guide's Step 2)",
            "# when they do not exist yet. Each Chroma item is one documents row (the document, the",
            "# metadata keys of columns, the other keys in documents.metadata) and one embeddings row",
            "# (the vector, metadata.model), joined by embeddings.document_id.",
            "[[target.collections]]",
            f"name = {json.dumps(name)}    # {origin}",
            'table = "embeddings"',
            'documents = "documents"',
            f"columns = {{ {columns} }}",
            'create = """', SIGNAL_HUB_DDL + '"""', ""]


def toml_text(d: Derived, state_dir: str | None) -> str:
    """The commented syncd.toml for *d*."""
    def q(value: str) -> str:
        return json.dumps(value)

    out = ["# Written by `syncd config --from-app`; each value names where it came from.", ""]
    if d.sqlite_path:
        out += ["[source.sqlite]", f"path = {q(d.sqlite_path.value)}    # {d.sqlite_path.where}", ""]
    if d.chroma_url or d.chroma_path:
        out.append("[source.chroma]")
        out += [f"url = {q(d.chroma_url.value)}    # {d.chroma_url.where}"] if d.chroma_url else []
        out += [f"path = {q(d.chroma_path.value)}    # {d.chroma_path.where}"] if d.chroma_path else []
        if d.dimensions:
            out.append(f"# the app's vectors: {d.dimensions.value}-d ({d.dimensions.where}); "
                       "syncd takes the dimension from each collection")
        out.append("")
    if d.dsn:
        out += ["[target]", f"dsn = {q(d.dsn.value)}    # {d.dsn.where}", ""]
    if d.qckstrt_vectors:
        out += _qckstrt_collection(d)
    if d.signal_hub_vectors:
        out += _signal_hub_collection(d)
    out += ["[state]", f"dir = {q(state_dir)}" if state_dir else '# dir = "/var/lib/syncd"', ""]
    if d.app_configs:
        files = [q(str(f.resolve())) for f in d.app_configs]
        out += ["[cutover]", f"app_config = {files[0] if len(files) == 1 else '[' + ', '.join(files) + ']'}"
                + ("    # flipped as one step: every file or none" if len(files) > 1 else ""), "",
                "[cutover.forward]                # written by `syncd cutover`"]
        out += [f"{q(k)} = {q(v.value)}    # {v.where}" for k, v in d.forward.items()]
        out += ["", "[cutover.rollback]               # written back by `syncd rollback`"]
        out += [f"{q(k)} = {q(v.value)}    # {v.where}" for k, v in d.rollback.items()]
        out.append("")
    return "\n".join(out)


def report(d: Derived) -> list[str]:
    """One line per inferred key (``key = value  (file:line)``), then what is missing."""
    lines = []
    for key, found in (("source.sqlite.path", d.sqlite_path), ("source.chroma.url", d.chroma_url),
                       ("source.chroma.path", d.chroma_path),
                       ("vector dimension", d.dimensions), ("target.dsn", d.dsn)):
        if found:
            lines.append(f"{key} = {found.value}  ({found.where})")
    if d.app_configs:
        lines.append(f"cutover.app_config = {', '.join(str(f) for f in d.app_configs)}")
    if d.qckstrt_vectors:
        lines.append(f"target.collections: {_collection_name(d, QCKSTRT_COLLECTION)} -> vector_embeddings "
                     "(qckstrt's DDL)")
    if d.signal_hub_vectors:
        how = ("--collection" if d.collection else
               "the default: Signal Hub's config names no collection; pass --collection NAME for another")
        lines.append(f"target.collections: {_collection_name(d, SIGNAL_HUB_COLLECTION)} -> documents + "
                     f"embeddings (Signal Hub's schema)  ({how})")
    lines += [f"cutover.forward.{k} = {v.value}  ({v.where})" for k, v in d.forward.items()]
    lines += [f"cutover.rollback.{k} = {v.value}  ({v.where})" for k, v in d.rollback.items()]
    return lines + [f"missing: {line}" for line in d.lines]


def command(files: Sequence[Path], target: str | None, write: Path, *, force: bool,
            state_dir: str | None, password_env: str, chroma_path: str | None = None,
            chroma_url: str | None = None, collection: str | None = None) -> int:
    if write.exists() and not force:
        raise ConfigError(f"{write} exists; pass --force to replace it, or --write another path")
    d = derive(files, target, password_env, chroma_path=chroma_path, chroma_url=chroma_url,
               collection=collection)
    text = toml_text(d, state_dir)
    try:
        write.write_text(text)
    except OSError as exc:
        raise ConfigError(f"--write {write}: cannot write it ({exc.strerror}); choose another path") from None
    for line in report(d):
        print(line)
    print(f"wrote {write}")
    return 0
