"""Reading one Chroma collection for `syncd export`, inside the caller's read transaction of
``chroma.sqlite3``: its log position, its items page by page with their vectors, their lines."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from syncd.files import bundle as bd
from syncd.ports.collections import CollectionInfo, Item
from syncd.stores.chroma.catalog import read_images
from syncd.stores.chroma.records import seq_value


def line(item: Item) -> str:
    line = bd.encode_item(item.id, item.vector, item.document, item.metadata, item.seq)
    if item.error:
        return line[:-1] + f',"error":{json.dumps(item.error)}}}'
    return line


def head(conn: sqlite3.Connection, info: CollectionInfo, topic: str) -> int:
    """The collection's log position in this read transaction: every operation at or below it is
    in the metadata segment (as the stream's snapshot start)."""
    row = conn.execute("SELECT seq_id FROM max_seq_id WHERE segment_id = ?",
                       (info.metadata_segment,)).fetchone()
    applied = seq_value(row[0]) if row and row[0] is not None else None
    newest = conn.execute("SELECT max(seq_id) FROM embeddings_queue WHERE topic = ?", (topic,)).fetchone()[0]
    if applied is None or newest is None:
        return 0
    return min(applied, int(newest))


def count(conn: sqlite3.Connection, info: CollectionInfo) -> int:
    """The collection's items in this read transaction (for the progress bar)."""
    return int(conn.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?",
                            (info.metadata_segment,)).fetchone()[0])


def item_pages(conn: sqlite3.Connection, info: CollectionInfo, topic: str, after: str | None, rows: int,
                has_arrays: bool) -> Iterator[list[Item]]:
    while True:
        sql = ("SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
               + ("AND embedding_id > ? " if after is not None else "") + "ORDER BY embedding_id LIMIT ?")
        params: tuple[Any, ...] = (info.metadata_segment, after, rows) if after is not None \
            else (info.metadata_segment, rows)
        found = conn.execute(sql, params).fetchall()
        if not found:
            return
        wanted = [(int(r[0]), str(r[1]), seq_value(r[2])) for r in found]
        items = read_images(conn, topic, wanted, has_arrays)
        items.sort(key=lambda i: i.id.encode("utf-8", "surrogatepass"))
        if items:
            yield items
        if len(found) < rows:
            return
        after = str(found[-1][1])
