"""Search parity of one collection: the same queries through Chroma and through pgvector.

*N* query vectors are items drawn at random from the collection (their vectors read
as the stream reads them). Each is answered three ways:

- Chroma: ``collection.query(n_results=k)`` over HTTP (the latency includes the round trip);
- pgvector through the table's vector index (the one syncd built, or the app's own, HNSW or
  ivfflat), ``enable_seqscan = off``, and for HNSW ``hnsw.ef_search`` (default
  ``max(k, the collection's ef_search)``: what Chroma searches with, 100 unless the collection
  says otherwise), for ivfflat ``ivfflat.probes`` (``--ef-search`` when given, else every
  list: the exact answer through the index);
- exact: a sequential scan and a sort (the true top k); both in :mod:`syncd.verify.knn`.

The operator is the index's (its operator class): cosine ``<=>``, l2 ``<->``, ip ``<#>``,
l1 ``<+>`` (Chroma's squared L2 and ``1 - dot`` rank like pgvector's L2 and ``-dot``); an
index that ranks by another distance than the collection is named in the detail. Reported:
recall@k of Chroma against pgvector (overlap), of each against exact, and p50 / p95
latency of Chroma and of the HNSW query. pgvector-vs-exact below ``min_recall`` fails.
Against exact, a row as far as the exact k-th counts as found (:func:`knn.tied_recall`): of
rows at one distance, which make the top k is the plan's choice, not a miss (Chroma's ids are
placed by their distance here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np

from syncd.errors import SourceError
from syncd.stores.chroma.server import ChromaServer
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.pgvector.index import VectorIndex, distance_name
from syncd.verify.chroma import sample_ids
from syncd.verify.collections import CollectionOptions
from syncd.verify.knn import OPERATORS, Knn, ef_search, setting_name, tied_recall
from syncd.verify.report import SKIPPED, CheckResult
from syncd.verify.vectors import VectorCanon


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


class SearchCheck:
    """Search parity of one collection; :meth:`run` fills a :class:`CheckResult` of kind ``search``."""

    kind = "search"

    def __init__(self, name: str, conn: asyncpg.Connection, source: ChromaCollectionSource,
                 canon: VectorCanon, options: CollectionOptions, samples: int,
                 index: VectorIndex | None) -> None:
        self.name = name
        self.conn = conn
        self.source = source
        self.canon = canon
        self.options = options
        self.samples = samples
        self.index = index
        """The table's vector index, None when it has none."""
        self.knn = Knn(conn, canon.table, canon.id_text, index)

    @property
    def operator(self) -> str:
        return self.knn.operator

    async def run(self, mode: str) -> CheckResult:
        result = CheckResult(self.kind, self.name)
        t = self.canon.table
        if self.index is None:
            result.status = SKIPPED
            result.detail = (f"no vector index on {t.qualified} (syncd builds it after catch-up; pgvector "
                             "indexes at most 4,000 dimensions)")
            return result
        index = self.index
        server = self.source.server
        if server is None:
            raise SourceError("search parity needs a Chroma server: set source.chroma.url")
        k = self.options.k
        info_ef = self.source.info.hnsw.ef_search if self.source.info.hnsw else 100
        ef = ef_search(index, k, self.options.ef_search, info_ef)
        ids = await sample_ids(self.source.log, self.source.info, self.samples)
        items = await self.source.current_items(ids)
        queries = [(i, item.vector) for i, item in items.items()
                   if item.vector is not None and not item.error]
        if not queries:
            result.detail = "the collection holds no items to query with"
            return result
        chroma = await asyncio.to_thread(_chroma_queries, server, self.source.info.name,
                                         [q for _, q in queries], k)
        overlap, pg_exact, chroma_exact, pg_times = [], [], [], []
        for (_, vector), (chroma_ids, _) in zip(queries, chroma, strict=True):
            hnsw, took = await self.knn.top(vector, k, exact=False, ef=ef)
            exact, _ = await self.knn.top(vector, k, exact=True, ef=ef)
            pg_times.append(took)
            want = max(1, min(k, len(exact)))
            overlap.append(len(set(chroma_ids) & {i for i, _ in hnsw}) / want)
            pg_exact.append(tied_recall(hnsw, exact, k))
            chroma_exact.append(tied_recall(await self.knn.placed(vector, chroma_ids, exact), exact, k))
        numbers: dict[str, Any] = {
            "queries": len(queries), "k": k, "space": t.space, "operator": index.operator,
            "index": index.name, "index_method": index.method, "index_opclass": index.opclass,
            setting_name(index).replace(".", "_"): ef,
            "recall_chroma_vs_pgvector": round(float(np.mean(overlap)), 4),
            "recall_pgvector_vs_exact": round(float(np.mean(pg_exact)), 4),
            "recall_chroma_vs_exact": round(float(np.mean(chroma_exact)), 4),
            "chroma_ms_p50": round(1000 * percentile([c[1] for c in chroma], 50), 2),
            "chroma_ms_p95": round(1000 * percentile([c[1] for c in chroma], 95), 2),
            "pgvector_ms_p50": round(1000 * percentile(pg_times, 50), 2),
            "pgvector_ms_p95": round(1000 * percentile(pg_times, 95), 2),
            "min_recall": self.options.min_recall,
        }
        result.search = numbers
        n = numbers
        result.detail = (
            f"recall@{k} pgvector vs exact {n['recall_pgvector_vs_exact']:.3f}, Chroma vs exact "
            f"{n['recall_chroma_vs_exact']:.3f}, Chroma vs pgvector {n['recall_chroma_vs_pgvector']:.3f}; "
            f"p50/p95 Chroma {n['chroma_ms_p50']:.1f}/{n['chroma_ms_p95']:.1f} ms, pgvector "
            f"{n['pgvector_ms_p50']:.1f}/{n['pgvector_ms_p95']:.1f} ms ({len(queries)} queries, "
            f"index {index.name}: {index.method} {index.operator}, "
            f"{setting_name(index)} {ef})")
        if index.space != t.space:
            result.detail += (f"; the index ranks by {distance_name(index.space)} distance, the collection "
                              f"by {distance_name(t.space)}: Chroma vs pgvector compares two rankings")
        if n["recall_pgvector_vs_exact"] < self.options.min_recall:
            result.problems.append(f"recall@{k} of pgvector's index {index.name} against exact search is "
                                   f"{n['recall_pgvector_vs_exact']:.3f}, below --min-recall "
                                   f"{self.options.min_recall:g}")
        result.decide()
        return result


def _chroma_queries(server: ChromaServer, name: str, vectors: list[np.ndarray], k: int
                    ) -> list[tuple[list[str], float]]:
    """Top-k ids and latency of each query, through a client of its own (blocking: run on a thread)."""
    import chromadb
    from chromadb.config import Settings

    a = server.address
    try:
        client = chromadb.HttpClient(host=a.host, port=a.port, ssl=a.ssl, tenant=server.tenant,
                                     database=server.database, settings=Settings(anonymized_telemetry=False))
        col = client.get_collection(name, embedding_function=None)
        out = []
        for v in vectors:
            began = time.perf_counter()
            query: list[Sequence[float] | Sequence[int]] = [[float(x) for x in v]]
            got = col.query(query_embeddings=query, n_results=k,
                            include=["distances"])
            out.append(([str(i) for i in got["ids"][0]], time.perf_counter() - began))
        return out
    except Exception as exc:
        raise SourceError(f"collection {name!r}: querying the Chroma server at {a} failed: "
                          f"{type(exc).__name__}: {exc}") from exc


__all__ = ["OPERATORS", "SearchCheck", "percentile"]
