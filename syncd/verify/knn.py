"""Top-k queries against a collection's table, through its vector index and exactly.

Shared by verify's search parity (:mod:`syncd.verify.search`) and the search check after
`syncd import` (:mod:`syncd.files.import_search`):

- through the index (the one syncd built, or the app's own, HNSW or ivfflat):
  ``ORDER BY embedding <op> $1 LIMIT k`` in a read-only transaction with
  ``enable_seqscan = off``, so that the index answers even on a small table, and
  ``SET LOCAL hnsw.ef_search`` or ``ivfflat.probes``;
- exact: the same query with ``enable_indexscan`` and ``enable_bitmapscan`` off (a sequential
  scan and a sort: the true top k).

The operator is the index's (its operator class): cosine ``<=>``, l2 ``<->``, ip ``<#>``,
l1 ``<+>``; a table without an index ranks by the collection's space.
"""

from __future__ import annotations

import time

import asyncpg
import numpy as np

from syncd.sql import qi
from syncd.stores.pgvector.index import VectorIndex
from syncd.stores.pgvector.plan import VectorTable

OPERATORS = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}


def ef_search(index: VectorIndex, k: int, given: int | None, collection_ef: int | None) -> int:
    """``hnsw.ef_search`` (*given*, else ``max(k, the collection's ef_search or 100)``, at most
    1000) or, for ivfflat, ``ivfflat.probes`` (*given*, else every list: the exact answer)."""
    if index.method == "ivfflat":
        return min(given or index.lists, index.lists)
    return given or min(1000, max(k, collection_ef or 100))


def setting_name(index: VectorIndex) -> str:
    return "hnsw.ef_search" if index.method == "hnsw" else "ivfflat.probes"


class Knn:
    """The top-k ids of a query vector in *table*, through *index* or exactly."""

    def __init__(self, conn: asyncpg.Connection, table: VectorTable, id_text: str,
                 index: VectorIndex | None) -> None:
        self.conn, self.table, self.id_text, self.index = conn, table, id_text, index

    @property
    def operator(self) -> str:
        return self.index.operator if self.index is not None else OPERATORS.get(self.table.space, "<->")

    def _operands(self) -> tuple[str, str]:
        t = self.table
        emb, arg = qi(t.embedding_col), "$1::vector"
        if self.index is not None and self.index.halfvec:
            emb, arg = f"({emb}::halfvec({t.dim}))", f"$1::vector::halfvec({t.dim})"
        return emb, arg

    def sql(self, distances: bool = False) -> str:
        emb, arg = self._operands()
        dist = f", ({emb} {self.operator} {arg})::float8" if distances else ""
        return (f"SELECT {self.id_text}{dist} FROM {self.table.qualified} ORDER BY {emb} {self.operator} "
                f"{arg} LIMIT $2")

    async def top(self, vector: np.ndarray, k: int, *, exact: bool, ef: int
                  ) -> tuple[list[tuple[str, float]], float]:
        """The *k* nearest rows' ids with their distances, and how long the query took (seconds)."""
        rows, took = await self._fetch(self.sql(distances=True), vector, k, exact, ef)
        return [(str(r[0]), float(r[1])) for r in rows], took

    async def placed(self, vector: np.ndarray, ids: list[str], known: list[tuple[str, float]]
                     ) -> list[tuple[str, float]]:
        """*ids* (another engine's answer) with their distances here, those of *known* reused; an id
        this table does not hold is infinitely far."""
        at = dict(known)
        out = []
        for item_id in ids:
            d = at[item_id] if item_id in at else await self.distance_of(vector, item_id)
            out.append((item_id, float("inf") if d is None else d))
        return out

    async def ranked(self, vector: np.ndarray, k: int, *, exact: bool, ef: int) -> list[tuple[str, float]]:
        """The *k* nearest rows' ids with their distances, nearest first."""
        rows, _ = await self._fetch(self.sql(distances=True), vector, k, exact, ef)
        return [(str(r[0]), float(r[1])) for r in rows]

    async def distance_of(self, vector: np.ndarray, item_id: str) -> float | None:
        """The distance of the row *item_id* from *vector* (None: no such row)."""
        emb, arg = self._operands()
        value = await self.conn.fetchval(f"SELECT ({emb} {self.operator} {arg})::float8 FROM "
                                         f"{self.table.qualified} WHERE {self.id_text} = $2", vector, item_id)
        return None if value is None else float(value)

    async def _fetch(self, sql: str, vector: np.ndarray, k: int, exact: bool, ef: int
                     ) -> tuple[list[asyncpg.Record], float]:
        async with self.conn.transaction(readonly=True):
            if exact:
                await self.conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
            elif self.index is not None and self.index.method == "ivfflat":
                await self.conn.execute(f"SET LOCAL ivfflat.probes = {int(ef)}; "
                                        "SET LOCAL enable_seqscan = off")
            else:
                await self.conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}; "
                                        "SET LOCAL enable_seqscan = off")
            began = time.perf_counter()
            rows = await self.conn.fetch(sql, vector, k)
            took = time.perf_counter() - began
        return rows, took

    async def self_distance(self, vector: np.ndarray) -> float:
        """The query's distance to itself (NaN: it cannot rank, e.g. a zero vector under cosine)."""
        _, arg = self._operands()
        return float(await self.conn.fetchval(f"SELECT ({arg} {self.operator} {arg})::float8", vector))


def recall(got: list[str], exact: list[str], k: int) -> float:
    """Overlap of *got* with the exact top k, over k (or fewer when the table holds fewer rows)."""
    return len(set(got) & set(exact)) / max(1, min(k, len(exact)))


def tied_recall(got: list[tuple[str, float]], exact: list[tuple[str, float]], k: int) -> float:
    """As :func:`recall`, a row as far as the exact k-th counting as found: of rows at one
    distance, which make the top k is the plan's choice, not a miss."""
    if not exact:
        return 1.0 if not got else 0.0
    kth = exact[-1][1]
    want = min(k, len(exact))
    return min(want, sum(1 for _, d in got if d <= kth)) / want


__all__ = ["OPERATORS", "Knn", "ef_search", "recall", "setting_name", "tied_recall"]
