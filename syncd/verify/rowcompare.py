"""Row-by-row comparison of one key range: SQLite rows as verify expects them, bisection.

SQLite rows become the canonical parts verify expects PostgreSQL to hold
(:mod:`syncd.verify.expect`, verify's own table, not the stream's converters); PostgreSQL
computes count and XOR of row hashes over a key range in SQL, using the primary-key index.
A range that differs is split ``fanout`` ways by row count (one query returns every part's
aggregate), recursively, down to ``leaf_rows`` rows; then the row hashes of the leaf name the
differing keys, and each becomes a *suspect*: the tightest range around it.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from syncd.model import Key
from syncd.pg.families import family
from syncd.pg.state import jsonable
from syncd.sql import qi
from syncd.stores.postgres.tables import TargetTable
from syncd.verify.canon import MASK64, NULL, RowCanon
from syncd.verify.expect import Expect, Unfit, expect
from syncd.verify.report import CheckResult, RoundedValue
from syncd.verify.rows import CanonKey, PgRow, Range, Row, TableContext, TableOptions
from syncd.verify.settle import wait_checkpoint
from syncd.verify.sqlite import Raw

MAX_ROUNDED_SHOWN = 10_000


def _shown(e: Expect, part: str) -> str:
    """A part as the value PostgreSQL holds (floats are parts of bits)."""
    value = e.key(part)
    return repr(value) if isinstance(value, float) else str(value)


class TooManyRows(Exception):
    """A key range holds more PostgreSQL rows than verify lists (bounded memory)."""


def _xor(rows: Sequence[Row]) -> tuple[int, int]:
    acc, n = 0, 0
    for r in rows:
        if r.parts is not None:
            acc ^= r.hash
            n += 1
    return n, acc


class RowCompare:
    """A table's rows compared range by range; :class:`syncd.verify.tables.TableCheck` scans with it."""

    def __init__(self, tt: TargetTable, ctx: TableContext, options: TableOptions,
                 byte_ordered_keys: bool) -> None:
        self.tt, self.ctx, self.opts = tt, ctx, options
        self.name = tt.name
        self.canon = RowCanon.for_columns(tt.columns, tt.source.pk)
        self.raw_key_idx = [tt.source.target_columns.index(k) for k in tt.source.pk]
        texty = [k for k, c in zip(tt.source.pk, self._key_cols(), strict=True)
                 if family(c.pg_type) in ("text", "other")]
        self.streamed = options.stream_keys if options.stream_keys is not None else \
            bool(texty) and not byte_ordered_keys
        collate = ' COLLATE "C"' if self.streamed else ""
        self.key_exprs = [qi(k) + (collate if k in texty else "") for k in tt.source.pk]
        self.key_tuple = "(" + ", ".join(self.key_exprs) + ")"
        self.ordered = True
        """SQLite's key order agreed with PostgreSQL's everywhere the scan looked."""
        self.expects = [expect(c.name, c.pg_type, c.rounded) for c in tt.columns]
        self.key_expects = [self.expects[i] for i in self.canon.key_index]
        self.rounded_cols = [i for i, c in enumerate(tt.columns) if c.rounded]
        self.rounded: list[RoundedValue] = []
        self._last_key: Any = None

    def _key_cols(self) -> list[Any]:
        by_name = {c.name: c for c in self.tt.columns}
        return [by_name[k] for k in self.tt.source.pk]

    # --- SQLite rows -----------------------------------------------------------------------

    def key_only(self, raw_key: Key) -> tuple[Key | None, CanonKey]:
        try:
            parts = []
            for e, v in zip(self.key_expects, raw_key, strict=True):
                if v is None:
                    raise Unfit("NULL in the primary key")
                parts.append(e.part(v))
            return tuple(e.key(p) for e, p in zip(self.key_expects, parts, strict=True)), tuple(parts)
        except Unfit:
            return None, ("raw", json.dumps(jsonable(list(raw_key)), sort_keys=True))

    def prepare(self, raws: Sequence[Raw], note_rounded: bool = False) -> list[Row]:
        """SQLite rows with the parts verify expects PostgreSQL to hold (:mod:`syncd.verify.expect`)."""
        out: list[Row] = []
        expects, idx, kidx = self.expects, self.raw_key_idx, self.canon.key_index
        for raw in raws:
            raw_key = tuple(raw[i] for i in idx)
            parts: list[str] = []
            try:
                for e, v in zip(expects, raw, strict=True):
                    parts.append(NULL if v is None else e.part(v))
            except Unfit as exc:
                col = expects[len(parts)].name
                conv_key2, key = self.key_only(raw_key)
                out.append(Row(raw_key, conv_key2, key, None, 0, f"column {col}: {exc}", col, tuple(raw)))
                continue
            key = tuple(parts[i] for i in kidx)
            if NULL in key:
                out.append(Row(raw_key, None, self.key_only(raw_key)[1], None, 0, "NULL in the primary key",
                               None, tuple(raw)))
                continue
            conv_key = tuple(expects[i].key(p) for i, p in zip(kidx, key, strict=True))
            out.append(Row(raw_key, conv_key, key, parts, self.canon.row_hash(parts), raw=tuple(raw)))
            if note_rounded and self.rounded_cols:
                self._note_rounded(raw_key, raw, parts)
        return out

    def _note_rounded(self, raw_key: Key, raw: Raw, parts: Sequence[str]) -> None:
        """Record values of columns rounded on purpose that were indeed rounded (verify shows them)."""
        for i in self.rounded_cols:
            strict, v = self.expects[i].strict, raw[i]
            if v is None or strict is None or len(self.rounded) >= MAX_ROUNDED_SHOWN:
                continue
            try:
                strict(v)
            except Unfit:
                self.rounded.append(RoundedValue(jsonable(list(raw_key)), self.tt.columns[i].name, str(v),
                                                 _shown(self.expects[i], parts[i])))

    async def chunks(self) -> AsyncGenerator[tuple[Range, list[Row], int], None]:
        """Key ranges covering everything, with their SQLite rows and the head they were read at."""
        n, table = self.opts.chunk_rows, self.tt.source
        lo: Row | None = None
        carry: list[Row] = []
        read = asyncio.ensure_future(self.ctx.reader.page(table, None, n))
        try:
            while True:
                raws, head = await read
                if len(raws) == n:
                    after = tuple(raws[-1][i] for i in self.raw_key_idx)
                    read = asyncio.ensure_future(self.ctx.reader.page(table, after, n))
                rows = carry + self.prepare(raws, note_rounded=True)
                if len(raws) < n:
                    yield Range(lo, None), rows, head
                    return
                j = next((i for i in range(len(rows) - 1, -1, -1) if rows[i].conv_key is not None), None)
                if j is None:
                    carry = rows
                    continue
                yield Range(lo, rows[j]), rows[:j + 1], head
                lo, carry = rows[j], rows[j + 1:]
        finally:
            if not read.done():
                read.cancel()

    # --- PostgreSQL ------------------------------------------------------------------------

    def _where(self, rng: Range, params: list[Any]) -> str:
        cond = []
        for op, row in ((">", rng.lo), ("<=", rng.hi)):
            if row is not None and row.conv_key is not None:
                marks = ", ".join(f"${len(params) + i + 1}" for i in range(len(row.conv_key)))
                params.extend(row.conv_key)
                cond.append(f"{self.key_tuple} {op} ({marks})")
        return " AND ".join(cond) or "TRUE"

    async def pg_buckets(self, rng: Range, cuts: Sequence[Row]) -> dict[int, tuple[int, int]]:
        """(count, xor) of PostgreSQL's rows in each part of *rng* split at *cuts*."""
        params: list[Any] = []
        where = self._where(rng, params)
        whens = []
        for i, cut in enumerate(cuts):
            assert cut.conv_key is not None
            marks = ", ".join(f"${len(params) + j + 1}" for j in range(len(cut.conv_key)))
            params.extend(cut.conv_key)
            whens.append(f"WHEN {self.key_tuple} <= ({marks}) THEN {i}")
        bucket = f"CASE {' '.join(whens)} ELSE {len(cuts)} END" if cuts else "0"
        sql = (f"SELECT b, count(*) AS n, bit_xor(h) AS x FROM (SELECT {bucket} AS b, "
               f"{self.canon.hash_sql()} AS h FROM {self.tt.qualified} WHERE {where}) s GROUP BY b")
        rows = await self.ctx.conn.fetch(sql, *params)
        return {r["b"]: (r["n"], r["x"] & MASK64) for r in rows}

    def _pg_select(self, parts: bool) -> str:
        cols = [qi(k) for k in self.tt.source.pk] + self.canon.key_part_sqls() + [self.canon.hash_sql()]
        if parts:
            cols += self.canon.part_hash_sqls()
        return ", ".join(cols)

    def _pg_row(self, rec: Sequence[Any], offset: int, parts: bool) -> PgRow:
        k = len(self.tt.source.pk)
        values = tuple(rec[offset:offset + k])
        key = tuple(rec[offset + k:offset + 2 * k])
        h = rec[offset + 2 * k] & MASK64
        ph = tuple(rec[offset + 2 * k + 1:]) if parts else ()
        return PgRow(values, key, h, ph)

    async def pg_rows(self, ranges: Sequence[Range], parts: bool) -> list[list[PgRow]]:
        """PostgreSQL's rows in each range (hashes, and per-column hashes when *parts*)."""
        out: list[list[PgRow]] = [[] for _ in ranges]
        for start in range(0, len(ranges), 200):
            batch = ranges[start:start + 200]
            params: list[Any] = []
            conds = [self._where(r, params) for r in batch]
            which = "CASE " + " ".join(f"WHEN {c} THEN {i}" for i, c in enumerate(conds)) + " END"
            limit = self.opts.max_differences + self.opts.chunk_rows
            sql = (f"SELECT {which} AS r, {self._pg_select(parts)} FROM {self.tt.qualified} "
                   f"WHERE {' OR '.join(f'({c})' for c in conds)} LIMIT {limit + 1}")
            records = await self.ctx.conn.fetch(sql, *params)
            if len(records) > limit:
                raise TooManyRows(f"more than {limit:,} PostgreSQL rows in key ranges that SQLite has "
                                  "few or no rows in; compare the row counts")
            for rec in records:
                out[start + rec[0]].append(self._pg_row(tuple(rec), 1, parts))
        return out

    # --- scan and bisect -------------------------------------------------------------------

    def around_row(self, rng: Range, rows: Sequence[Row], i: int) -> Range:
        lo = next((rows[j] for j in range(i - 1, -1, -1) if rows[j].conv_key is not None), rng.lo)
        hi = next((rows[j] for j in range(i, len(rows)) if rows[j].conv_key is not None), rng.hi)
        return Range(lo, hi)

    def around_key(self, rng: Range, rows: Sequence[Row], values: tuple[Any, ...]) -> Range:
        """The range between the SQLite rows around *values*; all of *rng* if they are not in order."""
        keyed = [r for r in rows if r.conv_key is not None]
        keys: list[Any] = [r.conv_key for r in keyed]
        try:
            if any(a >= b for a, b in itertools.pairwise(keys)):
                return rng  # SQLite's order is not PostgreSQL's here
            j = bisect.bisect_left(keys, values)
        except TypeError:
            return rng
        return Range(keyed[j - 1] if j > 0 else rng.lo, keyed[j] if j < len(keyed) else rng.hi)

    def suspects(self, rng: Range, rows: Sequence[Row], pg: Sequence[PgRow]) -> list[Range]:
        """Tight ranges around every row whose hash differs (or that one side lacks)."""
        by_key = {p.key: p for p in pg}
        out: list[Range] = []
        for i, row in enumerate(rows):
            p = by_key.pop(row.key, None)
            if row.parts is not None and p is not None and p.hash == row.hash:
                continue
            out.append(self.around_row(rng, rows, i))
        out += [self.around_key(rng, rows, p.key_values) for p in by_key.values()]
        return out

    def _cuts(self, rows: Sequence[Row]) -> list[int]:
        step = -(-len(rows) // self.opts.fanout)
        cuts: list[int] = []
        pos = step - 1
        while pos < len(rows) - 1:
            j = next((i for i in range(pos, len(rows) - 1) if rows[i].conv_key is not None), None)
            if j is None:
                break
            if not cuts or j > cuts[-1]:
                cuts.append(j)
            pos = max(pos + step, j + 1)
        return cuts

    async def bisect(self, rng: Range, rows: list[Row]) -> list[Range]:
        """Narrow a differing range down to the rows that differ."""
        out: list[Range] = []
        stack = [(rng, rows)]
        while stack:
            r, rs = stack.pop()
            cuts = self._cuts(rs) if len(rs) > self.opts.leaf_rows else []
            if not cuts:
                out += self.suspects(r, rs, (await self.pg_rows([r], parts=False))[0])
                continue
            pg = await self.pg_buckets(r, [rs[c] for c in cuts])
            edges = [-1, *cuts, len(rs) - 1]
            for b in range(len(edges) - 1):
                part = rs[edges[b] + 1:edges[b + 1] + 1]
                lo = rs[edges[b]] if b > 0 else r.lo
                hi = rs[edges[b + 1]] if b < len(cuts) else r.hi
                if _xor(part) != pg.get(b, (0, 0)) or any(x.parts is None for x in part):
                    stack.append((Range(lo, hi), part))
        return out

    def _track_order(self, rows: Sequence[Row]) -> None:
        """Notice when SQLite's key order is not PostgreSQL's (then extras are looked for everywhere)."""
        if not self.ordered:
            return
        keys: list[Any] = [self._last_key] if self._last_key is not None else []
        keys += [r.conv_key for r in rows if r.conv_key is not None]
        try:
            self.ordered = all(a < b for a, b in itertools.pairwise(keys))
        except TypeError:
            self.ordered = False
        self._last_key = keys[-1] if keys else self._last_key


    async def _finish_chunk(self, rng: Range, rows: list[Row], head: int,
                            aggregate: asyncio.Future[dict[int, tuple[int, int]]],
                            result: CheckResult) -> list[Range]:
        mine = _xor(rows)
        agg = (await aggregate).get(0, (0, 0))
        if mine != agg and await self._catch_up(head):
            agg = (await self.pg_buckets(rng, [])).get(0, (0, 0))  # the stream has passed this read
        result.target_rows = (result.target_rows or 0) + agg[0]
        if mine != agg or any(r.parts is None for r in rows):
            return await self.bisect(rng, rows)
        return []

    async def _catch_up(self, head: int) -> bool:
        """Wait (briefly, and only while it moves) for the stream to pass *head*; True if it moved."""
        before = await self.ctx.checkpoint()
        if before >= head or self.ctx.stall.stuck:
            return False
        await wait_checkpoint(self.ctx, head, time.monotonic() + self.opts.chunk_wait_seconds,
                              self.ctx.stall)
        return await self.ctx.checkpoint() != before

    def _pg_stream(self) -> PgStream:
        order = ", ".join(self.key_exprs)
        sql = f"SELECT {self._pg_select(False)} FROM {self.tt.qualified} ORDER BY {order}"
        return PgStream(self, sql)



class PgStream:
    """PostgreSQL's (key, hash) rows in key order, consumed range by range (one snapshot)."""

    def __init__(self, check: RowCompare, sql: str) -> None:
        self.check, self.sql = check, sql
        self.tx: Any = None
        self.it: Any = None
        self.peeked: PgRow | None = None
        self.done = False

    async def _next(self) -> PgRow | None:
        if self.it is None:
            self.tx = self.check.ctx.conn.transaction(isolation="repeatable_read", readonly=True)
            await self.tx.start()
            self.it = self.check.ctx.conn.cursor(self.sql, prefetch=5000).__aiter__()
        try:
            rec = await self.it.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        return self.check._pg_row(tuple(rec), 0, False)

    async def take(self, rng: Range) -> list[PgRow]:
        out: list[PgRow] = []
        hi = rng.hi.conv_key if rng.hi is not None else None
        while not self.done:
            if self.peeked is None:
                self.peeked = await self._next()
                if self.peeked is None:
                    break
            if hi is not None and self.peeked.key_values > hi:
                break
            out.append(self.peeked)
            self.peeked = None
            if len(out) > self.check.opts.max_differences + self.check.opts.chunk_rows:
                raise TooManyRows("PostgreSQL holds far more rows than SQLite in one key range; "
                                  "compare the row counts")
        return out

    async def close(self) -> None:
        if self.tx is not None:
            await self.tx.rollback()


__all__ = ["MAX_ROUNDED_SHOWN", "PgStream", "RowCompare", "TooManyRows"]
