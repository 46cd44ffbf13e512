"""What a table is, as every store and concern sees it: the SQLite tables of the forward stream
described once (:func:`syncd.stores.sqlite.schema.discover`) and handed to the sinks, the
verifier, the exports; the state of a table's capture; a value the reverse stream cannot write.

Shared vocabulary, not a store: the PostgreSQL sink plans its target tables from a
:class:`Table` without importing the SQLite store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROWID_COLUMN = "_syncd_rowid"
"""Target column that holds the rowid of a source table without a primary key."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    declared: str
    notnull: bool
    pk_index: int  # 0 if not part of the primary key, else its 1-based position


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool
    collations: tuple[str, ...] = ()
    """Per column, the collation the index compares with (``BINARY``, ``NOCASE``, ``RTRIM``…)."""


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str
    on_update: str


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    """Primary-key columns; ``(ROWID_COLUMN,)`` when keyed by rowid."""
    rowid_key: bool
    """True when the key is the rowid (no declared primary key, or INTEGER PRIMARY KEY)."""
    without_rowid: bool
    indexes: tuple[Index, ...]
    foreign_keys: tuple[ForeignKey, ...]
    skipped_indexes: tuple[str, ...] = ()
    """Expression or partial indexes syncd does not recreate (logged)."""
    pk_collations: tuple[str, ...] = ()
    """Per primary-key column, the collation its uniqueness is checked with (empty: BINARY)."""

    @property
    def synthetic_key(self) -> bool:
        """The target gets a ``_syncd_rowid`` column that the source does not have."""
        return self.pk == (ROWID_COLUMN,)

    @property
    def nullable_key(self) -> bool:
        """SQLite lets a declared primary key of a rowid table hold NULLs (sqlite.org/lang_createtable.html,
        "PRIMARY KEY"), unless it is the rowid itself or declared NOT NULL: such rows are never equal
        to a key, so they are read apart from the key order (and rejected by PostgreSQL)."""
        if self.rowid_key or self.without_rowid:
            return False
        by_name = {c.name: c for c in self.columns}
        return any(not by_name[k].notnull for k in self.pk)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def target_columns(self) -> tuple[str, ...]:
        """Columns as written to the target, synthetic key first."""
        names = self.column_names
        return (ROWID_COLUMN, *names) if self.synthetic_key else names

    def signature(self) -> str:
        """Changes when columns change: triggers must then be rebuilt."""
        return "|".join(f"{c.name}:{c.declared}" for c in self.columns)


def affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (sqlite.org/datatype3.html, 3.1)."""
    decl = declared.upper()
    if "INT" in decl:
        return "INTEGER"
    if any(s in decl for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in decl or not decl.strip():
        return "BLOB"
    if any(s in decl for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


@dataclass(frozen=True, slots=True)
class Captured:
    """One ``_syncd_captured`` row: the head and the epoch of a table's current triggers."""

    since: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Unfit:
    """A value SQLite cannot hold; the sink rejects the change that carries it."""

    value: Any
    error: str
