"""The schema of a fuzz case: tables, columns as an ORM declares them, keys, foreign keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

EVENTS = ("sync", "start", "kill", "stop")
Stmt = tuple[str, tuple[Any, ...]]


def q(name: str) -> str:
    """A double-quoted SQL identifier (valid in SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    """One column: its SQL name, the declared type as the ORM writes it, and what it holds.

    ``kind`` is what the app means to store (``datetime``, ``decimal``, ``uuid``…), which
    picks the values the generator writes; the declared type is what SQLite and syncd see.
    """

    name: str
    decl: str
    kind: str
    flavor: str
    params: tuple[int, ...] = ()
    not_null: bool = False
    unique: bool = False
    default: str | None = None

    def ddl(self, inline: str = "") -> str:
        """The column definition; *inline* (``PRIMARY KEY …``) goes right after the type."""
        parts = [q(self.name)]
        if self.decl:
            parts.append(self.decl)
        if inline:
            parts.append(inline)
        if self.not_null:
            parts.append("NOT NULL")
        if self.unique:
            parts.append("UNIQUE")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        return " ".join(parts)


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    on_delete: str = "NO ACTION"
    on_update: str = "NO ACTION"

    def ddl(self) -> str:
        cols = ", ".join(q(c) for c in self.columns)
        pcols = ", ".join(q(c) for c in self.parent_columns)
        return (f"FOREIGN KEY ({cols}) REFERENCES {q(self.parent)} ({pcols}) "
                f"ON DELETE {self.on_delete} ON UPDATE {self.on_update}")


@dataclass(frozen=True)
class Table:
    """A table. ``pk_style``: ``rowid-alias`` (INTEGER PRIMARY KEY), ``int`` (BIGINT/INT key,
    not a rowid alias), ``text``, ``uuid``, ``composite`` or ``none`` (keyed by rowid)."""

    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    pk_style: str
    flavor: str
    autoincrement: bool = False
    without_rowid: bool = False
    fks: tuple[ForeignKey, ...] = ()
    checks: tuple[str, ...] = field(default=())

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def non_key(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.name not in self.pk)

    def ddl(self, name: str | None = None) -> str:
        """``CREATE TABLE``, under *name* when given (an ORM rebuild's ``new__x``)."""
        inline_pk = len(self.pk) == 1 and self.flavor != "sqlalchemy"
        lines = []
        for c in self.columns:
            inline = ""
            if inline_pk and self.pk == (c.name,):
                inline = "PRIMARY KEY AUTOINCREMENT" if self.autoincrement else "PRIMARY KEY"
            lines.append(c.ddl(inline))
        if self.pk and not inline_pk:
            lines.append("PRIMARY KEY (" + ", ".join(q(c) for c in self.pk) + ")")
        lines += [fk.ddl() for fk in self.fks]
        lines += [f"CHECK ({c})" for c in self.checks]
        tail = " WITHOUT ROWID" if self.without_rowid else ""
        body = ",\n    ".join(lines)
        return f"CREATE TABLE {q(name or self.name)} (\n    {body}\n){tail}"

    def with_columns(self, columns: tuple[Column, ...]) -> Table:
        return replace(self, columns=columns)


@dataclass(frozen=True)
class Schema:
    tables: tuple[Table, ...]
    foreign_keys_on: bool

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def ddl(self) -> list[str]:
        return [t.ddl() for t in self.tables]

    def replace_table(self, table: Table) -> Schema:
        return replace(self, tables=tuple(table if t.name == table.name else t for t in self.tables))

    def prefixed(self, prefix: str) -> Schema:
        """The same schema with every table renamed ``<prefix><name>`` (foreign keys follow), so
        that the cases of a batch share one SQLite file without colliding."""
        if not prefix:
            return self
        return replace(self, tables=tuple(
            replace(t, name=prefix + t.name,
                    fks=tuple(replace(fk, parent=prefix + fk.parent) for fk in t.fks))
            for t in self.tables))


@dataclass(frozen=True)
class Raw:
    """An SQL expression used as a value, e.g. ``CAST(X'ff' AS TEXT)``."""

    sql: str

    def __repr__(self) -> str:
        return f"Raw({self.sql!r})"


def bind(sql_values: Sequence[Any]) -> tuple[list[str], tuple[Any, ...]]:
    """Placeholders for *sql_values* (``?``, or the expression of a :class:`Raw`) and the params."""
    marks: list[str] = []
    params: list[Any] = []
    for v in sql_values:
        if isinstance(v, Raw):
            marks.append(v.sql)
        else:
            marks.append("?")
            params.append(v)
    return marks, tuple(params)


@dataclass(frozen=True)
class Step:
    """One transaction of the app, a schema change, ``VACUUM``, or a daemon event."""

    label: str
    statements: tuple[Stmt, ...] = ()
    commit: bool = True
    fk_off: bool = False  # PRAGMA foreign_keys=OFF around it (ORM table rebuilds)
    schema: Schema | None = field(default=None, compare=False)  # the schema after a DDL step

    @property
    def is_event(self) -> bool:
        return self.label in EVENTS
