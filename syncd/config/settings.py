"""What a config says, as frozen objects: the sources, the target, the stream, health,
cutover and backup settings. :mod:`syncd.config.parse` builds them from TOML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    path: Path
    tables: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    no_primary_key: Literal["rowid", "refuse"] = "rowid"


@dataclass(frozen=True, slots=True)
class ChromaConfig:
    url: str | None = None
    path: Path | None = None
    collections: tuple[str, ...] | None = None
    tenant: str = "default_tenant"
    database: str = "default_database"
    on_delete: Literal["keep", "drop"] = "keep"
    """What happens to a collection's table when the collection is deleted in Chroma."""


@dataclass(frozen=True, slots=True)
class CollectionTarget:
    name: str
    table: str
    columns: Mapping[str, str] = field(default_factory=dict)
    create: str | None = None
    """The app's own DDL for the table, run when the table does not exist yet (then adopted)."""
    constants: Mapping[str, str] = field(default_factory=dict)
    """Columns filled with one value for every item (``model = "text-embedding-3-small"``)."""
    documents: str | None = None
    """A documents table that holds each item's document and metadata, *table* holding its
    vector and a foreign key to it (docs/mapping.md, "One collection, two tables")."""


@dataclass(frozen=True, slots=True)
class Target:
    dsn: str
    schema: str = "public"
    strict: bool = False
    column_types: Mapping[str, str] = field(default_factory=dict)
    """``"table.column" -> postgres type`` overrides of the type mapping."""
    table_names: Mapping[str, str] = field(default_factory=dict)
    """``SQLite table -> PostgreSQL table`` for names PostgreSQL cannot take (over 63 bytes)
    or that should differ; unlisted tables keep their SQLite name."""
    collections: tuple[CollectionTarget, ...] = ()
    reindex_ivfflat: bool = True
    """Rebuild an adopted ivfflat index after the snapshot when the load at least doubled its table
    (its list centres came from the rows present when the app created it); false keeps it as is."""
    connect_timeout: float = 10.0
    command_timeout: float = 60.0

    @property
    def embedded(self) -> bool:
        return self.dsn == "embedded"

    def table_for(self, sqlite_table: str) -> str:
        """The PostgreSQL table a SQLite table is written to."""
        return self.table_names.get(sqlite_table, sqlite_table)

    def sqlite_table_for(self, pg_table: str) -> str:
        """The SQLite table a PostgreSQL table comes back to (the inverse of :meth:`table_for`)."""
        for sqlite_name, pg_name in self.table_names.items():
            if pg_name == pg_table:
                return sqlite_name
        return pg_table


@dataclass(frozen=True, slots=True)
class StreamOptions:
    batch_size: int | None = None
    """Changes per batch, applied in one transaction with its checkpoint. None: each stream's
    own (:data:`syncd.stream.BATCH_SIZE`, :data:`syncd.stream.TABLE_BATCH_SIZE`)."""
    chunk_rows: int = 5000
    poll_interval: float = 1.0
    prune_interval: float = 5.0
    retry_max_seconds: float = 30.0
    release_idle_seconds: float = 30.0
    """A Chroma collection's stream with nothing to apply for this long closes its PostgreSQL
    connection until its next change (one connection per collection would exhaust the
    server's ``max_connections`` with many collections)."""


@dataclass(frozen=True, slots=True)
class Health:
    listen: str = "127.0.0.1:8085"
    """``host:port``; an empty string turns the health server off."""
    max_lag_seconds: float = 5.0
    stale_after_seconds: float = 60.0
    """/healthz fails when a stream or the event loop has shown no progress for this long."""


@dataclass(frozen=True, slots=True)
class Cutover:
    """``[cutover]``: what `syncd cutover` and `syncd rollback` flip, run and check."""

    app_config: Path | None = None
    """The app's config file to flip (``.env``, YAML or TOML); the first of ``app_configs``."""
    app_configs: tuple[Path, ...] = ()
    """Every app config file to flip, as one step (all or none); ``app_config`` may be a list."""
    format: str | None = None
    """``env``, ``yaml`` or ``toml``; by default from the file name."""
    forward: Mapping[str, str] = field(default_factory=dict)
    """Keys (dotted paths in YAML/TOML) and the values cutover writes."""
    rollback: Mapping[str, str] = field(default_factory=dict)
    """Keys and the values rollback writes back."""
    reload_command: tuple[str, ...] = ()
    """Run after the flip (argv, no shell); must exit 0 within ``reload_timeout``."""
    reload_timeout: float = 10.0
    max_lag_seconds: float = 2.0
    """Preflight refuses when a stream is further behind than this."""
    drain_timeout: float = 10.0
    """How long the fenced streams may take to reach zero pending changes before the fence is undone."""
    lock_timeout: float = 5.0
    """How long to wait for SQLite's write lock when fencing."""
    verify: str = "counts"
    """Preflight comparison: ``counts``, ``full`` (checksums too) or ``off``."""


@dataclass(frozen=True, slots=True)
class Backup:
    """``[backup]``: where `syncd backup` writes, how many it keeps, and the automatic ones."""

    dir: Path | None = None
    """Default: ``<state.dir>/backups``."""
    keep: int = 5
    """Older backups in ``dir`` beyond this many are removed after a new one is complete."""
    auto: bool = True
    """Take a backup before `init` changes a store and before `cutover` / `rollback`."""
    min_free_mb: int = 64
    """A backup is refused unless this much disk stays free after it."""


@dataclass(frozen=True, slots=True)
class Config:
    target: Target
    state_dir: Path
    sqlite: SqliteConfig | None = None
    chroma: ChromaConfig | None = None
    stream: StreamOptions = StreamOptions()
    health: Health = Health()
    path: Path | None = None
    cutover: Cutover = Cutover()
    backup: Backup = Backup()
