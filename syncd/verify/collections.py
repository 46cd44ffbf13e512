"""Verifying one Chroma collection against its pgvector table.

1. **Scan.** Chroma is read in id pages (``embeddings`` / ``embedding_metadata`` of
   ``chroma.sqlite3``, vectors from the log rows that still hold them, else from the
   Chroma server: the stream's own reader, :meth:`ChromaCollectionSource.pages`);
   PostgreSQL streams ``(id, one short hash per column)`` in the same order
   (``COLLATE "C"``, byte order like SQLite's) from one snapshot. The two are merged
   page by page: memory holds one page. Parts: :mod:`syncd.verify.vectors`.
2. **Settle.** Ids that differ are re-read from both sides in rounds, each round in
   one PostgreSQL snapshot (checkpoint ``c``) and one Chroma read transaction
   (:mod:`syncd.verify.chroma`); an id with no log row after ``min(c, applied)`` is
   judged, one changed since is read again once the checkpoint passed the log head.
3. **Classify.** Open rejects of the stream (``syncd.rejects``) and items the mapping
   cannot write are listed apart; the rest are missing / extra / changed, with the
   differing vector components or metadata keys. In a cosine collection, an item whose
   vector had to be read from the server (its log rows are gone) and whose row differs from
   it only by a few float32 steps per component is counted apart, not as a difference:
   Chroma's cosine index no longer holds the bits written, only its rendering of them
   (docs/verify.md, "Cosine vectors Chroma no longer holds bit for bit").

Search parity is a check of its own: :mod:`syncd.verify.search`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import cast

import asyncpg
import numpy as np

from syncd.errors import SourceError
from syncd.ports.collections import Item, ItemPage, settle_vector
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.pgvector.table import stream_name
from syncd.verify.chroma import View, head, read_view
from syncd.verify.doubt import vector_candidates
from syncd.verify.report import CheckResult, Difference, Rejected
from syncd.verify.rows import Stall
from syncd.verify.vectors import Expected, Stored, VectorCanon

EXPLAIN_BATCH = 500
RENDER_STEPS = 4
"""How many float32 steps per component a cosine collection's server may return a vector from
the bits written (docs/chroma.md, "Which bits": one or two seen)."""


def float32_steps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance between two float32 vectors' components, in representable values
    (``-0.0`` and ``0.0`` are 0 apart); a NaN or a length mismatch is far."""
    x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if x.shape != y.shape or np.isnan(x).any() or np.isnan(y).any():
        return 1 << 32
    if not len(x):
        return 0

    def ordered(v: np.ndarray) -> np.ndarray:
        bits = v.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return int(np.abs(ordered(x) - ordered(y)).max())


