"""The digest fast path of a table check: key ranges whose digests agree hold equal rows.

The table is cut into key ranges of ``digest_rows`` rows (every n-th SQLite key, one read
of the key index). For each range, both stores compute, in the same canonical encoding
(:mod:`syncd.verify.canon` for PostgreSQL, :mod:`syncd.verify.expect_sql` for SQLite —
verify's own expectation, never the sink's converters), the MD5 over the MD5s of the rows'
canonical texts in key order, and the row count:

- PostgreSQL: ``md5(string_agg(md5(row_text), '' ORDER BY key))`` over the range, using
  the primary-key index (the row MD5s in a subquery: only key and MD5 are sorted);
- SQLite: the same text built by SQL expressions where SQL can render the part exactly,
  by the expectation's own Python part registered as a SQLite function where it cannot
  (float bits, jsonb text); each row's MD5 by a registered function, the concatenation by
  ``group_concat``; no row objects in Python. The Python functions hold the GIL, so a
  table of several ranges is digested by the reader's worker processes, a few ranges
  ahead (:mod:`syncd.verify.sqlite_digest`).

Equal counts and equal digests: the range is equal, row for row (an ordered digest over
row hashes is at least as strong as the count and XOR the row-by-row scan uses). Anything
else — a digest that differs, a value SQL leaves to Python (a reject, a value rounded on
purpose, an odd layout), rows in flight — and the range is compared row by row exactly as
before (:mod:`syncd.verify.rowcompare`), which names key and column of each difference and
accounts the rejects. The fast path is not used where key order could differ between the
stores for reasons other than a difference (text keys under a collation that is not
byte-ordered, a database encoding other than UTF-8).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncGenerator
from typing import Any

from syncd.sql import qi
from syncd.verify.rowcompare import RowCompare
from syncd.verify.rows import Range, Row
from syncd.verify.sqlite_digest import Digest, RowSpec

PARALLEL_RANGES = 3
"""Tables of at least this many ranges are digested in the reader's worker processes."""


class FastPath:
    """Digests of one table's key ranges, on both sides."""

    def __init__(self, check: RowCompare) -> None:
        self.check = check
        tt = check.tt
        sources = (["rowid"] if tt.source.synthetic_key else []) + [qi(c) for c in tt.source.column_names]
        self.spec = RowSpec(tuple((c.name, c.pg_type, c.rounded) for c in tt.columns), tuple(sources))
        # the rows' MD5s are computed first and only (key, MD5) is sorted: sorting whole rows
        # spills to disk for ranges of wide rows
        keys = [f"k{i}" for i in range(len(check.key_exprs))]
        aliased = ", ".join(f"{x} AS {k}" for x, k in zip(check.key_exprs, keys, strict=True))
        self.pg_sql = (f"SELECT count(*), md5(string_agg(h, '' ORDER BY {', '.join(keys)})) FROM ("
                       f"SELECT {aliased}, md5({check.canon.row_text_sql()}) AS h FROM {tt.qualified} WHERE ")

    async def unusable(self) -> str | None:
        """Why the fast path cannot be used for this table (None: it can)."""
        if self.check.opts.digest_rows <= 0:
            return "digests turned off"
        if self.check.streamed:
            return "PostgreSQL orders the text key differently from SQLite"
        if (await self.check.ctx.reader.encoding()).upper() != "UTF-8":
            return "the SQLite database is not UTF-8"
        if str(await self.check.ctx.conn.fetchval("SHOW server_encoding")).upper() not in ("UTF8", "UTF-8"):
            return "the PostgreSQL database is not UTF-8"
        return None

    async def ranges(self) -> list[Range]:
        """Key ranges of about ``digest_rows`` SQLite rows covering every key (open at both ends)."""
        check = self.check
        bounds: list[Row] = []
        for raw_key in await check.ctx.reader.cuts(check.tt.source, check.opts.digest_rows):
            conv_key, key = check.key_only(raw_key)
            if conv_key is not None:  # a key PostgreSQL cannot hold is no bound: the range grows
                bounds.append(Row(raw_key, conv_key, key, None))
        edges: list[Row | None] = [None, *bounds, None]
        return [Range(lo, hi) for lo, hi in itertools.pairwise(edges)]

    async def pg_digest(self, rng: Range) -> tuple[int, str | None]:
        params: list[Any] = []
        where = self.check._where(rng, params)
        rec = await self.check.ctx.conn.fetchrow(f"{self.pg_sql}{where}) s", *params)
        assert rec is not None
        return int(rec[0]), rec[1]

    async def sqlite_digest(self, rng: Range, parallel: bool = False) -> Digest:
        return await self.check.ctx.reader.digest(self.check.tt.source, rng.bounds(), self.spec, parallel)

    async def compare(self, rng: Range) -> tuple[bool, Digest, int]:
        """(equal, SQLite's digest, PostgreSQL's row count) of one range, both sides at once."""
        mine, (n_pg, theirs) = await asyncio.gather(self.sqlite_digest(rng), self.pg_digest(rng))
        return self._equal(mine, n_pg, theirs), mine, n_pg

    @staticmethod
    def _equal(mine: Digest, n_pg: int, theirs: str | None) -> bool:
        return mine.rows == mine.decided == n_pg and mine.md5 == theirs

    async def compare_all(self, ranges: list[Range]) -> AsyncGenerator[tuple[Range, bool, Digest, int], None]:
        """:meth:`compare` of every range, in order. SQLite's digests of the next ranges are
        computed ahead (in the reader's worker processes when the table has enough ranges), one
        more than there are workers; PostgreSQL's are asked one at a time, when the caller
        wants the range (the connection is the caller's between two ranges)."""
        workers = self.check.ctx.reader.workers
        parallel = workers > 0 and len(ranges) >= PARALLEL_RANGES
        depth = workers + 1 if parallel else 1
        todo = iter(ranges)
        ahead: collections.deque[tuple[Range, asyncio.Future[Digest]]] = collections.deque()
        try:
            while True:
                while len(ahead) < depth and (rng := next(todo, None)) is not None:
                    ahead.append((rng, asyncio.ensure_future(self.sqlite_digest(rng, parallel))))
                if not ahead:
                    return
                rng, mine_f = ahead.popleft()
                if depth == 1:
                    mine, (n_pg, theirs) = await asyncio.gather(mine_f, self.pg_digest(rng))
                else:
                    n_pg, theirs = await self.pg_digest(rng)
                    mine = await mine_f
                yield rng, self._equal(mine, n_pg, theirs), mine, n_pg
        finally:
            for _, f in ahead:
                f.cancel()
            await asyncio.gather(*(f for _, f in ahead), return_exceptions=True)


__all__ = ["FastPath"]
