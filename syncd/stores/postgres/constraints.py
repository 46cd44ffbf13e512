"""Secondary indexes, unique constraints and foreign keys on the tables syncd made, added once
the stream has caught up; what PostgreSQL refuses is recorded and the rows stream on.

SQLite accepts schemas and data PostgreSQL refuses for them: a child ``INTEGER`` column
referencing a parent's ``TEXT`` key (42804), a foreign key to columns with no unique index
(42830), a UNIQUE index over rows SQLite holds as distinct but PostgreSQL as equal (two
spellings of one timestamp, ``1`` and ``'1'`` in an untyped column: 23505), orphans under a
foreign key SQLite never enforced because ``PRAGMA foreign_keys`` was off (23503, when the
key is validated), values too long for a B-tree (54000). The rows are already right and
streaming, so none of this stops the stream: each refusal is one warning (table, name,
PostgreSQL's reason, what to do) and a row of ``syncd.refused_constraints`` — which
``syncd status`` lists and ``syncd verify`` shows as a warning — and it is tried again each
time the stream catches up after a start; a success deletes the row. Any other error (the
connection lost, a privilege missing) is raised as before. Decision: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog

from syncd.pg.connect import translate
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.postgres.tables import TargetTable

log = structlog.get_logger("syncd.sink.postgres")

REFUSED = f"{STATE_SCHEMA}.refused_constraints"

_REFUSING = ("22", "23", "42", "54", "0A")
"""SQLSTATE classes of PostgreSQL refusing a statement for the schema or the data it holds:
data exception, integrity violation, syntax or access rule (42501, a missing privilege, is
not one: :func:`translate` makes it fatal), program limit, feature not supported."""

_AGAIN = "the rows stream on regardless; syncd tries again at its next start"
_HINTS = {
    "42804": "the two columns' types differ in PostgreSQL: make them agree (ALTER TABLE … ALTER "
             "COLUMN … TYPE …) — ",
    "42830": "the referenced columns have no unique index in PostgreSQL (see that table's refused "
             "index, if any) — ",
    "23505": "rows SQLite holds as distinct are equal in PostgreSQL (the reason names them): make "
             "them distinct in SQLite — ",
    "23503": "rows reference parents that do not exist (SQLite did not enforce the key: PRAGMA "
             "foreign_keys was off): fix or delete them in SQLite; until then the key stays NOT VALID "
             "(checked for new rows only) — ",
    "54000": "values too long for a B-tree index: drop the index in SQLite, or index a hash of "
             "them yourself — ",
}


def refusal(exc: BaseException) -> str | None:
    """PostgreSQL's reason in one line, when *exc* is PostgreSQL refusing the statement."""
    state = getattr(exc, "sqlstate", None)
    if not isinstance(exc, asyncpg.PostgresError) or not isinstance(state, str) \
            or state == "42501" or state[:2] not in _REFUSING:
        return None
    text = str(getattr(exc, "message", None) or exc).splitlines()[0]
    detail = " ".join(str(getattr(exc, "detail", None) or "").split())
    return f"{text} ({detail})" if detail else text


def todo(exc: BaseException) -> str:
    """What the operator can do about a refusal."""
    return _HINTS.get(str(getattr(exc, "sqlstate", "")), "make PostgreSQL accept it (see the reason), "
                      "or create it yourself — ") + _AGAIN