def vector_from_text(text: str) -> np.ndarray:
    """pgvector's text output (each component's shortest float32 decimal) as float32."""
    body = text.strip()[1:-1]
    return np.array([np.float32(x) for x in body.split(",")] if body else [], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class CollectionOptions:
    page_rows: int = 1000
    """Items per Chroma page (and per merge step)."""
    sample_size: int | None = None
    """Query vectors for search parity; None: 20 in full mode, 0 (off) in counts mode."""
    k: int = 10
    min_recall: float = 0.9
    """Recall@k of pgvector's HNSW index against exact search below this is a failure."""
    ef_search: int | None = None
    """``hnsw.ef_search`` for the HNSW queries; None: max(k, the collection's ef_search)."""
    max_differences: int = 20_000
    settle_seconds: float = 60.0
    stall_seconds: float = 10.0

    def samples(self, mode: str) -> int:
        return self.sample_size if self.sample_size is not None else (20 if mode == "full" else 0)


@dataclass(slots=True)
class CollectionContext:
    """What a collection check needs from the verify run."""

    conn: asyncpg.Connection
    source: ChromaCollectionSource
    canon: VectorCanon
    options: CollectionOptions
    stall: Stall
    progress: Callable[[str, int], None] = field(default=lambda name, rows: None)

    @property
    def stream(self) -> str:
        return stream_name(self.source.info.id)

    async def checkpoint(self) -> int:
        value = await self.conn.fetchval(
            f"SELECT position FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", self.stream)
        return int(value or 0)


@dataclass(slots=True)
class Finding:
    id: str
    chroma: Expected | None
    pg: Stored | None
    columns: list[int] = field(default_factory=list)


class CollectionCheck:
    """One collection; :meth:`run` fills a :class:`CheckResult`."""

    kind = "collection"

    def __init__(self, name: str, ctx: CollectionContext, problems: list[str], notes: list[str]) -> None:
        self.name = name
        self.ctx = ctx
        self.problems = problems
        self.notes = notes
        self.candidates: dict[str, str] = {}
        """Per id, the row hash of the other vector a vector doubt allows (:mod:`syncd.verify.doubt`)."""
        self.served: set[str] = set()
        """Ids whose vector the settle rounds read from Chroma's server (the log no longer had it)."""
        self.rendered = 0
        """Cosine items equal but for Chroma's rendering of their vector (counted apart)."""

    async def run(self, mode: str) -> CheckResult:
        result = CheckResult(self.kind, self.name, key_columns=["id"], problems=list(self.problems))
        if mode == "counts":
            await self.run_counts(result)
        else:
            await self.run_full(result)
        result.detail = "; ".join([*self.notes, *([result.detail] if result.detail else [])])
        result.decide()
        return result

    # --- counts ----------------------------------------------------------------------------

    async def run_counts(self, result: CheckResult) -> None:
        """Item counts, settled: ids changed after the checkpoint are left out on both sides."""
        ctx, info = self.ctx, self.ctx.source.info
        deadline = time.monotonic() + ctx.options.settle_seconds
        while True:
            async with ctx.conn.transaction(isolation="repeatable_read", readonly=True):
                c = await ctx.checkpoint()
                n_pg = int(await ctx.conn.fetchval(f"SELECT count(*) FROM {ctx.canon.table.qualified}"))
                view = await read_view(ctx.source.log, info, c, counting=True)
                held_pg = await self._pg_holds(view.tail)
            after = await ctx.checkpoint()
            ctx.stall.seen(after)
            result.source_rows, result.target_rows = view.count, n_pg
            if view.complete(c, after):
                result.counts_differ = view.count - view.held != n_pg - held_pg
                if view.tail and not result.counts_differ:
                    result.detail = f"{len(view.tail):,} items changing meanwhile, left out of both counts"
                break
            if time.monotonic() >= deadline or ctx.stall.stuck:
                result.unsettled = [["count"]]
                result.detail = "the Chroma log moved on before the counts could be compared"
                break
            await self._wait(view.head, deadline)
        result.rejected = [Rejected([k], e, True) for k, e in (await self._open_rejects()).items()]

    async def _pg_holds(self, ids: set[str]) -> int:
        if not ids:
            return 0
        canon = self.ctx.canon
        return int(await self.ctx.conn.fetchval(
            f"SELECT count(*) FROM {canon.table.qualified} WHERE {canon.id_text} = ANY($1::text[])",
            sorted(ids)))

    # --- full ------------------------------------------------------------------------------

    async def run_full(self, result: CheckResult) -> None:
        started_at = await head(self.ctx.source.log, self.ctx.source.info)
        suspects = await self.scan(result)
        deadline = time.monotonic() + self.ctx.options.settle_seconds
        findings, unsettled, note = await self.settle(suspects, started_at, deadline)
        await self.classify(findings, result)
        result.unsettled = [[i] for i in sorted(unsettled)]
        notes = []
        if self.rendered:
            notes.append(f"{self.rendered:,} vector{'s' if self.rendered != 1 else ''} within "
                         f"{RENDER_STEPS} float32 steps of what Chroma's cosine index returns (its log "
                         "no longer holds the bits written; not a difference)")
        if result.truncated:
            notes.append(f"stopped after {self.ctx.options.max_differences:,} items differed during the "
                         "scan; the rest of the collection was not compared")
        result.detail = "; ".join(notes + ([note] if note else []))

    async def scan(self, result: CheckResult) -> set[str]:
        """Merge Chroma's pages with PostgreSQL's rows in id order; return the ids that differ."""
        ctx = self.ctx
        suspects: set[str] = set()
        result.source_rows = result.target_rows = 0
        limit = ctx.options.max_differences
        async with ctx.conn.transaction(isolation="repeatable_read", readonly=True):
            rows = ctx.conn.cursor(ctx.canon.select_sql(order=True), prefetch=2000).__aiter__()
            peeked: Stored | None = None
            done = False
            pages = cast(AsyncGenerator[ItemPage, None],
                         ctx.source.pages(None, ctx.options.page_rows, changed_after=None))
            async with contextlib.aclosing(pages):
                async for page in pages:
                    hi = page.last_key if len(page.keys) == ctx.options.page_rows else None
                    mine = {i.id: i for i in page.items}
                    theirs: dict[str, Stored] = {}
                    while not done:
                        if peeked is None:
                            try:
                                peeked = ctx.canon.stored(tuple(await rows.__anext__()))
                            except StopAsyncIteration:
                                done = True
                                break
                        if hi is not None and peeked.id > hi:
                            break
                        theirs[peeked.id] = peeked
                        peeked = None
                        if len(theirs) > ctx.options.page_rows + limit:
                            break  # far more rows than Chroma has here: the count says so
                    result.source_rows += len(mine)
                    result.target_rows += len(theirs)
                    suspects |= await asyncio.to_thread(self._compare, mine, theirs)
                    ctx.progress(self.name, len(mine))
                    if len(suspects) > limit:
                        result.truncated = True
                        break
        return suspects

    def _compare(self, mine: dict[str, Item], theirs: dict[str, Stored]) -> set[str]:
        out = {i for i in theirs if i not in mine}
        for item_id, item in mine.items():
            exp = self.ctx.canon.expected(item)
            got = theirs.get(item_id)
            if exp.parts is None or got is None or self.ctx.canon.differing(exp, got):
                out.add(item_id)
        return out

    # --- settle ----------------------------------------------------------------------------

    async def settle(self, ids: set[str], newest: int, deadline: float
                     ) -> tuple[list[Finding], set[str], str]:
        """Judge each id once nothing changed it after the round's checkpoint; return the
        definitive findings, the ids still changing at the deadline, and why they are."""
        ctx = self.ctx
        pending = set(ids)
        findings: list[Finding] = []
        self.candidates = await vector_candidates(ctx.conn, ctx.stream, ctx.source, sorted(pending))
        target = newest
        note = ""
        while pending:
            await self._wait(target, deadline)
            async with ctx.conn.transaction(isolation="repeatable_read", readonly=True):
                c = await ctx.checkpoint()
                stored = await ctx.canon.by_ids(ctx.conn, sorted(pending))
            view = await self._read(sorted(pending), c)
            after = await ctx.checkpoint()
            ctx.stall.seen(after)
            target = max(view.head, c)
            if view.complete(c, after):
                pending = self._judge(pending, view, stored, findings)
            if not pending:
                break
            if time.monotonic() >= deadline or ctx.stall.stuck:
                if ctx.stall.stuck:
                    note = (f"the stream's checkpoint stayed at {after} while changes were pending "
                            "(is syncd running?)")
                break
        return findings, pending, note

    async def _read(self, ids: list[str], checkpoint: int) -> View:
        """Chroma's side of a round; items whose vector is neither in the log nor on the server
        (deleted since) are left out and marked as changing."""
        src = self.ctx.source
        view = await read_view(src.log, src.info, checkpoint, ids=ids)
        need = [i for i in view.items if i.vector is None and i.error is None]
        if need:
            got = await src.server.get_vectors(src.info.id, [i.id for i in need]) if src.server else None
            if got is None:
                raise SourceError(f"collection {src.info.name!r}: Chroma's log no longer holds the vectors "
                                  "of some items and no Chroma server is configured: set source.chroma.url")
            for item in need:
                vec = got.get(item.id)
                if vec is None:
                    view.tail.add(item.id)
                else:
                    item.vector = settle_vector(vec, item.logged)
                    if item.vector is vec:
                        self.served.add(item.id)
                    else:
                        self.served.discard(item.id)
        asked = {i.id for i in need}
        self.served -= {i.id for i in view.items if i.id not in asked}  # read from the log this round
        return view

    def _judge(self, pending: set[str], view: View, stored: dict[str, Stored],
               findings: list[Finding]) -> set[str]:
        items = {i.id: i for i in view.items}
        moving: set[str] = set()
        for item_id in pending:
            if item_id in view.tail:
                moving.add(item_id)
                continue
            item, got = items.get(item_id), stored.get(item_id)
            exp = self.ctx.canon.expected(item) if item is not None else None
            if exp is not None and exp.parts is not None and got is not None:
                cols = self.ctx.canon.differing(exp, got)
                if cols == [1] and self.candidates.get(item_id) == got.hashes[1]:
                    cols = []   # the other vector a vector doubt allows (syncd.verify.doubt)
                if cols:
                    findings.append(Finding(item_id, exp, got, cols))
            elif exp is not None or got is not None:
                findings.append(Finding(item_id, exp, got))
        return moving

    async def _wait(self, position: int, deadline: float) -> None:
        ctx = self.ctx
        while time.monotonic() < deadline and not ctx.stall.stuck:
            c = await ctx.checkpoint()
            ctx.stall.seen(c)
            if c >= position:
                return
            await asyncio.sleep(0.1)

    # --- classify --------------------------------------------------------------------------

    async def _open_rejects(self, limit: int = 10_000) -> dict[str, str]:
        conn = self.ctx.conn
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.rejects"):
            return {}
        rows = await conn.fetch(
            f"SELECT key->>0 AS id, error FROM {STATE_SCHEMA}.rejects WHERE stream = $1 "
            "AND resolved_at IS NULL ORDER BY id LIMIT $2", self.ctx.stream, limit)
        return {str(r["id"]): str(r["error"]) for r in rows}

    async def _drop_rendered(self, changed: list[Finding]) -> list[Finding]:
        """*changed* without the cosine items whose only difference is Chroma's rendering of a
        vector it no longer holds bit for bit (read from the server, a few steps off the row)."""
        if self.ctx.source.info.space != "cosine":
            return changed
        maybe = {f.id: f for f in changed
                 if f.columns == [1] and f.id in self.served and f.chroma is not None}
        if not maybe:
            return changed
        t, canon = self.ctx.canon.table, self.ctx.canon
        rows = await self.ctx.conn.fetch(
            f"SELECT {canon.id_text} AS id, {qi(t.embedding_col)}::text AS v FROM {t.qualified} "
            f"WHERE {canon.id_text} = ANY($1::text[])", sorted(maybe))
        near: set[str] = set()
        for r in rows:
            f = maybe[str(r["id"])]
            served = f.chroma.item.vector if f.chroma is not None else None
            if served is not None and float32_steps(vector_from_text(str(r["v"])), served) <= RENDER_STEPS:
                near.add(f.id)
        self.rendered += len(near)
        return [f for f in changed if f.id not in near]

    async def classify(self, findings: list[Finding], result: CheckResult) -> None:
        recorded = await self._open_rejects()
        changed: list[Finding] = []
        for f in findings:
            error = recorded.pop(f.id, None)
            if f.chroma is not None and (error is not None or f.chroma.parts is None):
                result.rejected.append(Rejected([f.id], error or f.chroma.error or "", error is not None))
            elif f.chroma is None:
                result.differences.append(Difference([f.id], "extra"))
            elif f.pg is None:
                result.differences.append(Difference([f.id], "missing"))
            else:
                changed.append(f)
        result.rejected += [Rejected([k], e, True) for k, e in recorded.items()]
        changed = await self._drop_rendered(changed)
        for start in range(0, len(changed), EXPLAIN_BATCH):
            batch = changed[start:start + EXPLAIN_BATCH]
            pairs = [(f.chroma, f.columns) for f in batch if f.chroma is not None]
            for f, (names, detail) in zip(batch, await self.ctx.canon.explain(self.ctx.conn, pairs),
                                          strict=True):
                result.differences.append(Difference([f.id], "changed", names, detail))
        result.differences.sort(key=lambda d: str(d.key[0]))
        result.rejected.sort(key=lambda r: str(r.key[0]))


__all__ = ["CollectionCheck", "CollectionContext", "CollectionOptions", "Finding"]
