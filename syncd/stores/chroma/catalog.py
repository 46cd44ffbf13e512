"""Reading Chroma's catalog and the current images of items, on a read connection to
``chroma.sqlite3`` (the caller's short read transaction): collections with their segments,
distance space and HNSW settings; items with the vector of their last effective log row and
their document and metadata (from that row when it is an ADD, else from the metadata segment)."""

from __future__ import annotations

import json
import sqlite3

from syncd.ports.collections import CollectionInfo, Item, State, Vector, step
from syncd.stores.chroma.records import (
    DOCUMENT_KEY,
    OP_ADD,
    OP_DELETE,
    OP_NAMES,
    OP_UPDATE,
    OP_UPSERT,
    URI_KEY,
    add_image,
    decode_vector,
    distance_space,
    hnsw_settings,
    metadata_value,
    seq_value,
)


def read_catalog(conn: sqlite3.Connection, tenant: str, database: str) -> list[CollectionInfo]:
    """The collections of one tenant / database, by name (those whose segments are written)."""
    rows = conn.execute(
        """SELECT c.id, c.name, c.dimension, c.config_json_str, c.schema_str, d.name, d.tenant_id,
                  (SELECT str_value FROM collection_metadata m
                   WHERE m.collection_id = c.id AND m.key = 'hnsw:space')
           FROM collections c JOIN databases d ON d.id = c.database_id
           WHERE d.tenant_id = ? AND d.name = ? ORDER BY c.name""", (tenant, database)).fetchall()
    segments: dict[str, dict[str, str]] = {}
    for seg_id, scope, coll in conn.execute("SELECT id, scope, collection FROM segments"):
        segments.setdefault(coll, {})[scope] = seg_id
    out = []
    for cid, name, dim, config, schema, db_name, tenant_id, legacy in rows:
        segs = segments.get(cid, {})
        if "METADATA" not in segs:
            continue  # being created: its segments are not written yet
        out.append(CollectionInfo(
            id=cid, name=name, dimension=int(dim) if dim is not None else None,
            space=distance_space(config, schema, legacy), tenant=tenant_id, database=db_name,
            metadata_segment=segs["METADATA"], vector_segment=segs.get("VECTOR"),
            hnsw=hnsw_settings(config, schema)))
    return out


def read_images(conn: sqlite3.Connection, topic: str, wanted: list[tuple[int, str, int]],
                has_arrays: bool) -> list[Item]:
    """Items (metadata-segment rowid, id, seq) with their documents, metadata and vectors.

    The vector comes from the log row of the item's last effective operation; when that row
    carries none (a metadata-only UPDATE), from the id's earlier log rows (:func:`vectors_from_log`),
    exactly as the app wrote it. When the log no longer holds it, or cannot prove it, it is left
    None (with the log's candidate in ``logged``): the caller asks Chroma's server. When that row is an ADD,
    it also holds the item's whole metadata and document (nothing took effect on the item after
    it), so the metadata segment is read only for the others.
    """
    if not wanted:
        return []
    items = {rowid: Item(id=eid, seq=seq, document=None, metadata={}, vector=None)
             for rowid, eid, seq in wanted}
    by_seq = {seq: rowid for rowid, _, seq in wanted}
    rest = set(items)
    for seq, item_id, op, blob, encoding, meta in conn.execute(
            "SELECT seq_id, id, operation, vector, encoding, metadata FROM embeddings_queue "
            "WHERE seq_id IN (SELECT value FROM json_each(?)) AND topic = ?",
            (json.dumps(list(by_seq)), topic)):
        rowid = by_seq.get(int(seq))
        if rowid is None or items[rowid].id != item_id:
            continue
        item = items[rowid]
        if blob is not None:
            item.vector, item.error = decode_vector(blob, encoding)
        if op == OP_ADD and add_image(item, meta):
            rest.discard(rowid)
    need = {i.id: i.seq for i in items.values() if i.vector is None and i.error is None}
    if need:
        found = vectors_from_log(conn, topic, need)
        for item in items.values():
            if item.id in found and item.vector is None and item.error is None:
                vector, certain = found[item.id]
                if certain:
                    item.vector = vector
                else:
                    item.logged = vector
    if rest:
        rowids = json.dumps(sorted(rest))
        for rowid, key, s, i, f, b in conn.execute(
                "SELECT id, key, string_value, int_value, float_value, bool_value "
                "FROM embedding_metadata WHERE id IN (SELECT value FROM json_each(?))", (rowids,)):
            if key == DOCUMENT_KEY:
                items[rowid].document = s
            elif key != URI_KEY:
                items[rowid].metadata[key] = metadata_value(s, i, f, b)
        if has_arrays:
            for rowid, key, s, i, f, b in conn.execute(
                    "SELECT id, key, string_value, int_value, float_value, bool_value "
                    "FROM embedding_metadata_array WHERE id IN (SELECT value FROM json_each(?)) "
                    "ORDER BY id, key, rowid", (rowids,)):
                items[rowid].metadata.setdefault(key, []).append(metadata_value(s, i, f, b))
    return list(items.values())


def vectors_from_log(conn: sqlite3.Connection, topic: str,
                     wanted: dict[str, int]) -> dict[str, tuple[Vector, bool]]:
    """The vectors of items (id: seq of the last effective operation) whose last operation carried
    none (a metadata UPDATE): each id's log rows replayed up to its seq with Chroma's rules, in
    one read of the log, with whether the log proves it.

    The first row of an id may not be the write that created it (the rows before were pruned):
    an ADD there may have found the id present and done nothing, so a vector that rests on it is
    only a candidate. A vector set after it is proven: an UPSERT's, a vector UPDATE once the id
    exists, an ADD after a DELETE. An id is absent when its first row cannot create it (an
    UPDATE or DELETE: pruned), when it does not exist at its seq, or when Chroma's index may hold
    another vector than its log says (:mod:`syncd.stores.chroma.doubt`)."""
    states: dict[str, State] = {}
    vectors: dict[str, Vector | None] = {}
    proven: dict[str, bool] = {}
    purged: set[str] = set()
    for item_id, seq, op, blob, encoding in conn.execute(
            "SELECT id, seq_id, operation, vector, encoding FROM embeddings_queue WHERE topic = ? "
            "AND id IN (SELECT value FROM json_each(?)) ORDER BY seq_id", (topic, json.dumps(list(wanted)))):
        seq = seq_value(seq)
        if item_id in purged or seq > wanted[item_id]:
            continue
        first = item_id not in states
        if first and op not in (OP_ADD, OP_UPSERT):
            purged.add(item_id)  # its history was pruned
            continue
        exists = states.get(item_id, (False, None))[0]
        got = decode_vector(blob, encoding)[0] if blob is not None else None
        if op == OP_DELETE:
            vectors[item_id], proven[item_id] = None, True
        elif op == OP_UPSERT or (op == OP_ADD and not exists) or (op == OP_UPDATE and exists):
            if got is not None:
                vectors[item_id] = got
                proven[item_id] = not (first and op == OP_ADD)
        states[item_id] = step(states.get(item_id, (False, None)), seq, OP_NAMES[op], blob is not None)
    return {i: (v, proven.get(i, False)) for i, (exists, doubt) in states.items()
            if exists and doubt is None and i not in purged and (v := vectors.get(i)) is not None}
