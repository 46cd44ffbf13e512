"""After `syncd import`: the target against the bundle, in verify's canonical encoding.

Per table, PostgreSQL computes the count and the XOR of the row hashes (``RowCanon``, verify's
SQL side); the bundle side is the manifest's per-chunk XORs, computed at export from the
SQLite values by verify's own expectation (:mod:`syncd.verify.expect`), never by the sink's
converters. Per collection, the rows' per-column hashes (``VectorCanon``) are streamed and
folded the same way, then its search is checked against exact search
(:mod:`syncd.files.import_search`). XOR is order-free, so one pass each side suffices; rows
quarantined in ``syncd.rejects`` are taken out of the bundle's side (the bundle is read again
for them, and when the target table was not created with the types the export planned: an
adopted table).

Exit code as `syncd verify`: 0 equal, 5 only rejected rows differ, 1 something else differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from syncd import exitcodes
from syncd.config import Config
from syncd.errors import FatalError
from syncd.files import bundle as bd
from syncd.files.bundle_source import CollectionBundleSource, chunk_rows
from syncd.files.chunk_writer import TableHasher
from syncd.files.import_search import search_parity
from syncd.pg.state import jsonable
from syncd.ports.collections import Item
from syncd.sql import STATE_SCHEMA, qi
from syncd.stores.pgvector.table import planned_table, stream_name
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.postgres.tables import plan_table
from syncd.streams.supervisor import SQLITE_STREAM
from syncd.verify.canon import MASK64, RowCanon, row_hash_int
from syncd.verify.collections import CollectionOptions
from syncd.verify.vectors import VectorCanon


def _key_text(key: Any) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


async def _rejected(conn: asyncpg.Connection, stream: str, obj: str) -> set[str]:
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.rejects"):
        return set()  # a target without syncd's state (--verify-only of a target loaded elsewhere)
    rows = await conn.fetch(f"SELECT key::text FROM {STATE_SCHEMA}.rejects WHERE stream = $1 AND object = $2 "
                            "AND resolved_at IS NULL", stream, obj)
    return {_key_text(json.loads(r[0])) for r in rows}


def _rows(root: Path, obj: dict[str, Any], columns: tuple[str, ...] | None) -> Iterator[tuple[Any, ...]]:
    for c in obj["chunks"]:
        yield from chunk_rows(root, bd.ChunkEntry.from_json(c), columns)


def _bundle_side(obj: dict[str, Any]) -> tuple[int, int]:
    n, acc = 0, 0
    for c in obj["chunks"]:
        n += int(c["hashed"])
        acc ^= int(c["row_xor"], 16)
    return n, acc


class BundleCheck:
    def __init__(self, conn: asyncpg.Connection, cfg: Config, root: Path, out: Callable[[str], None],
                 update_stream: str | None, search: CollectionOptions) -> None:
        self.conn, self.cfg, self.root, self.out, self.update = conn, cfg, root, out, update_stream
        self.search = search
        self.differ = self.rejected_only = self.search_differ = 0

    def report(self, what: str, want: tuple[int, int], got: tuple[int, int], rejected: int) -> None:
        note = f", {rejected} rows quarantined in syncd.rejects" if rejected else ""
        if self.update is not None:
            ok = got[0] >= want[0]
            text = f"holds {got[0]} rows, the bundle {want[0]} (--update-existing: other rows may stay)"
        else:
            ok = want == got
            text = (f"{got[0]} rows, hashes equal" if ok else
                    f"differs: the bundle has {want[0]} rows (hash {want[1]:016x}), the target {got[0]} "
                    f"(hash {got[1]:016x})")
        if not ok:
            self.differ += 1
        elif rejected:
            self.rejected_only += 1
        self.out(f"verify {what}: {text}{note}")

    async def table(self, obj: dict[str, Any]) -> None:
        table = bd.table_from_json(obj["schema"])
        target = self.cfg.target  # the table as it is: planned over its columns, nothing created
        existing = await PostgresSink.existing_columns(self.conn, target.schema, target.table_for(table.name))
        tt = plan_table(table, target, existing)
        canon = RowCanon.for_columns(tt.columns, tt.source.pk)
        row = await self.conn.fetchrow(f"SELECT count(*), coalesce(bit_xor({canon.hash_sql()}), 0) "
                                       f"FROM {tt.qualified}")
        got = (int(row[0]), int(row[1]) & MASK64)
        rejected = await _rejected(self.conn, self.update or SQLITE_STREAM, table.name)
        planned = [(c["name"], c["pg_type"]) for c in obj["target"]["columns"]]
        want = _bundle_side(obj)
        gone = 0
        same = tt.created and planned == [(c.name, c.pg_type)
                                          for c in plan_table(table, self.cfg.target, None).columns]
        if rejected or not same:  # the bundle's hashes do not apply as they are: hash it again
            hasher = TableHasher([(c.name, c.pg_type, c.rounded) for c in tt.columns])
            cols = table.target_columns
            key_idx = [cols.index(k) for k in table.pk]
            n, acc = 0, 0
            for r in _rows(self.root, obj, cols):
                h = hasher.row(r)
                if rejected and _key_text(jsonable([r[i] for i in key_idx])) in rejected:
                    gone += 1
                elif h is not None:
                    n, acc = n + 1, acc ^ h
            want = (n, acc)
        self.report(f"table {table.name} -> {tt.qualified}", want, got, gone)

    async def collection(self, obj: dict[str, Any]) -> None:
        source = CollectionBundleSource(self.root, obj, 1)
        try:
            table = await planned_table(self.conn, source, self.cfg.target)  # type: ignore[arg-type]
        finally:
            await source.close()
        if table is None:
            raise FatalError(f"collection {source.info.name!r}: its table is not in the target; run "
                             f"`syncd import {self.root}`")
        schema = await self.conn.fetchval(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'")
        canon = VectorCanon(table, f"{qi(schema)}.vector_send")
        n, acc = 0, 0
        async with self.conn.transaction():
            async for r in self.conn.cursor(canon.select_sql()):
                n, acc = n + 1, acc ^ row_hash_int("|".join(r[1:]))
        stream = f"{self.update}:{source.info.id}" if self.update else stream_name(source.info.id)
        rejected = await _rejected(self.conn, stream, source.info.id)
        want = _bundle_side(obj)
        gone = 0
        # the export hashed each item as a table of syncd's own layout would hold it; a collection
        # over two tables holds it otherwise (a UUID key, syncd_item_id): hashed again here
        if rejected or table.split is not None:
            wn, wacc = 0, 0
            for item_id, vector, document, metadata, seq, error in _rows(self.root, obj, None):
                if _key_text([item_id]) in rejected:
                    gone += 1
                    continue
                exp = canon.expected(Item(item_id, seq, document, metadata, vector, error))
                if exp.parts is not None:
                    wn, wacc = wn + 1, wacc ^ row_hash_int("|".join(exp.parts))
            want = (wn, wacc)
        self.report(f"collection {obj['name']} -> {table.qualified}", want, (n, acc), gone)
        if not await search_parity(self.conn, table, canon.id_text, self.root, obj, self.search,
                                   lambda i: _key_text([i]) in rejected, self.out):
            self.search_differ += 1


async def verify_bundle(conn: asyncpg.Connection, cfg: Config, root: Path, manifest: dict[str, Any],
                        out: Callable[[str], None], *, update_stream: str | None,
                        search: CollectionOptions | None = None) -> int:
    check = BundleCheck(conn, cfg, root, out, update_stream, search or CollectionOptions())
    for obj in manifest.get("tables", []):
        await check.table(obj)
    for obj in manifest.get("collections", []):
        await check.collection(obj)
    if check.differ or check.search_differ:
        if check.differ:
            out(f"verify: {check.differ} tables/collections differ from the bundle")
        if check.search_differ:
            out(f"verify: the search of {check.search_differ} collections differs from exact search")
        return exitcodes.FAILED
    if check.rejected_only:
        out("verify: equal except rows quarantined in syncd.rejects (`syncd rejects` lists them)")
        return exitcodes.QUARANTINED
    out("verify: the target holds the bundle exactly")
    return 0
