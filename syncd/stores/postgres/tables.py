"""The table mapping of the SQLite → PostgreSQL direction: one source table and the PostgreSQL
table it is written to (columns, converters, the statements that write it), planned from the
source schema, the target config and what the target already holds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.config import Target
from syncd.errors import RowError, SchemaError
from syncd.pg.converters import Converter, converter
from syncd.pg.families import can_hold
from syncd.ports.tables import ROWID_COLUMN, Table
from syncd.sql import qi
from syncd.stores.postgres.types import ColumnMap, parse_override, pg_type_for


@dataclass(slots=True)
class TargetTable:
    """One source table and the PostgreSQL table it is written to."""

    source: Table
    schema: str
    name: str
    columns: tuple[ColumnMap, ...]
    created: bool = False
    copied_from: int | None = None
    """Changelog id the table's last copy was read after (``syncd.objects``); its changes at
    or below it are passed over. None: never copied."""
    copied_epoch: int | None = None
    """Capture epoch (``_syncd_captured``) the last copy was read after."""
    converters: tuple[Converter, ...] = field(default_factory=tuple)
    key_converters: tuple[Converter, ...] = field(default_factory=tuple)
    upsert_sql: str = ""
    on_conflict: str = ""
    """``ON CONFLICT (key) DO …`` of :attr:`upsert_sql`, for an upsert from a staging table."""
    delete_sql: str = ""
    key_index: tuple[int, ...] = ()
    """Where the key's columns are in a converted row."""

    def __post_init__(self) -> None:
        self.converters = tuple(converter(c.pg_type, rounded=c.rounded) for c in self.columns)
        by_name = {c.name: c for c in self.columns}
        names = [c.name for c in self.columns]
        self.key_index = tuple(names.index(k) for k in self.source.pk)
        self.key_converters = tuple(converter(by_name[k].pg_type) for k in self.source.pk)
        qt = self.qualified
        cols = ", ".join(qi(n) for n in names)
        params = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        pk = ", ".join(qi(k) for k in self.source.pk)
        rest = [n for n in names if n not in self.source.pk]
        action = ("DO UPDATE SET " + ", ".join(f"{qi(n)} = EXCLUDED.{qi(n)}" for n in rest)
                  if rest else "DO NOTHING")
        self.on_conflict = f"ON CONFLICT ({pk}) {action}"
        self.upsert_sql = f"INSERT INTO {qt} ({cols}) VALUES ({params}) {self.on_conflict}"
        where = " AND ".join(f"{qi(k)} = ${i}" for i, k in enumerate(self.source.pk, 1))
        self.delete_sql = f"DELETE FROM {qt} WHERE {where}"

    @property
    def key_rounded(self) -> bool:
        """A key column rounds on purpose: a key its converter refuses may name a row stored rounded."""
        return any(c.rounded for c in self.columns if c.name in self.source.pk)

    @property
    def qualified(self) -> str:
        return f"{qi(self.schema)}.{qi(self.name)}"

    def convert_row(self, values: Sequence[Any]) -> tuple[Any, ...]:
        try:
            return tuple([conv(v) for conv, v in zip(self.converters, values, strict=True)])
        except RowError:
            pass
        for col, conv, v in zip(self.columns, self.converters, values, strict=True):
            try:
                conv(v)
            except RowError as exc:  # name the column
                raise RowError(f"column {col.name}: {exc.message}", column=col.name) from None
        raise AssertionError("unreachable")

    def convert_key(self, key: Sequence[Any]) -> tuple[Any, ...]:
        out = []
        for name, conv, v in zip(self.source.pk, self.key_converters, key, strict=True):
            try:
                out.append(conv(v))
            except RowError as exc:
                raise RowError(f"key column {name}: {exc.message}", column=name) from None
        return tuple(out)

    def row_values(self, row: Any) -> list[Any]:
        return [row.get(c.name) for c in self.columns]

    def reason(self, key: Sequence[Any], message: str) -> str:
        """One line for ``syncd.rejects``: table, key, then *message* (which names the column)."""
        names = ["rowid"] if self.source.synthetic_key else list(self.source.pk)
        pairs = ", ".join(f"{n}={v!r}" for n, v in zip(names, key, strict=False))
        return f"{self.name} {pairs} {' '.join(message.split())}"

    def refused(self, key: Sequence[Any], exc: BaseException) -> str:
        """The reason for a row PostgreSQL itself refused, in one line naming the column
        (or the constraint, when the error names no column)."""
        text = str(getattr(exc, "message", None) or exc).splitlines()[0]
        detail = getattr(exc, "detail", None)
        column = getattr(exc, "column_name", None)
        if not column:
            m = re.search(r", column (\S+)", str(getattr(exc, "context", None) or ""))
            column = m.group(1) if m else None
        constraint = getattr(exc, "constraint_name", None)
        where = f"column {column}: " if column else ""
        more = [m for m in (f"constraint {constraint}" if constraint else "", detail or "") if m]
        return self.reason(key, f"{where}{text}{' (' + '; '.join(more) + ')' if more else ''}")


def plan_table(table: Table, target: Target, existing: dict[str, str] | None) -> TargetTable:
    """Map *table* onto the target; adopt *existing* columns (name -> type) when given."""
    cols: list[ColumnMap] = []
    if table.synthetic_key:
        cols.append(ColumnMap(ROWID_COLUMN, "rowid", "bigint", nullable=False))
    for c in table.columns:
        override = target.column_types.get(f"{table.name}.{c.name}")
        pg_type, rounded = parse_override(override) if override else (pg_type_for(c.declared), False)
        cols.append(ColumnMap(c.name, c.declared, pg_type, nullable=not c.notnull, rounded=rounded))
    name = target.table_for(table.name)
    if existing is None:
        return TargetTable(table, target.schema, name, tuple(cols), created=True)
    adopted: list[ColumnMap] = []
    for cm in cols:
        if cm.name not in existing:
            raise SchemaError(
                f"target table {target.schema}.{name} has no column {cm.name!r} "
                f"(SQLite {table.name}.{cm.name} {cm.declared or 'untyped'}); add the column or "
                "drop the table so syncd creates it")
        have = existing[cm.name]
        if not can_hold(cm.pg_type, have):
            raise SchemaError(
                f"target column {target.schema}.{name}.{cm.name} is {have}, which cannot hold "
                f"SQLite {cm.declared or 'untyped'} values (syncd maps them to {cm.pg_type}); change "
                f"the column, or set target.column_types.\"{table.name}.{cm.name}\"")
        adopted.append(ColumnMap(cm.name, cm.declared, have, cm.nullable, cm.rounded))
    return TargetTable(table, target.schema, name, tuple(adopted), created=False)


def create_table_sql(tt: TargetTable) -> str:
    cols = [f"{qi(c.name)} {c.pg_type}{'' if c.nullable or c.name in tt.source.pk else ' NOT NULL'}"
            for c in tt.columns]
    cols.append(f"PRIMARY KEY ({', '.join(qi(k) for k in tt.source.pk)})")
    return f"CREATE TABLE IF NOT EXISTS {tt.qualified} (\n  " + ",\n  ".join(cols) + "\n)"
