"""The DDL syncd writes for a collection table it creates: the table, and its HNSW index."""

from __future__ import annotations

import hashlib

from syncd.ports.collections import Hnsw
from syncd.sql import qi
from syncd.stores.pgvector.plan import VectorTable

HNSW_MAX_DIM = 2000
HALFVEC_MAX_DIM = 4000
OPCLASS = {"cosine": "cosine", "l2": "l2", "ip": "ip"}


def hnsw_index_sql(t: VectorTable) -> str | None:
    """The HNSW index for the collection's space, or None above pgvector's limits."""
    ops = OPCLASS.get(t.space, "l2")
    name = index_name(t.name, t.embedding_col)
    emb = qi(t.embedding_col)
    h = t.hnsw or Hnsw()  # Chroma's defaults: 16 neighbours, ef_construction 100
    m = min(max(h.max_neighbors, 2), 100)  # pgvector's bounds: m 2-100, ef_construction 4-1000 and >= 2m
    with_ = f" WITH (m = {m}, ef_construction = {min(max(h.ef_construction, 2 * m, 4), 1000)})"
    if t.dim <= HNSW_MAX_DIM:
        return (f"CREATE INDEX IF NOT EXISTS {qi(name)} ON {t.indexed} "
                f"USING hnsw ({emb} vector_{ops}_ops){with_}")
    if t.dim <= HALFVEC_MAX_DIM:
        return (f"CREATE INDEX IF NOT EXISTS {qi(name)} ON {t.indexed} "
                f"USING hnsw (({emb}::halfvec({t.dim})) halfvec_{ops}_ops){with_}")
    return None


def index_name(table: str, column: str) -> str:
    name = f"{table}_{column}_hnsw"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}_hnsw"


def create_table_sql(t: VectorTable) -> str:
    cols = [f"{qi(t.id_col)} text COLLATE \"C\" PRIMARY KEY",
            f"{qi(t.embedding_col)} {t.vector_type} NOT NULL"]
    if t.document_col:
        cols.append(f"{qi(t.document_col)} text")
    if t.metadata_col:
        cols.append(f"{qi(t.metadata_col)} jsonb")
    cols += [f"{qi(m.name)} {m.pg_type}" for m in t.mapped]
    # fillfactor 90: room on each page for HOT updates, so that a metadata-only change does not
    # insert into the HNSW index again (an HNSW insert costs milliseconds)
    return (f"CREATE TABLE IF NOT EXISTS {t.qualified} (\n  " + ",\n  ".join(cols)
            + "\n) WITH (fillfactor = 90)")
