"""PostgreSQL source (reverse direction): changes from ``syncd.changelog``, as SQLite values.

After the cutover the app writes to PostgreSQL; this source reads those writes back for
the tables of the SQLite stream, through :class:`syncd.changelog.ChangeReader` (safe
horizon, LISTEN/NOTIFY). There is no snapshot: the reverse stream starts at the position
recorded at the cutover flip, when SQLite already holds everything.

Row images are converted back to what the app would have stored in SQLite: the inverse of
:mod:`syncd.stores.postgres.types`, chosen by the PostgreSQL column type and the column's declared SQLite
type (docs/mapping.md, "Reverse direction"). The test of each rule is the round trip:
mapping the converted value forward again gives the value PostgreSQL holds. A value SQLite
cannot hold (NaN, an array) becomes an :class:`Unfit` in the image, and the sink records
the change as a reject instead of writing it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from syncd.errors import CaptureError, RowError, SchemaError
from syncd.model import Batch, Change, Key, Position
from syncd.pg.changelog import ChangeReader, LogRow
from syncd.pg.datetime import Infinity, OutOfRange
from syncd.ports import Chunk, Pending
from syncd.ports.tables import ROWID_COLUMN, Table, Unfit, affinity

log = structlog.get_logger("syncd.source.postgres")

# --- values: PostgreSQL -> SQLite --------------------------------------------------------


_JSON_TOKENS = re.compile(r'("(?:[^"\\]|\\.)*")|\s+')


def compact_json(text: str) -> str:
    """*text* without the whitespace between tokens; strings and numbers stay as written."""
    return _JSON_TOKENS.sub(lambda m: m.group(1) or "", text)


def sqlite_datetime(value: dt.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]``; an aware value in UTC with ``+00:00``."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.isoformat(sep=" ")


def _epoch(value: dt.datetime, aff: str) -> int | float:
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    delta = aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    if aff == "INTEGER" and not delta.microseconds:
        return delta.days * 86400 + delta.seconds
    return delta.total_seconds()


def _numeric(value: Decimal) -> int | float | str:
    if not value.is_finite():
        raise RowError(f"numeric {value} has no SQLite form (SQLite stores NaN as NULL)")
    if value == value.to_integral_value() and -(2**63) <= value < 2**63:
        return int(value)
    as_float = float(value)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
        return as_float
    return str(value)  # more digits than a REAL holds: the column's affinity decides, as for the app


def _float(value: float) -> float:
    if math.isnan(value):
        raise RowError("NaN has no SQLite form (SQLite stores NaN as NULL)")
    return value


def to_sqlite(value: Any, pg_type: str, declared: str) -> Any:
    """The SQLite value for *value* read from a PostgreSQL column of *pg_type*, going into a
    SQLite column declared *declared*. Raises :class:`RowError` when SQLite cannot hold it."""
    if value is None:
        return None
    aff = affinity(declared)
    if isinstance(value, Infinity):
        if aff in ("INTEGER", "REAL"):
            raise RowError(f"{pg_type} {value} has no Unix-time form for a SQLite {declared} column")
        return str(value)  # 'infinity' / '-infinity': the forward mapping reads it back as such
    if isinstance(value, OutOfRange):
        raise RowError(f"{value} has no SQLite form syncd writes")
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, dt.datetime):
        return _epoch(value, aff) if aff in ("INTEGER", "REAL") else sqlite_datetime(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return _numeric(value)
    if isinstance(value, uuid.UUID):
        return value.bytes if aff == "BLOB" and declared.strip() else str(value)
    if isinstance(value, str):
        if base_is_jsonb(pg_type):
            return compact_json(value)
        return value
    if isinstance(value, int | bytes):
        return value
    raise RowError(f"PostgreSQL {pg_type} value {_short(value)} has no SQLite form")


def base_is_jsonb(pg_type: str) -> bool:
    return pg_type.strip().lower() == "jsonb"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReverseTable:
    """A SQLite table and the PostgreSQL table its rows come back from."""

    sqlite: Table
    pg_types: Mapping[str, str]
    """PostgreSQL column -> type, for the columns both tables have (plus ``_syncd_rowid``)."""

    def convert(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """The SQLite image of a PostgreSQL row: SQLite columns only; unfit values marked."""
        out: dict[str, Any] = {}
        if self.sqlite.synthetic_key:
            out[ROWID_COLUMN] = image.get(ROWID_COLUMN)
        for col in self.sqlite.columns:
            if col.name not in self.pg_types:
                continue
            try:
                out[col.name] = to_sqlite(image.get(col.name), self.pg_types[col.name], col.declared)
            except RowError as exc:
                out[col.name] = Unfit(image.get(col.name), f"column {col.name!r}: {exc.message}")
        return out

    def convert_key(self, key: Sequence[Any]) -> Key:
        if self.sqlite.synthetic_key:
            return tuple(key)
        declared = {c.name: c.declared for c in self.sqlite.columns}
        out: list[Any] = []
        for name, v in zip(self.sqlite.pk, key, strict=True):
            try:
                out.append(to_sqlite(v, self.pg_types[name], declared[name]))
            except RowError as exc:
                out.append(Unfit(v, f"key column {name!r}: {exc.message}"))
        return tuple(out)


def plan(tables: Sequence[Table], pg_columns: Mapping[str, Mapping[str, str]],
         schema: str) -> list[ReverseTable]:
    """Pair each SQLite table with its PostgreSQL table; refuse what cannot come back."""
    out = []
    for table in tables:
        have = pg_columns.get(table.name) or {}
        if not have:
            raise SchemaError(f"SQLite table {table.name!r} has no PostgreSQL table {schema}.{table.name} "
                              "to sync back from; the reverse stream needs the tables the forward "
                              "stream created or adopted")
        for key in table.pk:
            if key not in have:
                raise SchemaError(f"PostgreSQL table {schema}.{table.name} has no key column {key!r} "
                                  f"of SQLite table {table.name!r}")
        extra = [c for c in have if c not in table.column_names and c != ROWID_COLUMN]
        if extra:
            log.info("PostgreSQL columns with no SQLite column are not synced back", table=table.name,
                     columns=extra)
        out.append(ReverseTable(table, {c: t for c, t in have.items()
                                        if c in table.column_names or c == ROWID_COLUMN}))
    return out


# --- the source --------------------------------------------------------------------------


class PostgresSource:
    """Changes the app made in PostgreSQL to the SQLite stream's tables, as SQLite values.

    Opens lazily (the stream builder is synchronous): the first call reads the SQLite schema
    and the PostgreSQL column types.
    """

    def __init__(self, reader: ChangeReader, read_tables: Callable[[], list[Table]],
                 pg_name: Callable[[str], str] = str) -> None:
        self.reader = reader
        self.read_tables = read_tables
        """The SQLite tables of the forward stream, described (a blocking call)."""
        self.pg_name = pg_name
        """SQLite table -> its PostgreSQL table (``[target.table_names]``)."""
        self.tables: dict[str, ReverseTable] = {}
        self._by_pg: dict[str, str] = {}
        self.source_id: str | None = None
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Read both schemas and the changelog generation (once)."""
        async with self._lock:
            if self._ready:
                return
            tables = await asyncio.to_thread(self.read_tables)
            pg_columns = {t.name: await self.reader.columns(self.pg_name(t.name)) for t in tables}
            self.tables = {t.sqlite.name: t for t in plan(tables, pg_columns, self.reader.schema)}
            self._by_pg = {self.pg_name(name): name for name in self.tables}
            self.source_id = await self.reader.generation()
            if self.source_id is None:
                raise CaptureError("reverse capture is not installed in PostgreSQL "
                                   f"(no syncd.changelog): install it for schema {self.reader.schema!r}")
            self._ready = True

    async def close(self) -> None:
        await self.reader.close()

    async def head(self) -> Position:
        return await self.reader.head()

    def snapshot_objects(self) -> Sequence[str]:
        return []  # SQLite already holds everything at the cutover flip

    async def count(self, obj: str) -> int:
        return 0

    async def snapshot_chunks(self, obj: str, after: Key | None, rows: int,
                              prepare: Callable[[Chunk], Any] | None = None) -> AsyncIterator[Chunk]:
        raise CaptureError(f"the reverse stream copies no snapshot (asked for {obj!r})")
        yield  # pragma: no cover  (makes this an async generator)

    def to_change(self, row: LogRow) -> Change:
        name = self._by_pg.get(row.table, row.table)
        table = self.tables[name]
        image = table.convert(row.row) if row.row is not None else None
        return Change(op=row.op, object=name, key=table.convert_key(row.key), row=image,
                      position=row.position, committed_at=row.committed_at)

    async def changes(self, after: Position, limit: int) -> Batch:
        await self.ensure()
        rows = await self.reader.read(after, limit, self._by_pg.keys())
        changes = [self.to_change(r) for r in rows]
        return Batch(changes=changes, position=rows[-1].position if rows else after)

    async def pending(self, after: Position) -> Pending:
        await self.ensure()
        return await self.reader.pending(after, self._by_pg.keys())

    async def wait(self, timeout: float) -> None:
        await self.reader.wait(timeout)

    async def prune(self, upto: Position) -> int:
        await self.ensure()
        return await self.reader.prune(upto, self._by_pg.keys())

