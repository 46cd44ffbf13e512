"""The vector index of a collection's table: the one already there (the app's, any pgvector
access method and operator class) or the HNSW index syncd builds; which distance it ranks by.

An index the operator made is adopted as it is: syncd adds no second one. When its distance is
not the collection's (an L2 index on a cosine collection), syncd still keeps it and says so once,
with what to do (docs/mapping.md, "Vector indexes").
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from syncd.sql import STATE_SCHEMA, qi

VECTOR_METHODS = ("hnsw", "ivfflat")

_DISTANCES = {"cosine": ("cosine", "<=>"), "l2": ("L2", "<->"), "ip": ("inner product", "<#>"),
              "l1": ("L1", "<+>"), "hamming": ("Hamming", "<~>"), "jaccard": ("Jaccard", "<%>")}


@dataclass(frozen=True, slots=True)
class VectorIndex:
    """A pgvector index on the table's embedding column."""

    name: str
    method: str
    """``hnsw`` or ``ivfflat``"""
    opclass: str
    """e.g. ``vector_cosine_ops``, ``halfvec_l2_ops``"""
    definition: str
    """``pg_get_indexdef``"""
    options: tuple[str, ...] = ()
    """its storage parameters, e.g. ``lists=100``"""

    @property
    def space(self) -> str:
        """The distance it ranks by, in Chroma's words where Chroma has one (``cosine``, ``l2``,
        ``ip``), else pgvector's (``l1``, ``hamming``, ``jaccard``)."""
        return self.opclass.rsplit("_ops", 1)[0].rsplit("_", 1)[-1]

    @property
    def operator(self) -> str:
        return _DISTANCES.get(self.space, ("", "<->"))[1]

    @property
    def halfvec(self) -> bool:
        return self.opclass.startswith("halfvec_")

    @property
    def lists(self) -> int:
        """An ivfflat index's lists (pgvector's default 100 when not set)."""
        for option in self.options:
            key, _, value = option.partition("=")
            if key == "lists" and value.isdigit():
                return int(value)
        return 100

    def describe(self) -> str:
        return f"{self.name} ({self.method}, {self.opclass}: {distance_name(self.space)} distance)"


def distance_name(space: str) -> str:
    return _DISTANCES.get(space, (space, ""))[0]


async def vector_indexes(conn: asyncpg.Connection, qualified: str, column: str) -> list[VectorIndex]:
    """The hnsw / ivfflat indexes of *qualified* whose first key is *column* (or an expression on it,
    such as ``(embedding::halfvec(3072))``), oldest first."""
    rows = await conn.fetch(
        """SELECT i.relname, a.amname, o.opcname, pg_get_indexdef(i.oid) AS def,
                  coalesce(i.reloptions, '{}') AS options, pg_get_indexdef(i.oid, 1, true) AS key
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_am a ON a.oid = i.relam JOIN pg_opclass o ON o.oid = x.indclass[0]
           WHERE x.indrelid = $1::regclass AND a.amname = ANY($2::text[])
           ORDER BY i.oid""", qualified, list(VECTOR_METHODS))
    found = []
    for r in rows:
        key = str(r["key"]).strip('()"').split("::", 1)[0].strip('()"')
        if key == column:
            found.append(VectorIndex(r["relname"], r["amname"], r["opcname"], r["def"], tuple(r["options"])))
    return found


def mismatch(index: VectorIndex, collection: str, space: str, table: str) -> str | None:
    """One line when *index* ranks by another distance than the collection, else None."""
    if index.space == space:
        return None
    want = "vector_" + {"cosine": "cosine", "l2": "l2", "ip": "ip"}.get(space, "l2") + "_ops"
    return (f"{table}: vector index {index.describe()} does not rank by the {distance_name(space)} "
            f"distance of collection {collection!r}; syncd keeps it and adds none, and verify's search "
            f"parity ranks by its operator {index.operator}. If the app searches by "
            f"{distance_name(space)}, create an index with {want} and drop {index.name}")


# --- an adopted ivfflat index built on a table far smaller than the load ------------------------

REBUILD_GROWTH = 2
"""An adopted ivfflat index is rebuilt after the snapshot when the table has at least this many
times the rows it had when syncd adopted the index (an app's index made on its empty table)."""


async def record_adopted_ivfflat(conn: asyncpg.Connection, collection_id: str, qualified: str) -> int:
    """Note in ``syncd.chroma_collections.ivfflat_rows`` how many rows the table has as syncd adopts
    its ivfflat index: ivfflat took its list centres from at most those rows."""
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {qualified}"))
    await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET ivfflat_rows = $2 "
                       "WHERE collection_id = $1", collection_id, rows)
    return rows


async def adopted_rows(conn: asyncpg.Connection, schema: str, table: str) -> int | None:
    """The rows the table had when its ivfflat index was adopted, while a rebuild is pending."""
    value = await conn.fetchval(
        f"SELECT ivfflat_rows FROM {STATE_SCHEMA}.chroma_collections WHERE schema_name = $1 "
        "AND table_name = $2 AND deleted_at IS NULL", schema, table)
    return None if value is None else int(value)


async def rebuild_outgrown(conn: asyncpg.Connection, index: VectorIndex, schema: str, table: str,
                           qualified: str, timeout: float) -> tuple[int, int] | None:
    """After the snapshot: REINDEX the adopted ivfflat *index* (CONCURRENTLY: the app's searches
    and writes go on) when the table grew at least :data:`REBUILD_GROWTH`-fold since it was adopted
    (at least to the index's lists). Once: the pending mark is cleared either way. Returns
    (rows then, rows now) when rebuilt."""
    before = await adopted_rows(conn, schema, table)
    if before is None or index.method != "ivfflat":
        return None
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {qualified}"))
    rebuilt = rows >= max(REBUILD_GROWTH * before, index.lists) and rows > before
    if rebuilt:
        await conn.execute(f"REINDEX INDEX CONCURRENTLY {qi(schema)}.{qi(index.name)}", timeout=timeout)
    await conn.execute(f"UPDATE {STATE_SCHEMA}.chroma_collections SET ivfflat_rows = NULL "
                       "WHERE schema_name = $1 AND table_name = $2", schema, table)
    return (before, rows) if rebuilt else None