class Ledger:
    """This stream's rows of ``syncd.refused_constraints``, kept while the stream adds its
    indexes and keys."""

    def __init__(self, conn: asyncpg.Connection, stream: str) -> None:
        self.conn = conn
        self.stream = stream
        self.before: set[tuple[str, str]] = set()
        self.seen: set[tuple[str, str]] = set()
        self.refused = 0

    async def load(self) -> None:
        rows = await self.conn.fetch(f"SELECT object, name FROM {REFUSED} WHERE stream = $1", self.stream)
        self.before = {(r["object"], r["name"]) for r in rows}

    async def attempt(self, tt: TargetTable, name: str, kind: str, sql: str, *, last: bool = True) -> bool:
        """Run *sql*; True when PostgreSQL took it. A refusal is logged and recorded; a success of
        the *last* step clears an earlier refusal's record."""
        self.seen.add((tt.source.name, name))
        try:
            await self.conn.execute(sql)
        except Exception as exc:
            reason = refusal(exc)
            if reason is None:
                raise translate(exc, f"creating {kind} {name} on {tt.qualified}") from exc
            what = todo(exc)
            log.warning("PostgreSQL refused an index or constraint", stream=self.stream,
                        table=tt.source.name, name=name, kind=kind, reason=reason, todo=what)
            await self.conn.execute(
                f"""INSERT INTO {REFUSED} AS r (stream, object, name, kind, statement, error, todo)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    ON CONFLICT (stream, object, name) DO UPDATE SET kind = EXCLUDED.kind,
                        statement = EXCLUDED.statement, error = EXCLUDED.error, todo = EXCLUDED.todo,
                        last_at = now(), attempts = r.attempts + 1""",
                self.stream, tt.source.name, name, kind, sql, reason, what)
            self.refused += 1
            return False
        if last:
            await self.done(tt, name, kind)
        return True

    async def done(self, tt: TargetTable, name: str, kind: str) -> None:
        self.seen.add((tt.source.name, name))
        if (tt.source.name, name) in self.before:
            self.before.discard((tt.source.name, name))
            await self.conn.execute(f"DELETE FROM {REFUSED} WHERE stream = $1 AND object = $2 AND name = $3",
                                    self.stream, tt.source.name, name)
            log.info("created what PostgreSQL refused before", stream=self.stream, table=tt.source.name,
                     name=name, kind=kind)

    async def forget_the_rest(self) -> None:
        """Drop the rows of indexes and keys the source no longer has."""
        for obj, name in self.before - self.seen:
            await self.conn.execute(f"DELETE FROM {REFUSED} WHERE stream = $1 AND object = $2 AND name = $3",
                                    self.stream, obj, name)


async def create(conn: asyncpg.Connection, stream: str, tables: Mapping[str, TargetTable]) -> int:
    """Create the indexes, unique constraints and foreign keys of the tables syncd made (those it
    adopted are left as they are); return how many PostgreSQL refused."""
    ledger = Ledger(conn, stream)
    await ledger.load()
    for tt in tables.values():
        if not tt.created:
            continue
        for idx in tt.source.indexes:
            sql = (f"CREATE {'UNIQUE ' if idx.unique else ''}INDEX IF NOT EXISTS {qi(idx.name)} "
                   f"ON {tt.qualified} ({', '.join(qi(c) for c in idx.columns)})")
            await ledger.attempt(tt, idx.name, "unique index" if idx.unique else "index", sql)
        for name in tt.source.skipped_indexes:
            log.warning("index not recreated (expression or partial index)", table=tt.name, index=name)
    for tt in tables.values():
        if tt.created:
            await _foreign_keys(ledger, tt, tables)
    await ledger.forget_the_rest()
    return ledger.refused


async def _foreign_keys(ledger: Ledger, tt: TargetTable, tables: Mapping[str, TargetTable]) -> None:
    for i, fk in enumerate(tt.source.foreign_keys):
        ref = tables.get(fk.ref_table)
        if ref is None:
            log.warning("foreign key skipped: referenced table is not synced", table=tt.name,
                        references=fk.ref_table)
            continue
        cname = f"{tt.name}_fk{i}"
        validated = await ledger.conn.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = $1 AND conrelid = $2::regclass",
            cname, tt.qualified)
        if validated:
            await ledger.done(tt, cname, "foreign key")
            continue
        if validated is None:
            actions = "".join(
                f" ON {what} {action}"
                for what, action in (("DELETE", fk.on_delete), ("UPDATE", fk.on_update))
                if action and action.upper() not in ("NO ACTION", "NONE"))
            sql = (f"ALTER TABLE {tt.qualified} ADD CONSTRAINT {qi(cname)} FOREIGN KEY "
                   f"({', '.join(qi(c) for c in fk.columns)}) REFERENCES {ref.qualified} "
                   f"({', '.join(qi(c) for c in fk.ref_columns)}){actions} "
                   "DEFERRABLE INITIALLY DEFERRED NOT VALID")
            if not await ledger.attempt(tt, cname, "foreign key", sql, last=False):
                continue
        await ledger.attempt(tt, cname, "foreign key validation",
                             f"ALTER TABLE {tt.qualified} VALIDATE CONSTRAINT {qi(cname)}")


async def recorded(conn: asyncpg.Connection, stream: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``syncd.refused_constraints`` (none when syncd's tables predate it)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", REFUSED):
        return []
    rows = await conn.fetch(
        f"""SELECT stream, object, name, kind, error, todo, attempts, first_at, last_at FROM {REFUSED}
            WHERE $1::text IS NULL OR stream = $1 ORDER BY stream, object, name""", stream)
    return [dict(r) for r in rows]
