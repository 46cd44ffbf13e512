"""PostgreSQL sink for tables: binary COPY for the snapshot, upsert/delete for changes.

Rows, rejects and the checkpoint of a chunk or batch are written in one
transaction. A row PostgreSQL refuses is isolated by bisection (COPY) or by
replaying the batch change by change under savepoints, and goes to
``syncd.rejects``; the rest commits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from syncd.config import Target
from syncd.errors import (
    CaptureError,
    ConfigError,
    RowError,
    SchemaError,
)
from syncd.model import Batch, Change, Checkpoint, Op, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import guarded, transaction, translate
from syncd.pg.state import Reject
from syncd.ports import ApplyResult, Chunk
from syncd.ports.tables import Captured, Table
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.postgres import constraints, schema_change, staged
from syncd.stores.postgres.tables import TargetTable, create_table_sql, plan_table

log = structlog.get_logger("syncd.sink.postgres")

Prepared = tuple[TargetTable, Change, tuple[Any, ...]]


def coalesce(prepared: Sequence[Prepared]) -> list[tuple[TargetTable, list[tuple[Any, ...]],
                                                         list[tuple[Any, ...]]]] | None:
    """Each key's last change, grouped by table (in the order tables first appear): the keys to
    delete and the rows to upsert. A key's final row depends on its last change alone (an
    upsert writes the whole row), so once keys are distinct their order does not matter to the
    rows; it can matter to constraints checked row by row (a unique value moving between two
    rows, a foreign key PostgreSQL checks immediately): PostgreSQL then refuses the grouped
    statements and the caller applies the changes in their order instead. Keys are compared
    after conversion (two source keys the target stores alike are one key). None when a key
    holds a value not equal to itself (NaN), which this comparison cannot group."""
    tables: dict[int, tuple[TargetTable, dict[tuple[Any, ...], tuple[bool, tuple[Any, ...]]]]] = {}
    for tt, ch, args in prepared:
        entry = tables.get(id(tt))
        if entry is None:
            entry = tables[id(tt)] = (tt, {})
        if ch.op is Op.DELETE:
            key = args
        else:
            key = tuple([args[i] for i in tt.key_index])
        if any(v != v for v in key):
            return None
        last = entry[1]
        last.pop(key, None)  # a key's place is its last change's
        last[key] = (ch.op is Op.DELETE, args)
    out = []
    for tt, last in tables.values():
        deletes = [args for is_delete, args in last.values() if is_delete]
        upserts = [args for is_delete, args in last.values() if not is_delete]
        out.append((tt, deletes, upserts))
    return out


class PostgresSink:
    """Writes one SQLite database's tables into PostgreSQL."""

    def __init__(self, conn: asyncpg.Connection, tables: Sequence[TargetTable], *, strict: bool,
                 on_reject: Callable[[int], None] | None = None, source_id: str | None = None,
                 captured: Mapping[str, Captured] | None = None) -> None:
        self.conn = conn
        self.source_id = source_id
        self.captured = dict(captured or {})
        """The source's ``_syncd_captured``: a table captured anew after its copy is copied again."""
        self.tables = {t.source.name: t for t in tables}
        self.strict = strict
        self.on_reject = on_reject

    async def ping(self) -> None:
        async with guarded("checking the target"):
            await self.conn.fetchval("SELECT 1")

    async def close(self) -> None:
        from syncd.pg.connect import close_quietly

        await close_quietly(self.conn)

    # --- schema -------------------------------------------------------------------------

    @staticmethod
    async def existing_columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str] | None:
        rows = await conn.fetch(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""", schema, table)
        if not rows:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = $2", schema, table)
            return {} if exists else None
        return {r["attname"]: r["type"] for r in rows}

    @classmethod
    async def prepare(cls, conn: asyncpg.Connection, stream: str, tables: Sequence[Table],
                      target: Target) -> list[TargetTable]:
        """Create or adopt every target table (idempotent); return the mapping. One transaction,
        under the DDL lock the other streams' set-up takes too (they start at the same time)."""
        try:
            async with transaction(conn):
                await conn.execute("SELECT pg_advisory_xact_lock($1)", pgstate.DDL_LOCK)
                return await cls._prepare_tables(conn, stream, tables, target)
        except (SchemaError, ConfigError):
            raise
        except Exception as exc:
            raise translate(exc, "creating target tables") from exc

    @classmethod
    async def _prepare_tables(cls, conn: asyncpg.Connection, stream: str, tables: Sequence[Table],
                              target: Target) -> list[TargetTable]:
        from syncd.service.checks import target_config

        await target_config(conn, target, tables, Path("the SQLite database"))
        await pgstate.ensure(conn)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qi(target.schema)}")
        planned: list[TargetTable] = []
        for table in tables:
            recorded = await conn.fetchrow(
                f"SELECT created, copied_from, copied_epoch FROM {STATE_SCHEMA}.objects "
                "WHERE stream=$1 AND object=$2", stream, table.name)
            existing = await cls.existing_columns(conn, target.schema, target.table_for(table.name))
            if existing is not None and recorded is not None and recorded["created"]:
                existing = await schema_change.add_columns(conn, table, target, existing)
            tt = plan_table(table, target, existing)
            if existing is None:
                await conn.execute(create_table_sql(tt))
            elif recorded is not None and recorded["created"]:
                await schema_change.relax_dropped(conn, tt)
            if recorded is None:
                await conn.execute(
                    f"INSERT INTO {STATE_SCHEMA}.objects (stream, object, target, created) "
                    "VALUES ($1, $2, $3, $4)", stream, table.name, tt.qualified, tt.created)
            else:
                tt.created = bool(recorded["created"])
                tt.copied_from = recorded["copied_from"]
                tt.copied_epoch = recorded["copied_epoch"]
            planned.append(tt)
        return planned

    async def after_catch_up(self, stream: str) -> None:
        """Create secondary indexes, unique constraints and foreign keys on tables syncd made;
        what PostgreSQL refuses is recorded, and the stream goes on (:mod:`.constraints`)."""
        async with guarded("creating indexes and foreign keys"):
            await constraints.create(self.conn, stream, self.tables)

    # --- checkpoint ---------------------------------------------------------------------

    async def load_checkpoint(self, stream: str) -> Checkpoint | None:
        async with guarded("reading the checkpoint"):
            cp = await pgstate.load_checkpoint(self.conn, stream)
        if cp is not None and cp.source_id and self.source_id and cp.source_id != self.source_id:
            raise CaptureError(
                f"capture in the source was reinstalled since stream {stream!r} checkpointed (its "
                "changelog restarted, so positions no longer match): copy again — TRUNCATE the synced "
                f"tables and DELETE FROM syncd.checkpoints WHERE stream = '{stream}' — then `syncd run`")
        if cp is None or (cp.snapshot is not None and not cp.snapshot.complete):
            return cp
        stale = schema_change.stale_tables(self.tables, self.captured)
        if not stale:
            return cp
        async with guarded("preparing to copy changed tables again"), transaction(self.conn):
            return await schema_change.begin_copy_again(self.conn, stream, cp, self.tables, stale,
                                                        self.captured, self.source_id)

    async def begin_snapshot(self, stream: str, state: SnapshotState) -> None:
        async with guarded("starting the snapshot"), transaction(self.conn):
            for tt in self.tables.values():
                if tt.source.name in state.done or tt.source.name in state.last_key:
                    continue
                if await self.conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {tt.qualified})"):
                    raise SchemaError(
                        f"target table {tt.schema}.{tt.name} already has rows, and syncd copies into "
                        f"empty tables; empty it (TRUNCATE {tt.qualified}) and run again")
            await schema_change.record_snapshot_start(self.conn, stream, state.start.offset, self.tables,
                                                      self.captured)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state, self.source_id)

    async def finish_snapshot(self, stream: str, state: SnapshotState) -> None:
        state.complete = True
        async with guarded("finishing the snapshot"):
            await pgstate.save_checkpoint(self.conn, stream, state.start, state, self.source_id)

    # --- snapshot -----------------------------------------------------------------------

    def prepare_chunk(self, chunk: Chunk) -> tuple[list[tuple[Any, ...]], list[Reject]]:
        """Convert a chunk's rows (pure: safe on the source's reading thread)."""
        tt = self.tables[chunk.object]
        good: list[tuple[Any, ...]] = []
        rejects: list[Reject] = []
        pk_idx = [tt.source.target_columns.index(k) for k in tt.source.pk]
        for raw in chunk.rows:
            try:
                good.append(tt.convert_row(raw))
            except RowError as exc:
                key = [raw[i] for i in pk_idx]
                rejects.append(Reject(tt.name, key, dict(zip(chunk.columns, raw, strict=True)),
                                      tt.reason(key, exc.message)))
        return good, rejects

    async def copy_chunk(self, stream: str, chunk: Chunk, state: SnapshotState) -> ApplyResult:
        tt = self.tables[chunk.object]
        good, rejects = chunk.prepared if chunk.prepared is not None else self.prepare_chunk(chunk)
        pk_idx = [tt.source.target_columns.index(k) for k in tt.source.pk]
        self._check_strict(rejects)
        names = [c.name for c in tt.columns]
        async with guarded(f"copying into {tt.qualified}"), transaction(self.conn):
            await self._copy_isolating(tt, names, good, pk_idx, chunk.columns, rejects)
            self._check_strict(rejects)
            await pgstate.insert_rejects(self.conn, stream, rejects)
            await pgstate.save_checkpoint(self.conn, stream, state.start, state, self.source_id)
        self._count(rejects)
        return ApplyResult(applied=len(chunk.rows) - len(rejects), rejected=len(rejects))

    async def _copy_isolating(self, tt: TargetTable, names: list[str], rows: list[tuple[Any, ...]],
                              pk_idx: list[int], raw_cols: tuple[str, ...],
                              rejects: list[Reject]) -> None:
        if not rows:
            return
        try:
            async with transaction(self.conn):
                await self.conn.copy_records_to_table(
                    tt.name, records=rows, columns=names, schema_name=tt.schema)
        except Exception as exc:
            err = translate(exc, f"copying into {tt.qualified}")
            if not isinstance(err, RowError):
                raise err from exc
            if len(rows) == 1:
                key = [rows[0][i] for i in pk_idx]
                rejects.append(Reject(tt.name, key, dict(zip(raw_cols, rows[0], strict=True)),
                                      tt.refused(key, exc)))
                return
            mid = len(rows) // 2
            await self._copy_isolating(tt, names, rows[:mid], pk_idx, raw_cols, rejects)
            await self._copy_isolating(tt, names, rows[mid:], pk_idx, raw_cols, rejects)

    # --- streaming ----------------------------------------------------------------------

    async def apply(self, stream: str, batch: Batch) -> ApplyResult:
        """Apply a batch in one transaction with its checkpoint. First each key's last change
        only, grouped by table (:func:`coalesce`); if PostgreSQL refuses that, the changes in
        their order; if it refuses those, one by one, the refused ones going to the rejects."""
        prepared, rejects, absent = self._prepare(batch.changes)
        self._check_strict(rejects)
        if await self._applied_grouped(stream, batch, prepared, absent, rejects):
            self._count(rejects)
            return ApplyResult(applied=len(prepared), rejected=len(rejects))
        try:
            async with transaction(self.conn):
                await self._apply_runs(prepared)
                await self._finish_batch(stream, batch, [*prepared, *absent], rejects)
        except Exception as exc:
            err = translate(exc, "applying changes")
            if not isinstance(err, RowError):
                raise err from exc
            async with guarded("applying changes one by one"), transaction(self.conn):
                applied = await self._apply_one_by_one(prepared, rejects)
                self._check_strict(rejects)
                await self._finish_batch(stream, batch, [*applied, *absent], rejects)
            prepared = applied
        self._count(rejects)
        return ApplyResult(applied=len(prepared), rejected=len(rejects))

    def _prepare(self, changes: Sequence[Change]) -> tuple[list[Prepared],
                                                        list[Reject],
                                                        list[Prepared]]:
        """(changes to apply, rejects, deletes of keys the target cannot hold: nothing to delete,
        and the key's open rejects are resolved with the batch)."""
        out: list[Prepared] = []
        rejects: list[Reject] = []
        absent: list[Prepared] = []
        for ch in changes:
            tt = self.tables.get(ch.object)
            if tt is None or (tt.copied_from is not None and ch.position.offset <= tt.copied_from):
                continue  # not synced, or older than the table's copy (copied again after a schema change)
            try:
                if ch.op is Op.DELETE:
                    args = tt.convert_key(ch.key)
                else:
                    args = tt.convert_row(tt.row_values(ch.row))
            except RowError as exc:
                if ch.op is Op.DELETE and not tt.key_rounded:  # no row in the target has this key
                    absent.append((tt, ch, ()))
                    continue
                rejects.append(Reject(tt.name, list(ch.key), ch.row, tt.reason(ch.key, exc.message),
                                      ch.position))
                continue
            out.append((tt, ch, args))
        return out, rejects, absent

    async def _applied_grouped(self, stream: str, batch: Batch, prepared: list[Prepared],
                               absent: list[Prepared], rejects: list[Reject]) -> bool:
        """Apply the batch as :func:`coalesce` groups it; False when it cannot be grouped or
        PostgreSQL refuses a row that way (nothing of it committed)."""
        grouped = coalesce(prepared)
        if grouped is None:
            return False
        try:
            async with transaction(self.conn):
                await self._apply_grouped(grouped)
                await self._finish_batch(stream, batch, [*prepared, *absent], rejects)
        except asyncpg.CardinalityViolationError:
            return False  # two keys PostgreSQL holds equal (:mod:`.staged`): change by change
        except Exception as exc:
            err = translate(exc, "applying changes")
            if not isinstance(err, RowError):
                raise err from exc
            return False
        return True

    async def _apply_grouped(self, grouped: list[tuple[TargetTable, list[tuple[Any, ...]],
                                                        list[tuple[Any, ...]]]]) -> None:
        """Per table: its deleted keys, then its upserted rows (:mod:`.staged`)."""
        for tt, deletes, upserts in grouped:
            if deletes:
                await staged.delete(self.conn, tt, deletes)
            if upserts:
                await staged.upsert(self.conn, tt, upserts)

    async def _apply_runs(self, prepared: list[Prepared]) -> None:
        """Consecutive changes with the same table and statement go in one executemany."""
        i = 0
        while i < len(prepared):
            tt, ch, _ = prepared[i]
            sql = tt.delete_sql if ch.op is Op.DELETE else tt.upsert_sql
            j = i
            args: list[tuple[Any, ...]] = []
            while j < len(prepared):
                tj, cj, aj = prepared[j]
                if tj is not tt or (cj.op is Op.DELETE) != (ch.op is Op.DELETE):
                    break
                args.append(aj)
                j += 1
            await self.conn.executemany(sql, args)
            i = j

    async def _apply_one_by_one(self, prepared: list[Prepared],
                                rejects: list[Reject]) -> list[Prepared]:
        applied = []
        for tt, ch, args in prepared:
            try:
                async with transaction(self.conn):
                    await self.conn.execute(tt.delete_sql if ch.op is Op.DELETE else tt.upsert_sql, *args)
                applied.append((tt, ch, args))
            except Exception as exc:
                err = translate(exc, f"applying a change to {tt.qualified}")
                if not isinstance(err, RowError):
                    raise err from exc
                rejects.append(Reject(tt.name, list(ch.key), ch.row, tt.refused(ch.key, exc), ch.position))
        return applied

    async def _finish_batch(self, stream: str, batch: Batch,
                            applied: list[Prepared],
                            rejects: list[Reject]) -> None:
        await pgstate.insert_rejects(self.conn, stream, rejects)
        if await self._has_open_rejects(stream):
            # a key's open reject is resolved when its last change in the batch was applied
            last: dict[tuple[str, tuple[Any, ...]], tuple[int, bool]] = {}
            for tt, ch, _ in applied:
                last[(tt.name, tuple(ch.key))] = max(last.get((tt.name, tuple(ch.key)), (-1, False)),
                                                     (ch.position.offset, True))
            for r in rejects:
                pos = r.position.offset if r.position else -1
                last[(r.object, tuple(r.key))] = max(last.get((r.object, tuple(r.key)), (-1, False)),
                                                     (pos, False))
            by_table: dict[str, list[tuple[Any, ...]]] = {}
            for (name, key), (_, ok) in last.items():
                if ok:
                    by_table.setdefault(name, []).append(key)
            for name, keys in by_table.items():
                await pgstate.resolve_rejects(self.conn, stream, name, keys)
        await pgstate.save_checkpoint(self.conn, stream, batch.position, None, self.source_id)

    async def _has_open_rejects(self, stream: str) -> bool:
        return bool(await self.conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.rejects "
            "WHERE stream = $1 AND resolved_at IS NULL)", stream))

    def _check_strict(self, rejects: list[Reject]) -> None:
        pgstate.stop_if_strict(self.strict, rejects, items=False, fix=pgstate.ROW_FIX)

    def _count(self, rejects: list[Reject]) -> None:
        pgstate.report_rejects(rejects, self.on_reject)
