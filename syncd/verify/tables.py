"""Verifying one table: chunk checksums in key ranges, bisection down to the differing keys.

1. **Scan.** The SQLite table is read in key order, ``chunk_rows`` rows per short
   read; each row becomes the canonical parts verify expects PostgreSQL to hold
   (:mod:`syncd.verify.expect`, verify's own table, not the stream's converters).
   A chunk is a key range ``(lo, hi]`` between two SQLite rows (the first and
   last chunk are open-ended, so rows only PostgreSQL has are caught anywhere). PostgreSQL computes count and
   XOR of row hashes over the same range in SQL, using the primary-key index.
2. **Bisect.** A chunk that differs is split ``fanout`` ways by row count (one
   query returns every part's aggregate), recursively, down to ``leaf_rows``
   rows; then the row hashes of the leaf name the differing keys, and each
   becomes a *suspect*: the tightest range around it.
3. **Settle.** Suspects are re-read until each difference is definitive or
   known to be a change in flight (:mod:`syncd.verify.settle`).

When PostgreSQL orders a text key differently from SQLite (a collation other
than C / C.UTF-8 / builtin), range predicates could not use the index, so the
scan instead streams (key, row hash) from PostgreSQL in ``COLLATE "C"`` order
and merges it with the chunks. Where the two stores order keys differently
anyway (e.g. UUID text in mixed case), a row shows up as missing in one range
and extra in another; settling pairs them up by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from syncd.model import Key
from syncd.pg.state import jsonable
from syncd.sql import qi
from syncd.verify.fastpath import FastPath
from syncd.verify.report import CheckResult, Rejected
from syncd.verify.rowcompare import PgStream, RowCompare, TooManyRows
from syncd.verify.rows import Range, Row
from syncd.verify.settle import Settler, classify, describe_changes, locate, open_rejects, wait_checkpoint


def _bound(row: Row | None) -> Row | None:
    """A range bound without the row's values (suspects are kept until the scan ends)."""
    return None if row is None else Row(row.raw_key, row.conv_key, row.key, None)


class _Found:
    """Suspect ranges collected by a scan, bounded by ``max_differences``."""

    def __init__(self, check: TableCheck, result: CheckResult) -> None:
        self.check, self.result = check, result
        self.found: dict[tuple[Key | None, Key | None], Range] = {}

    def add(self, new: list[Range], rows: int) -> bool:
        """Record *new* suspects after *rows* rows were compared; True when the scan must stop."""
        self.found.update((r.ident, Range(_bound(r.lo), _bound(r.hi))) for r in new)
        self.check.ctx.progress(self.check.name, rows)
        self.result.truncated = len(self.found) > self.check.opts.max_differences
        return self.result.truncated

    def ranges(self) -> list[Range]:
        return list(self.found.values())


