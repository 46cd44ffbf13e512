"""What changes under a SQLite stream without a logged change, and how capture follows it.

- the schema: a migration adds a column, rebuilds a table (its triggers go with it), or adds
  a table — capture is re-installed on those tables (:func:`recapture`);
- the rowids of a table keyed by rowid: ``VACUUM`` or a reloaded file renumbers them — the
  table is recorded to be copied again (:mod:`syncd.stores.sqlite.rowids`);
- the file itself: a copy renamed over it (``VACUUM INTO``, a ``.dump`` reloaded). The source
  re-opens the path; rowid tables are then copied again (their references name the old inode).

Either way the table's capture epoch in ``_syncd_captured`` rises, and the sink copies it again
(:mod:`syncd.stores.postgres.schema_change`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from syncd.config import SqliteConfig
from syncd.ports.tables import Table
from syncd.stores.sqlite import capture, rowids
from syncd.stores.sqlite.schema import discover

log = structlog.get_logger("syncd.source.sqlite")


@dataclass(frozen=True, slots=True)
class Followed:
    tables: list[Table]
    version: int
    """``PRAGMA schema_version`` after a re-install (read under its write lock), else now."""
    recaptured: list[str] = field(default_factory=list)
    """Tables whose triggers were (re)installed."""
    renumbered: dict[str, str] = field(default_factory=dict)
    """Tables keyed by rowid recorded to be copied again, with the reason."""

    @property
    def changed(self) -> bool:
        return bool(self.recaptured or self.renumbered)


def recapture(conn: sqlite3.Connection, config: SqliteConfig) -> tuple[list[Table], list[str], int]:
    """Read the tables and (re)install capture on those whose triggers are missing or out of
    date, under one write lock; return the tables, those re-captured, the schema version."""
    def describe() -> list[Table]:
        return discover(conn, tables=config.tables, exclude=config.exclude,
                        no_primary_key=config.no_primary_key)

    tables = describe()
    if not capture.stale(conn, tables):  # raises if capture was never installed
        return tables, [], capture.schema_version(conn)
    began = time.perf_counter()
    changed, tables, version = capture.install_tables(conn, describe)
    if changed:  # the app's writers waited for the write lock this long
        log.info("capture re-installed: the tables changed since syncd last captured them", tables=changed,
                 write_lock_ms=round((time.perf_counter() - began) * 1000, 1))
    return tables, changed, version


def follow(conn: sqlite3.Connection, config: SqliteConfig) -> Followed:
    """Bring capture up to date with the database: re-install what changed, and record the
    tables keyed by rowid whose rowids moved to be copied again."""
    tables, recaptured, version = recapture(conn, config)
    renumbered = rowids.renumbered(conn, [t for t in tables if t.name not in recaptured])
    if renumbered:
        began = time.perf_counter()
        capture.copy_again(conn, list(renumbered), tables)
        for name, why in renumbered.items():
            log.warning("rowids changed with no logged change: the table is copied again", table=name,
                        reason=why, write_lock_ms=round((time.perf_counter() - began) * 1000, 1))
    return Followed(tables, version, recaptured, renumbered)


def describe_change(before: Mapping[str, Table], followed: Followed) -> str:
    """What changed, table by table, for the log and :class:`~syncd.errors.SchemaChanged`."""
    now = {t.name: t for t in followed.tables}
    what = []
    for name in followed.recaptured:
        t, old = now[name], before.get(name)
        if old is None:
            what.append(f"{name} (new table)")
        elif old.column_names != t.column_names:
            what.append(f"{name} (columns now {', '.join(t.column_names)})")
        elif old.pk != t.pk:
            what.append(f"{name} (primary key now ({', '.join(t.pk)}))")
        elif old.signature() != t.signature():
            what.append(f"{name} (column types now {t.signature()})")
        else:
            what.append(f"{name} (its capture triggers were gone or out of date: rebuilt by a migration?)")
    what += [f"{name} ({why})" for name, why in followed.renumbered.items()]
    return "; ".join(what)
