"""syncd's config: TOML parsed once into frozen, validated objects and passed down.

:mod:`~syncd.config.settings` holds what a config says, :mod:`~syncd.config.parse` how a
TOML file becomes it (``${ENV}`` / ``${file:…}`` interpolation, every error naming its key),
:mod:`~syncd.config.dsn` how a PostgreSQL DSN is read and normalized.
"""

from __future__ import annotations

from syncd.config.parse import PG_NAME_BYTES, check_listen, exposed, interpolate, load, parse
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

__all__ = ["PG_NAME_BYTES", "Backup", "ChromaConfig", "CollectionTarget", "Config", "Cutover", "Health",
           "SqliteConfig", "StreamOptions", "Target", "check_listen", "exposed", "interpolate", "load",
           "parse"]
