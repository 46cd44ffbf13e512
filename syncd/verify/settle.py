"""Settling suspects: telling persistent differences from changes still in flight.

A scan compares SQLite and PostgreSQL at different moments, so a row that
changed meanwhile looks different. Each settle round reads, in one REPEATABLE
READ transaction, the stream's checkpoint ``c`` and the suspect ranges in
PostgreSQL; then, in one SQLite read, the same ranges and the changelog after
``c``. A row with no change logged after ``c`` holds the same value in SQLite
now as at ``c``, and PostgreSQL at ``c`` holds everything up to ``c`` (the
checkpoint commits with its batch): a difference there is definitive. A row
changed after ``c`` is re-read in the next round, after the checkpoint has
passed what this round saw. A key is judged over everything a round read, not
per range, so a row that the two stores order differently (and so lies in two
ranges) is still paired with itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.model import Key
from syncd.pg.state import jsonable
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.postgres.tables import TargetTable
from syncd.verify.canon import part_hash
from syncd.verify.report import CheckResult, Difference, Rejected
from syncd.verify.rows import (
    CanonKey,
    Finding,
    PgRow,
    Range,
    Row,
    Stall,
    TableContext,
    TableOptions,
    sort_key,
)
from syncd.verify.sqlite import Raw, Tail


class TableCheck(Protocol):
    """What settling needs of a table's check (:class:`syncd.verify.tables.TableCheck`)."""

    @property
    def tt(self) -> TargetTable: ...
    @property
    def ctx(self) -> TableContext: ...
    @property
    def opts(self) -> TableOptions: ...
    @property
    def raw_key_idx(self) -> list[int]: ...
    def key_only(self, raw_key: Key) -> tuple[Key | None, CanonKey]: ...
    def prepare(self, raws: Sequence[Raw], note_rounded: bool = False) -> list[Row]: ...
    async def pg_rows(self, ranges: Sequence[Range], parts: bool) -> list[list[PgRow]]: ...


async def wait_checkpoint(ctx: TableContext, position: int, deadline: float, stall: Stall) -> None:
    """Until the stream's checkpoint reaches *position*, the deadline passes, or the stream stalls."""
    while time.monotonic() < deadline and not stall.stuck:
        c = await ctx.checkpoint()
        stall.seen(c)
        if c >= position:
            return
        await asyncio.sleep(0.1)


@dataclass(slots=True)
class Outcome:
    findings: dict[CanonKey, Finding] = field(default_factory=dict)
    """Definitive differences by key (keys found equal are not here)."""
    unsettled: list[Key] = field(default_factory=list)
    note: str = ""


@dataclass(slots=True)
class _Round:
    """Everything one round read, by key, and the ranges each key was read in."""

    sqlite: dict[CanonKey, Row] = field(default_factory=dict)
    pg: dict[CanonKey, PgRow] = field(default_factory=dict)
    ranges: dict[CanonKey, list[Range]] = field(default_factory=dict)

    def add(self, rng: Range, rows: Sequence[Row], pg: Sequence[PgRow]) -> None:
        for row in rows:
            self.sqlite[row.key] = row
            self.ranges.setdefault(row.key, []).append(rng)
        for p in pg:
            self.pg[p.key] = p
            self.ranges.setdefault(p.key, []).append(rng)


class Settler:
    """Settles one table's suspect ranges, round after round, until the deadline."""

    def __init__(self, check: TableCheck, deadline: float) -> None:
        self.check, self.ctx = check, check.ctx
        self.deadline = deadline
        self.stall = check.ctx.stall

    async def settle(self, ranges: Sequence[Range], newest: int,
                     only: set[CanonKey] | None = None) -> Outcome:
        """Settle the keys read in *ranges* (only those in *only*, when given)."""
        out = Outcome()
        decided: set[CanonKey] = set()
        pending = {r.ident: r for r in ranges}
        moving: dict[CanonKey, Key] = {}
        target = newest
        while pending:
            await wait_checkpoint(self.ctx, target, self.deadline, self.stall)
            seen, tail, c = await self._read(list(pending.values()))
            target = tail.head
            if tail.complete:
                pending, moving = self._judge(seen, tail, decided, out, only)
                # Later rounds judge only the keys still in flight here: a key that first
                # appears after this round was written after verify read the range (an
                # append-only table's open last range gains new keys in every round, and
                # would never settle otherwise); the next verify sees it.
                only = set(moving)
            if not pending:
                break
            if time.monotonic() >= self.deadline or self.stall.stuck:
                if self.stall.stuck:
                    out.note = (f"the stream's checkpoint stayed at {c} while changes were pending "
                                "(is syncd running?)")
                break
        out.unsettled = list(moving.values()) if pending else []
        if pending and not out.unsettled:  # the changelog was pruned under every round
            out.unsettled = [r.hi.raw_key if r.hi else ("end",) for r in pending.values()]
        return out

    async def _read(self, todo: list[Range]) -> tuple[_Round, Tail, int]:
        async with self.ctx.conn.transaction(isolation="repeatable_read", readonly=True):
            c = await self.ctx.checkpoint()
            pg = await self.check.pg_rows(todo, parts=True)
        raws, tail = await self.ctx.reader.ranges(self.check.tt.source, [r.bounds() for r in todo], c)
        self.stall.seen(c)
        seen = _Round()
        for rng, p, raw in zip(todo, pg, raws, strict=True):
            seen.add(rng, self.check.prepare(raw), p)
        return seen, tail, c

    def _judge(self, seen: _Round, tail: Tail, decided: set[CanonKey], out: Outcome,
               only: set[CanonKey] | None) -> tuple[dict[Any, Range], dict[CanonKey, Key]]:
        """Decide every key not decided yet; return the ranges to read again and the keys moving."""
        in_flight = {self.check.key_only(k)[1] for k in tail.keys}
        again: dict[Any, Range] = {}
        moving: dict[CanonKey, Key] = {}
        for key in seen.sqlite.keys() | seen.pg.keys():
            if key in decided or (only is not None and key not in only):
                continue
            s, p = seen.sqlite.get(key), seen.pg.get(key)
            if s is not None and s.parts is not None and p is not None and s.hash == p.hash:
                decided.add(key)
                continue
            if (s is not None and s.raw_key in tail.keys) or key in in_flight:
                moving[key] = s.raw_key if s is not None else p.key_values if p is not None else key
                again.update((r.ident, r) for r in seen.ranges[key])
                continue
            decided.add(key)
            out.findings[key] = Finding(key, s, p, seen.ranges[key])
        return again, moving