class TableCheck(RowCompare):
    """One table's verification; :meth:`run` fills a :class:`CheckResult`."""

    kind = "table"

    async def scan(self, result: CheckResult) -> tuple[list[Range], int]:
        """Compare every chunk; return the suspect ranges and the newest SQLite head seen."""
        result.source_rows, result.target_rows = 0, 0
        fast = FastPath(self)
        if await fast.unusable() is None:
            return await self._scan_digests(fast, result)
        return await self._scan_rows(result)

    async def _scan_digests(self, fast: FastPath, result: CheckResult) -> tuple[list[Range], int]:
        """Digest per key range on both sides; the ranges that disagree are compared row by row."""
        found = _Found(self, result)
        newest = 0
        async with contextlib.aclosing(fast.compare_all(await fast.ranges())) as compared:
            async for rng, equal, digest, n_pg in compared:
                result.chunks += 1
                newest = max(newest, digest.head)
                if equal:
                    result.source_rows = (result.source_rows or 0) + digest.rows
                    result.target_rows = (result.target_rows or 0) + n_pg
                    if rng.hi is not None and self.ordered:
                        self._last_key = rng.hi.conv_key
                    found.add([], digest.rows)
                    continue
                stop, head = await self._by_row(rng, found, result)
                newest = max(newest, head)
                if stop:
                    break
        return found.ranges(), newest

    async def _by_row(self, rng: Range, found: _Found, result: CheckResult) -> tuple[bool, int]:
        """Compare a range whose digests differ row by row: (the scan must stop, SQLite's head)."""
        result.chunks_by_row += 1
        [raws], tail = await self.ctx.reader.ranges(self.tt.source, [rng.bounds()], None)
        rows = self.prepare(raws, note_rounded=True)
        self._track_order(rows)
        result.source_rows = (result.source_rows or 0) + len(rows)
        for piece, piece_rows in self._pieces(rng, rows):
            aggregate = asyncio.ensure_future(self.pg_buckets(piece, []))
            if found.add(await self._finish_chunk(piece, piece_rows, tail.head, aggregate, result),
                         len(piece_rows)):
                return True, tail.head
        return False, tail.head

    def _pieces(self, rng: Range, rows: list[Row]) -> list[tuple[Range, list[Row]]]:
        """*rows* of *rng* in ranges of about ``chunk_rows`` rows, as the row-by-row scan reads them
        (suspects stay as narrow, and settling re-reads as little, as there)."""
        out: list[tuple[Range, list[Row]]] = []
        lo, start, n = rng.lo, 0, self.opts.chunk_rows
        while len(rows) - start > n:
            j = next((i for i in range(start + n - 1, start - 1, -1) if rows[i].conv_key is not None), None)
            if j is None:  # no writable key in this stretch: end the piece at the next one
                j = next((i for i in range(start + n, len(rows) - 1) if rows[i].conv_key is not None), None)
                if j is None:
                    break
            out.append((Range(lo, rows[j]), rows[start:j + 1]))
            lo, start = rows[j], j + 1
        out.append((Range(lo, rng.hi), rows[start:]))
        return out

    async def _scan_rows(self, result: CheckResult) -> tuple[list[Range], int]:
        """Every row read and hashed in Python; PostgreSQL aggregates chunk *n* while Python
        converts and hashes chunk *n + 1*."""
        found = _Found(self, result)
        newest = 0
        stream = self._pg_stream() if self.streamed else None
        pending: tuple[Range, list[Row], int, asyncio.Future[dict[int, tuple[int, int]]]] | None = None
        add = found.add
        try:
            async with contextlib.aclosing(self.chunks()) as chunks:
                async for rng, rows, head in chunks:
                    newest = max(newest, head)
                    self._track_order(rows)
                    result.source_rows = (result.source_rows or 0) + len(rows)
                    if stream is not None:
                        if add(await self._compare_streamed(rng, rows, stream, result), len(rows)):
                            break
                        continue
                    if pending is not None:
                        done, pending = pending, None
                        if add(await self._finish_chunk(*done, result), len(done[1])):
                            break
                    pending = (rng, rows, head, asyncio.ensure_future(self.pg_buckets(rng, [])))
            if pending is not None and not result.truncated:
                add(await self._finish_chunk(*pending, result), len(pending[1]))
                pending = None
        finally:
            if pending is not None and not pending[3].done():
                pending[3].cancel()
                with contextlib.suppress(BaseException):
                    await pending[3]
            if stream is not None:
                await stream.close()
        return found.ranges(), newest

    async def _compare_streamed(self, rng: Range, rows: list[Row], stream: PgStream,
                                result: CheckResult) -> list[Range]:
        pg = await stream.take(rng)
        result.target_rows = (result.target_rows or 0) + len(pg)
        return self.suspects(rng, rows, pg)

    # --- the whole check -------------------------------------------------------------------

    async def run(self, mode: str) -> CheckResult:
        """``full``: counts, checksums, keys; ``counts``: row counts only (plus rejects)."""
        keys = ["rowid"] if self.tt.source.synthetic_key else list(self.tt.source.pk)
        result = CheckResult(self.kind, self.name, key_columns=keys)
        if mode == "counts":
            await self.run_counts(result)
        else:
            await self.run_full(result)
        result.decide()
        return result

    async def run_full(self, result: CheckResult) -> None:
        try:
            await self._run_full(result)
        except TooManyRows as exc:
            result.counts_differ, result.truncated = True, True
            result.detail = str(exc)

    async def _run_full(self, result: CheckResult) -> None:
        ranges, newest = await self.scan(result)
        settler = Settler(self, time.monotonic() + self.opts.settle_seconds)
        outcome = await settler.settle(ranges, newest)
        extras = {k for k, f in outcome.findings.items() if f.sqlite is None}
        if extras and not self.ordered:
            # SQLite may hold these rows elsewhere in its own order: settle them together
            again = [r for k in extras for r in outcome.findings[k].ranges]
            second = await settler.settle(again + await locate(self, extras), 0, only=extras)
            for k in extras:
                outcome.findings.pop(k, None)
            outcome.findings.update(second.findings)
            outcome.unsettled += second.unsettled
        classify(self, list(outcome.findings.values()), result, await open_rejects(self.ctx, self.name))
        await describe_changes(self, outcome.findings, result)
        result.rounded = list(self.rounded)
        result.unsettled = [jsonable(list(k)) for k in outcome.unsettled]
        notes = [f"stopped after {self.opts.max_differences:,} rows differed during the scan; "
                 "the rest of the table was not compared"] if result.truncated else []
        result.detail = "; ".join(notes + ([outcome.note] if outcome.note else []))

    async def run_counts(self, result: CheckResult) -> None:
        """Row counts, settled: rows changed after the checkpoint are left out on both sides.

        In one PostgreSQL snapshot (checkpoint ``c``) and one SQLite read: the counts, the
        keys changed after ``c``, and how many of those keys each side holds. Rows not
        changed after ``c`` are the same in SQLite now as at ``c``, so their counts must
        agree exactly, however busy the app is.
        """
        deadline = time.monotonic() + self.opts.settle_seconds
        while True:
            async with self.ctx.conn.transaction(isolation="repeatable_read", readonly=True):
                c = await self.ctx.checkpoint()
                n_pg = int(await self.ctx.conn.fetchval(f"SELECT count(*) FROM {self.tt.qualified}"))
                n_sqlite, tail, held_sqlite = await self.ctx.reader.count(self.tt.source, c)
                held_pg = await self._pg_holds(tail.keys) if tail.complete else 0
            self.ctx.stall.seen(c)
            result.source_rows, result.target_rows = n_sqlite, n_pg
            if tail.complete:
                result.counts_differ = n_sqlite - held_sqlite != n_pg - held_pg
                if tail.keys and not result.counts_differ:
                    result.detail = f"{len(tail.keys):,} rows changing meanwhile, left out of both counts"
                break
            if time.monotonic() >= deadline or self.ctx.stall.stuck:
                result.unsettled = [["count"]]
                result.detail = "the change log moved on before the counts could be compared"
                break
            await wait_checkpoint(self.ctx, tail.head, deadline, self.ctx.stall)
        recorded = await open_rejects(self.ctx, self.name)
        result.rejected = [Rejected(json.loads(k), e, True) for k, e in recorded.items()]

    async def _pg_holds(self, raw_keys: frozenset[Key]) -> int:
        """How many of these (SQLite) keys PostgreSQL holds, in the current transaction."""
        keys = [k for k in (self.key_only(r)[0] for r in raw_keys) if k is not None]
        held = 0
        width = len(self.tt.source.pk)
        cols = "(" + ", ".join(qi(k) for k in self.tt.source.pk) + ")"
        step = max(1, 1000 // width)
        for i in range(0, len(keys), step):
            batch = keys[i:i + step]
            tuples = ", ".join("(" + ", ".join(f"${j * width + m + 1}" for m in range(width)) + ")"
                               for j in range(len(batch)))
            held += int(await self.ctx.conn.fetchval(
                f"SELECT count(*) FROM {self.tt.qualified} WHERE {cols} IN ({tuples})",
                *[v for k in batch for v in k]))
        return held


__all__ = ["TableCheck"]
