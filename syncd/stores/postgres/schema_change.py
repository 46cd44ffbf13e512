"""A captured SQLite table changed: the target follows, and the table is copied again.

An app that migrates while syncd streams (``ALTER TABLE … ADD COLUMN``, the rebuild that
ORMs do for other changes — new table, copy, drop, rename — or a new table) leaves the
changelog with images that lack the new column, or with nothing at all for a rebuilt table
(its triggers went with the old table). The source re-installs capture under the write lock
and records, per table, the changelog id it did so at (``_syncd_captured``). Then:

1. :func:`add_columns`: columns the source gained are added to tables syncd created (an
   adopted table must get them from the app's own migrations: refused with the column named);
2. :func:`stale_tables`: a table whose capture is newer than the copy the target holds
   (capture epoch in ``_syncd_captured`` above ``syncd.objects.copied_epoch``) must be
   copied again. An epoch, not a position: with no change logged in between, a re-capture
   and the copy before it share the changelog head;
3. :func:`begin_copy_again`, in one transaction: foreign keys syncd made on or to the table
   dropped (re-created after catch-up, as after the first snapshot), the table emptied
   (TRUNCATE if syncd created it and nothing else references it, else DELETE), its
   open rejects closed, ``copied_from`` / ``copied_epoch`` set to the capture's, and the stream's checkpoint
   turned into a snapshot in which every other table is done. The stream then copies the
   table in resumable chunks and replays from where it was; the sink passes over the
   table's changes at or below ``copied_from`` (the copy, read later, holds their effect).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import asyncpg
import structlog

from syncd.config import Target
from syncd.errors import SchemaError
from syncd.model import Checkpoint, SnapshotState
from syncd.pg import state as pgstate
from syncd.ports.tables import ROWID_COLUMN, Captured, Table
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.postgres.tables import TargetTable
from syncd.stores.postgres.types import parse_override, pg_type_for

log = structlog.get_logger("syncd.sink.postgres")

OBJECTS = f"{STATE_SCHEMA}.objects"


async def add_columns(conn: asyncpg.Connection, table: Table, target: Target,
                      existing: dict[str, str]) -> dict[str, str]:
    """Add the source's columns the target table lacks (a table syncd created); return its
    columns afterwards. Nullable: rows get their values from the copy that follows."""
    if table.synthetic_key and ROWID_COLUMN not in existing:  # it lost its primary key
        await conn.execute(f"ALTER TABLE {qi(target.schema)}.{qi(table.name)} "
                           f"ADD COLUMN IF NOT EXISTS {qi(ROWID_COLUMN)} bigint")
        existing = {**existing, ROWID_COLUMN: "bigint"}
    missing = [c for c in table.columns if c.name not in existing]
    for c in missing:
        override = target.column_types.get(f"{table.name}.{c.name}")
        pg_type = parse_override(override)[0] if override else pg_type_for(c.declared)
        await conn.execute(f"ALTER TABLE {qi(target.schema)}.{qi(table.name)} "
                           f"ADD COLUMN IF NOT EXISTS {qi(c.name)} {pg_type}")
        existing = {**existing, c.name: pg_type}
        log.info("column added to the target", table=table.name, column=c.name, type=pg_type)
    return existing


async def align_keys(conn: asyncpg.Connection, tt: TargetTable) -> None:
    """Give an (empty) table syncd created the source's primary key and NOT NULLs: a rebuild
    may change only those, with the same column names and types. A column the source no longer
    has (kept in the target, NULL from now on) loses its NOT NULL. The caller holds a transaction."""
    key = await conn.fetchrow(
        """SELECT c.conname, array_agg(a.attname::text ORDER BY k.n) AS cols FROM pg_constraint c
           CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
           WHERE c.conrelid = $1::regclass AND c.contype = 'p' GROUP BY c.conname""", tt.qualified)
    want = list(tt.source.pk)
    if key is None or list(key["cols"]) != want:
        if key is not None:
            await conn.execute(f"ALTER TABLE {tt.qualified} DROP CONSTRAINT {qi(key['conname'])}")
        if not tt.source.synthetic_key:
            await conn.execute(f"ALTER TABLE {tt.qualified} DROP COLUMN IF EXISTS {qi(ROWID_COLUMN)}")
        await conn.execute(f"ALTER TABLE {tt.qualified} ADD PRIMARY KEY ({', '.join(qi(k) for k in want)})")
        log.info("primary key changed in SQLite: changed in the target", table=tt.name,
                 was=list(key["cols"]) if key else None, now=want)
    notnull = dict(await conn.fetch(
        """SELECT attname::text, attnotnull FROM pg_attribute
           WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped""", tt.qualified))
    for c in tt.source.columns:
        want_notnull = c.notnull or c.name in tt.source.pk
        if c.name in notnull and notnull[c.name] != want_notnull:
            await conn.execute(f"ALTER TABLE {tt.qualified} ALTER COLUMN {qi(c.name)} "
                               f"{'SET' if want_notnull else 'DROP'} NOT NULL")
            log.info("NOT NULL changed in SQLite: changed in the target", table=tt.name, column=c.name,
                     not_null=want_notnull)
    await relax_dropped(conn, tt, notnull)


async def relax_dropped(conn: asyncpg.Connection, tt: TargetTable,
                        notnull: Mapping[str, bool] | None = None) -> None:
    """A column of a table syncd created that the source no longer has is kept, NULL from now
    on: it loses its NOT NULL, or every row written after would be refused. Run at each start
    too: the column may have gone before the first copy (``init`` created the table, the app's
    migration ran, then ``run``). The caller holds a transaction."""
    if notnull is None:
        notnull = dict(await conn.fetch(
            """SELECT attname::text, attnotnull FROM pg_attribute
               WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped""", tt.qualified))
    kept = {c.name for c in tt.source.columns} | {ROWID_COLUMN}
    for name, is_notnull in notnull.items():  # dropped in SQLite: kept, NULL from now on
        if is_notnull and name not in kept:
            await conn.execute(f"ALTER TABLE {tt.qualified} ALTER COLUMN {qi(name)} DROP NOT NULL")
            log.info("column dropped in SQLite: its NOT NULL dropped in the target", table=tt.name,
                     column=name)


def stale_tables(tables: Mapping[str, TargetTable], captured: Mapping[str, Captured]) -> list[str]:
    """Tables whose capture was (re)installed after the copy the target holds was read."""
    out = []
    for name, tt in tables.items():
        c = captured.get(name)
        if c is not None and (tt.copied_epoch is None or c.epoch > tt.copied_epoch):
            out.append(name)
    return out


async def begin_copy_again(conn: asyncpg.Connection, stream: str, checkpoint: Checkpoint,
                           tables: Mapping[str, TargetTable], names: Sequence[str],
                           captured: Mapping[str, Captured], source_id: str | None) -> Checkpoint:
    """Empty *names* and hand the stream a snapshot of just those (module docstring, step 3).
    The caller holds a transaction."""
    replica = await conn.fetchval("SHOW session_replication_role") == "replica"
    created = {(tt.schema, tt.name) for tt in tables.values() if tt.created}
    for name in names:
        tt = tables[name]
        referenced = False
        for c in await conn.fetch(
                """SELECT c.conname, n.nspname, r.relname, c.confrelid = $1::regclass AS incoming
                   FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                   JOIN pg_namespace n ON n.oid = r.relnamespace
                   WHERE c.contype = 'f' AND (c.conrelid = $1::regclass OR c.confrelid = $1::regclass)""",
                tt.qualified):
            ours = ((c["nspname"], c["relname"]) in created
                    and re.fullmatch(re.escape(c["relname"]) + r"_fk\d+", c["conname"]) is not None)
            if ours:
                await conn.execute(f"ALTER TABLE {qi(c['nspname'])}.{qi(c['relname'])} "
                                   f"DROP CONSTRAINT IF EXISTS {qi(c['conname'])}")
            elif c["incoming"]:
                referenced = True
                if replica:
                    continue
                raise SchemaError(
                    f"table {name!r} changed in SQLite and must be copied again, but foreign key "
                    f"{c['conname']} on {c['nspname']}.{c['relname']} references {tt.qualified}: emptying "
                    "it would fail or cascade. Let syncd set session_replication_role (superuser, or "
                    "GRANT SET ON PARAMETER session_replication_role), or drop that constraint until "
                    "the stream is streaming again")
        # TRUNCATE is immediate. A table still referenced (replica role: no check fires) or one
        # syncd did not create (its role may not own it) is emptied row by row instead, which
        # for a large table costs PostgreSQL seconds of I/O.
        truncate = tt.created and not referenced
        await conn.execute(f"{'TRUNCATE' if truncate else 'DELETE FROM'} {tt.qualified}")
        if tt.created:
            await align_keys(conn, tt)
        await conn.execute(f"UPDATE {OBJECTS} SET copied_from = $3, copied_epoch = $4 "
                           "WHERE stream = $1 AND object = $2", stream, name, captured[name].since,
                           captured[name].epoch)
        await conn.execute(
            f"UPDATE {STATE_SCHEMA}.rejects SET resolved_at = now() "
            "WHERE stream = $1 AND object = $2 AND resolved_at IS NULL", stream, tt.name)
        tt.copied_from, tt.copied_epoch = captured[name].since, captured[name].epoch
    state = SnapshotState(start=checkpoint.position, done=[n for n in tables if n not in names])
    await pgstate.save_checkpoint(conn, stream, checkpoint.position, state, source_id)
    log.info("copying tables again: they changed in SQLite (schema, or rowids)", tables=list(names),
             replay_from=checkpoint.position.offset)
    return Checkpoint(position=checkpoint.position, snapshot=state, source_id=checkpoint.source_id)


async def record_snapshot_start(conn: asyncpg.Connection, stream: str, start: int,
                                tables: Mapping[str, TargetTable], captured: Mapping[str, Captured]) -> None:
    """A snapshot of every table begins: each copy is read after *start* and after the
    capture epochs known now (a re-capture while it runs raises the epoch, so the table is
    copied again once the snapshot is done). The caller holds a transaction."""
    names = list(tables)
    epochs = [captured[n].epoch if n in captured else None for n in names]
    await conn.execute(
        f"""UPDATE {OBJECTS} o SET copied_from = $2, copied_epoch = c.epoch
            FROM unnest($3::text[], $4::bigint[]) AS c(object, epoch)
            WHERE o.stream = $1 AND o.object = c.object""", stream, start, names, epochs)
    for n, epoch in zip(names, epochs, strict=True):
        tables[n].copied_from, tables[n].copied_epoch = start, epoch