async def locate(check: TableCheck, keys: set[CanonKey]) -> list[Range]:
    """Ranges around the SQLite rows with these keys, wherever SQLite's own order puts them."""
    out: list[Range] = []
    table, n = check.tt.source, check.opts.chunk_rows
    prev: Row | None = None
    after: Key | None = None
    while True:
        raws, _ = await check.ctx.reader.page(table, after, n)
        for raw in raws:
            raw_key = tuple(raw[i] for i in check.raw_key_idx)
            conv, key = check.key_only(raw_key)
            row = Row(raw_key, conv, key, None)
            if key in keys:
                out.append(Range(prev, row))
            if conv is not None:
                prev = row
        if len(raws) < n:
            return out
        after = tuple(raws[-1][i] for i in check.raw_key_idx)


def classify(check: TableCheck, findings: Sequence[Finding], result: CheckResult,
             recorded: dict[str, str]) -> None:
    """Sort findings into differences and rejects (*recorded*: open rejects by key)."""
    names = [c.name for c in check.tt.columns]
    for f in findings:
        s, p = f.sqlite, f.pg
        if s is None:
            assert p is not None
            result.differences.append(Difference(jsonable(list(p.key_values)), "extra"))
            continue
        key = jsonable(list(s.raw_key))
        error = recorded.pop(norm_key(key), None)
        if error is None and s.parts is None and p is not None:
            # the mapping refuses the value, no reject is recorded, yet PostgreSQL holds the row
            cols = [s.column] if s.column else []
            result.differences.append(Difference(key, "changed", cols, f"{s.error}, yet PostgreSQL holds it"))
        elif error is not None or s.parts is None:
            result.rejected.append(Rejected(key, error or s.error or "", error is not None))
        elif p is None:
            result.differences.append(Difference(key, "missing"))
        else:
            cols = [n for n, a, b in zip(names, s.parts, p.part_hashes, strict=True) if part_hash(a) != b]
            result.differences.append(Difference(key, "changed", cols))
    result.rejected += [Rejected(json.loads(k), e, True) for k, e in recorded.items()]
    result.differences.sort(key=lambda d: sort_key(d.key))
    result.rejected.sort(key=lambda r: sort_key(r.key))


async def describe_changes(check: TableCheck, findings: dict[CanonKey, Finding], result: CheckResult,
                           limit: int = 100) -> None:
    """Add both values of each differing column to the first *limit* changed rows."""
    names = [c.name for c in check.tt.columns]
    by_key = {norm_key(jsonable(list(f.sqlite.raw_key))): f for f in findings.values()
              if f.sqlite is not None and f.pg is not None and f.sqlite.raw is not None}
    pk = check.tt.source.pk
    where = " AND ".join(f"{qi(k)} = ${i}" for i, k in enumerate(pk, 1))
    for i, d in enumerate(result.differences[:limit]):
        f = by_key.get(norm_key(d.key))
        if d.kind != "changed" or f is None or not d.columns or f.pg is None or f.sqlite is None:
            continue
        sql = (f"SELECT {', '.join(f'{qi(c)}::text' for c in d.columns)} FROM {check.tt.qualified} "
               f"WHERE {where}")
        rec = await check.ctx.conn.fetchrow(sql, *f.pg.key_values)
        if rec is None or f.sqlite.raw is None:
            continue
        shown = [f"{c}: {_short(f.sqlite.raw[names.index(c)])} in SQLite, "
                 f"{_short(rec[j], text=True)} in PostgreSQL" for j, c in enumerate(d.columns)]
        detail = "; ".join([d.detail, *shown] if d.detail else shown)
        result.differences[i] = Difference(d.key, d.kind, d.columns, detail)


def _short(value: Any, text: bool = False) -> str:
    shown = "NULL" if value is None else str(value) if text else repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


async def open_rejects(ctx: TableContext, table: str, limit: int = 10_000) -> dict[str, str]:
    """The table's open rejects in ``syncd.rejects``: normalised key -> error."""
    if not await ctx.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.rejects"):
        return {}
    rows = await ctx.conn.fetch(
        f"SELECT key::text AS key, error FROM {STATE_SCHEMA}.rejects WHERE stream = $1 "
        "AND object = $2 AND resolved_at IS NULL ORDER BY id LIMIT $3", ctx.stream, table, limit)
    return {norm_key(json.loads(r["key"])): r["error"] for r in rows}


def norm_key(key: Any) -> str:
    return json.dumps(key, sort_keys=True, default=str)


__all__ = ["Outcome", "Settler", "classify", "describe_changes", "locate", "open_rejects", "wait_checkpoint"]
