"""After `syncd import`: search parity of an imported collection, with the bundle's own vectors
as queries (the bundle may come from an air-gapped Chroma: there is no Chroma to ask).

*N* items (``--sample-size``, default 20, at most the collection's size) are drawn from the
bundle's collection lines with a fixed seed (:data:`SEED`); an item without a vector, one
quarantined in ``syncd.rejects``, and one whose distance to itself is not a number (a zero
vector under cosine) is passed over for the next drawn. Each vector is answered through the
table's vector index (the one syncd built, or the app's; HNSW ``hnsw.ef_search``, default
``max(k, the collection's ef_search)``; ivfflat ``ivfflat.probes``, default every list) and
exactly (a sequential scan and a sort), both by :class:`syncd.verify.knn.Knn`. Reported:
recall@k of the index against exact, a row as far as the exact k-th counting as found (rows
at one distance are ties: which of them make the top k is the plan's choice); a difference
when it is below ``--min-recall`` (verify's 0.9), or when a query item is not among its own
exact top k, ties again included (its stored vector is not the bundle's; checked for the
distances by which a vector is nearest to itself: cosine, L2, L1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from syncd.files import bundle as bd
from syncd.files.bundle_source import chunk_rows
from syncd.sql import qi
from syncd.stores.pgvector.index import distance_name, vector_indexes
from syncd.stores.pgvector.plan import VectorTable
from syncd.verify.collections import CollectionOptions
from syncd.verify.knn import Knn, ef_search, setting_name, tied_recall

SEED = 14
"""The draw of query items is the same on every run (a rerun checks the same queries)."""
DEFAULT_QUERIES = 20
SELF_NEAREST = ("<=>", "<->", "<+>")
"""Operators by which a vector is its own nearest neighbour (not inner product)."""
NAMED = 5


@dataclass(slots=True)
class Queries:
    vectors: list[tuple[str, np.ndarray]] = field(default_factory=list)
    passed_over: int = 0


def _draw(root: Path, obj: dict[str, Any], n: int) -> list[tuple[str, np.ndarray, Any]]:
    """Up to *n* x 2 + 10 items in random order (the chunks holding them only are read)."""
    rows = int(obj["rows"])
    order = random.Random(SEED).sample(range(rows), min(rows, 2 * n + 10))
    wanted = set(order)
    items: dict[int, tuple[Any, ...]] = {}
    start = 0
    for c in obj["chunks"]:
        entry = bd.ChunkEntry.from_json(c)
        if any(start <= i < start + entry.rows for i in wanted):
            for at, item in enumerate(chunk_rows(root, entry, None)):
                if start + at in wanted:
                    items[start + at] = item
        start += entry.rows
    out = []
    for i in order:
        if i in items:
            item_id, vector, _doc, _meta, _seq, error = items[i]
            out.append((str(item_id), vector, error))
    return out


async def _queries(knn: Knn, root: Path, obj: dict[str, Any], n: int, rejected: Callable[[str], bool]
                   ) -> Queries:
    q = Queries()
    for item_id, vector, error in _draw(root, obj, n):
        if len(q.vectors) == n:
            break
        if vector is None or error or rejected(item_id):
            q.passed_over += 1
            continue
        if np.isnan(await knn.self_distance(vector)):
            q.passed_over += 1
            continue
        q.vectors.append((item_id, vector))
    return q


async def search_parity(conn: asyncpg.Connection, table: VectorTable, id_text: str, root: Path,
                        obj: dict[str, Any], options: CollectionOptions, rejected: Callable[[str], bool],
                        out: Callable[[str], None]) -> bool:
    """Print one line for collection *obj*; False when its search differs."""
    what = f"verify collection {obj['name']}: search"
    n = DEFAULT_QUERIES if options.sample_size is None else options.sample_size
    if n <= 0:
        return True
    found = await vector_indexes(conn, table.indexed, table.embedding_col)
    if not found:
        out(f"{what} not checked: no vector index on {table.qualified} (pgvector indexes at most 4,000 "
            "dimensions)")
        return True
    index = found[0]
    knn = Knn(conn, table, id_text, index)
    queries = await _queries(knn, root, obj, n, rejected)
    if not queries.vectors:
        out(f"{what} not checked: the bundle holds no item to query with")
        return True
    k = options.k
    ef = ef_search(index, k, options.ef_search, (obj.get("hnsw") or {}).get("ef_search"))
    recalls, lost = [], []
    for item_id, vector in queries.vectors:
        got = await knn.ranked(vector, k, exact=False, ef=ef)
        exact = await knn.ranked(vector, k, exact=True, ef=ef)
        recalls.append(tied_recall(got, exact, k))
        if knn.operator in SELF_NEAREST and item_id not in {i for i, _ in exact}:
            mine = await knn.distance_of(vector, item_id)  # tied with the k-th: in the top k too
            if mine is None or not (exact and mine <= exact[-1][1]):
                lost.append(item_id)
    value = float(np.mean(recalls))
    line = (f"{what} recall@{k} {value:.3f} against exact ({len(queries.vectors)} queries, "
            f"index {index.name} {index.method} {index.opclass}, {setting_name(index)} {ef})")
    if queries.passed_over:
        line += f"; {queries.passed_over} drawn items passed over (no vector, quarantined, or no distance)"
    if index.space != table.space:
        line += (f"; the index ranks by {distance_name(index.space)} distance, the collection by "
                 f"{distance_name(table.space)}")
    if lost:
        named = ", ".join(lost[:NAMED]) + (", …" if len(lost) > NAMED else "")
        line += (f"; {len(lost)} of {len(queries.vectors)} query items not among their own exact top {k} "
                 f"({named}): the vectors stored for them are not the bundle's; `syncd import "
                 f"{root} --update-existing` writes the bundle's items again")
    if value < options.min_recall:
        line += (f"; below --min-recall {options.min_recall:g}: rebuild the index (REINDEX INDEX "
                 f"{qi(table.schema)}.{qi(index.name)}) or search deeper (--ef-search, "
                 f"{setting_name(index)})")
    out(line)
    return not lost and value >= options.min_recall
