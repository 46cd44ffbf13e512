"""`syncd import DIR`: load a bundle into the target through the sinks the live snapshot uses.

1. Read the manifest (a newer format version is refused) and check every chunk file's
   sha256, before anything is written.
2. Per stream (the SQLite tables; each collection), refuse a target that already holds rows
   unless an import into it is under way (resume) or ``--update-existing``.
3. Load: :class:`syncd.stream.Stream` over a :class:`~syncd.files.bundle_source.BundleSource`
   into :class:`PostgresSink` / :class:`PgvectorSink` — binary COPY, rejects quarantined in
   ``syncd.rejects`` (or, with ``--no-skip-errors``, the first bad row stops), each chunk
   committed with the checkpoint, indexes / HNSW built after the load. The snapshot starts
   at the bundle's source position, so the checkpoint left is the one a finished snapshot
   leaves: `syncd run` continues the change log from there. A bundle without capture
   positions (SQLite without capture) leaves no checkpoint for the tables: streaming
   could not know where to start.
   ``--update-existing`` upserts instead (the stream's apply path, stream ``import``).
4. Verify (:mod:`syncd.files.import_verify`): hashes, then search parity of each collection,
   unless ``--no-verify``; ``--verify-only`` runs this step alone, after an import.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from syncd import killpoints
from syncd.config import Config, StreamOptions
from syncd.errors import FatalError, StrictModeStop
from syncd.files import bundle as bd
from syncd.files.bundle_source import BundleSource, CollectionBundleSource, collection_info, table_source
from syncd.model import Batch, Change, Op, Position, SnapshotState
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect
from syncd.ports import Sink
from syncd.ports.tables import Captured
from syncd.service import progress
from syncd.sql import STATE_SCHEMA, qi
from syncd.status import StreamStatus
from syncd.stores.pgvector.sink import PgvectorSink
from syncd.stores.pgvector.table import ensure_state, plan_name, prepare_table, register_codec, stream_name
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.postgres.tables import TargetTable
from syncd.stream import Stream
from syncd.streams.supervisor import SQLITE_STREAM, target_dsn
from syncd.verify.collections import CollectionOptions

UPDATE_STREAM = "import"
"""The stream name --update-existing checkpoints (and quarantines) under."""


class Importer:
    def __init__(self, cfg: Config, root: Path, *, batch_size: int | None, workers: int, skip_errors: bool,
                 update_existing: bool, out: Callable[[str], None]) -> None:
        self.cfg, self.root, self.out = cfg, root, out
        self.workers, self.skip_errors, self.update = workers, skip_errors, update_existing
        self.options = StreamOptions(chunk_rows=batch_size or cfg.stream.chunk_rows,
                                     batch_size=batch_size or cfg.stream.batch_size, poll_interval=0.01,
                                     retry_max_seconds=cfg.stream.retry_max_seconds)
        self.manifest = bd.read_manifest(root)
        self.bundle = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()[:16]
        """This bundle's identity: its manifest's digest."""
        self.dsn = ""
        self.kill = killpoints.hooks({"SYNCD_KILL_AT": _import_spec()}).get("import")
        self.sinks: dict[str, Any] = {}

    def check_files(self) -> int:
        n = 0
        for obj in [*self.manifest.get("tables", []), *self.manifest.get("collections", [])]:
            for c in obj["chunks"]:
                bd.check_chunk(self.root, bd.ChunkEntry.from_json(c))
                n += 1
        return n

    # --- tables ----------------------------------------------------------------------------

    def _capture(self) -> dict[str, Any] | None:
        sqlite = self.manifest.get("sqlite") or {}
        cap: dict[str, Any] | None = sqlite.get("capture")
        return cap

    async def tables(self, conn: asyncpg.Connection) -> None:
        objs = self.manifest.get("tables", [])
        if not objs:
            return
        cap = self._capture()
        source = table_source(self.root, objs, int(cap["position"]) if cap else 0, self.workers)
        source.source_id = cap.get("generation") if cap else None
        captured = {t: Captured(int(v[0]), int(v[1])) for t, v in (cap or {}).get("captured", {}).items()}
        tables = [bd.table_from_json(o["schema"]) for o in objs]
        prepared = await PostgresSink.prepare(conn, SQLITE_STREAM, tables, self.cfg.target)
        streams: list[Stream] = []

        async def open_sink() -> Sink:
            c = await connect(self.cfg.target, self.dsn)
            try:
                tts = await PostgresSink.prepare(c, SQLITE_STREAM, tables, self.cfg.target)
            except BaseException:
                await close_quietly(c)
                raise
            sink = PostgresSink(c, tts, strict=not self.skip_errors,
                                on_reject=streams[0].count_rejects if streams else None,
                                source_id=source.source_id, captured=captured)
            self.sinks[SQLITE_STREAM] = sink
            return sink

        name = UPDATE_STREAM if self.update else SQLITE_STREAM
        if await self._finished(conn, SQLITE_STREAM):
            return
        try:
            if self.update:
                await self._upsert(source, open_sink, name)
            else:
                await self._refuse_full(conn, SQLITE_STREAM, [(tt.qualified, tt.name) for tt in prepared])
                streams.append(Stream(SQLITE_STREAM, source, open_sink, self.options, on_chunk=self.kill))
                await self._run(streams[0])
        finally:
            await source.close()
        if self.update and cap:
            await self._finished_snapshot(conn, prepared, cap, captured)
        if not cap and not self.update:
            await conn.execute(f"DELETE FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", SQLITE_STREAM)
        await self._mark(conn, SQLITE_STREAM)
        rows = sum(int(o["rows"]) for o in objs)
        self.out(f"tables: {len(objs)} loaded, {rows} rows in the bundle"
                 + (f", capture position {cap['position']} (`syncd run` continues from there)" if cap else
                    " (no capture positions in the bundle: `syncd run` cannot continue from it)"))

    async def _finished_snapshot(self, conn: asyncpg.Connection, prepared: list[TargetTable],
                                 cap: dict[str, Any], captured: dict[str, Captured]) -> None:
        """After --update-existing: the tables' checkpoint as a finished snapshot at the bundle's position."""
        from syncd.stores.postgres import schema_change

        start = Position(int(cap["position"]))
        names = [tt.source.name for tt in prepared]
        state = SnapshotState(start=start, done=names, complete=True)
        async with conn.transaction():
            await schema_change.record_snapshot_start(conn, SQLITE_STREAM, start.offset,
                                                      {tt.source.name: tt for tt in prepared}, captured)
            await pgstate.save_checkpoint(conn, SQLITE_STREAM, start, state, cap.get("generation"))

    # --- collections -----------------------------------------------------------------------

    async def collections(self, conn: asyncpg.Connection) -> None:
        for obj in self.manifest.get("collections", []):
            source = CollectionBundleSource(self.root, obj, self.workers)
            name = stream_name(source.info.id)
            if await self._finished(conn, name):
                await source.close()
                continue
            streams: list[Stream] = []

            async def open_sink(source: CollectionBundleSource = source, name: str = name,
                                streams: list[Stream] = streams) -> Sink:
                c = await connect(self.cfg.target, self.dsn)
                try:
                    await ensure_state(c)
                    table = await prepare_table(c, source, self.cfg.target)  # type: ignore[arg-type]
                except BaseException:
                    await close_quietly(c)
                    raise
                sink = PgvectorSink(c, table, source, strict=not self.skip_errors,  # type: ignore[arg-type]
                                    chunk_rows=self.options.chunk_rows,
                                    on_reject=streams[0].count_rejects if streams else None)
                self.sinks[name] = sink
                return sink

            try:
                if self.update:
                    await self._upsert(source, open_sink, f"{UPDATE_STREAM}:{source.info.id}")
                else:
                    await ensure_state(conn)
                    table = await prepare_table(conn, source, self.cfg.target)  # type: ignore[arg-type]
                    await self._refuse_full(conn, name, [(table.qualified, table.name)])
                    streams.append(Stream(name, source, open_sink, self.options, on_chunk=self.kill))
                    await self._run(streams[0], str(obj["name"]))
            finally:
                await source.close()
            await self._mark(conn, name)
            self.out(f"collection {obj['name']}: {obj['rows']} items in the bundle, log position "
                     f"{obj['position']}")

    # --- progress of this bundle's import ----------------------------------------------------

    async def begin(self, conn: asyncpg.Connection) -> None:
        """Record this bundle's import as under way; refuse while another bundle's is unfinished
        (resuming into tables another bundle half-loaded would mix the two)."""
        await ensure_state(conn)  # syncd's tables, `syncd.imports` among them (syncd.pg.state.DDL)
        other = await conn.fetchrow(f"SELECT path, started_at FROM {STATE_SCHEMA}.imports WHERE bundle <> $1",
                                    self.bundle)
        if other is not None:
            raise FatalError(f"the import of another bundle ({other['path']}, started "
                             f"{other['started_at']:%Y-%m-%d %H:%M:%S %Z}) did not finish; run "
                             f"`syncd import {other['path']}` again to finish it first")
        await conn.execute(f"INSERT INTO {STATE_SCHEMA}.imports (bundle, path) VALUES ($1, $2) "
                           "ON CONFLICT (bundle) DO NOTHING", self.bundle, str(self.root))

    async def ready_to_verify(self, conn: asyncpg.Connection) -> None:
        """--verify-only: refused while an import into the target is under way (it would differ),
        and when a table of the bundle is not in the target (verify would create it). Writes nothing
        to the target (not even syncd's state tables)."""
        await register_codec(conn)
        other = None  # nothing written: a target without syncd's state has no import under way
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.imports"):
            other = await conn.fetchval(f"SELECT path FROM {STATE_SCHEMA}.imports LIMIT 1")
        if other is not None:
            raise FatalError(f"the import of {other} did not finish; run `syncd import {other}` again to "
                             "finish it, then verify")
        target = self.cfg.target
        names = [(o["name"], target.table_for(o["name"])) for o in self.manifest.get("tables", [])]
        names += [(o["name"], plan_name(collection_info(o), target))
                  for o in self.manifest.get("collections", [])]
        for obj, table in names:
            if await conn.fetchval("SELECT to_regclass($1) IS NULL", f"{qi(target.schema)}.{qi(table)}"):
                raise FatalError(f"--verify-only: {target.schema}.{table} (of {obj!r}) is not in the target: "
                                 f"this bundle was not imported here; run `syncd import {self.root}`")

    async def _finished(self, conn: asyncpg.Connection, stream: str) -> bool:
        done = await conn.fetchval(f"SELECT $2 = ANY(finished) FROM {STATE_SCHEMA}.imports WHERE bundle = $1",
                                   self.bundle, stream)
        if done:
            self.out(f"{stream}: already loaded by the interrupted run of this import; skipped")
        return bool(done)

    async def _mark(self, conn: asyncpg.Connection, stream: str) -> None:
        await conn.execute(f"UPDATE {STATE_SCHEMA}.imports SET finished = array_append(finished, $2) "
                           "WHERE bundle = $1", self.bundle, stream)

    async def end(self, conn: asyncpg.Connection) -> None:
        """Every object loaded: this import's progress (and --update-existing's chunk counts) go."""
        async with conn.transaction():
            await conn.execute(f"DELETE FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1 OR stream LIKE $2",
                               UPDATE_STREAM, UPDATE_STREAM + ":%")
            await conn.execute(f"DELETE FROM {STATE_SCHEMA}.imports WHERE bundle = $1", self.bundle)

    # --- loading ---------------------------------------------------------------------------

    async def _refuse_full(self, conn: asyncpg.Connection, stream: str,
                           tables: list[tuple[str, str]]) -> None:
        """A target table with rows is refused, unless this import is under way (resumed)."""
        checkpoint = await pgstate.load_checkpoint(conn, stream)
        if checkpoint is not None and checkpoint.snapshot is not None and not checkpoint.snapshot.complete:
            copied = sum(checkpoint.snapshot.copied.values())
            self.out(f"{stream}: resuming the import ({copied} rows already loaded)")
            return
        for qualified, _name in tables:
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {qualified})"):
                raise FatalError(f"target table {qualified} already has rows; import into empty tables "
                                 f"(TRUNCATE {qualified}), or pass --update-existing to upsert the bundle's "
                                 "rows over them")
        if checkpoint is not None:  # a finished load of empty tables, or an old run's: start over
            await conn.execute(f"DELETE FROM {STATE_SCHEMA}.checkpoints WHERE stream = $1", stream)

    async def _run(self, stream: Stream, label: str | None = None) -> None:
        """Run *stream* over the bundle; on a terminal, its bars (named *label*: a collection's name)."""
        stop = asyncio.Event()

        def shown() -> list[StreamStatus]:
            st = stream.status
            obj = label if label is not None and st.snapshot_object is not None else st.snapshot_object
            return [dataclasses.replace(st, name="import", snapshot_object=obj)]

        bars = asyncio.create_task(progress.show(shown), name="syncd-import-progress")
        try:
            await stream.run(stop, until_caught_up=True)
        except StrictModeStop as exc:
            what = str(exc).split("; fix the row", 1)[0].split("; fix the item", 1)[0]
            raise FatalError(f"{what}; fix it in the source or the mapping (target.column_types), or "
                             "import with --skip-errors (the default) to quarantine such rows in "
                             "syncd.rejects") from exc
        finally:
            bars.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bars

    async def _upsert(self, source: BundleSource, open_sink: Callable[[], Any], name: str) -> None:
        """--update-existing: every chunk as upserts through the sink's apply path; the position of
        stream *name* counts the chunks applied (a resumed import skips those)."""
        sink = await open_sink()
        meter = progress.Meter("import")
        try:
            done = await pgstate.load_checkpoint(sink.conn, name)
            n = 0
            for obj in source.snapshot_objects():
                cols = source.columns[obj]
                meter.begin(source.info.name if isinstance(source, CollectionBundleSource) else obj,
                            await source.count(obj))
                async for chunk in source.snapshot_chunks(obj, None, self.options.chunk_rows):
                    n += 1
                    meter.add(len(chunk.rows))
                    if done is not None and n <= done.position.offset:
                        continue
                    op = Op.UPDATE if isinstance(source, CollectionBundleSource) else Op.INSERT
                    changes = [Change(op, obj, tuple(r[k] for k in source.key_index[obj]), _image(cols, r),
                                      Position(n)) for r in chunk.rows]
                    await sink.apply(name, Batch(changes=changes, position=Position(n)))
                    if self.kill:
                        await self.kill(obj, chunk)
            await sink.after_catch_up(name)
        finally:
            meter.close()
            await sink.close()


def _image(cols: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    image = dict(zip(cols, row, strict=True))
    if "embedding" in image and "seq" in image:  # a collection item
        # the bundle's item whole: a document or metadata key the target has and the bundle
        # lacks is removed (an upsert would keep it: Chroma's update semantics)
        return {"op": "replace", "embedding": image["embedding"], "document": image["document"],
                "has_document": True, "metadata": image["metadata"], "error": image["error"]}
    return image


def _import_spec() -> str:
    import os

    spec = os.environ.get("SYNCD_KILL_AT", "")
    return spec if spec.startswith("import:") else ""


async def run_import(cfg: Config, root: Path, *, batch_size: int | None, workers: int, skip_errors: bool,
                     update_existing: bool, verify: bool, verify_only: bool = False,
                     search: CollectionOptions | None = None, out: Callable[[str], None] = print) -> int:
    imp = Importer(cfg, root, batch_size=batch_size, workers=workers, skip_errors=skip_errors,
                   update_existing=update_existing, out=out)
    n = await asyncio.to_thread(imp.check_files)
    out(f"bundle {root} (format {imp.manifest['format']} {imp.manifest['version']}): {n} chunk files, "
        "sha256 ok")
    imp.dsn = await target_dsn(cfg)
    conn = await connect(cfg.target, imp.dsn)
    try:
        if verify_only:
            await imp.ready_to_verify(conn)
        else:
            await imp.begin(conn)
            await imp.tables(conn)
            await imp.collections(conn)
            await imp.end(conn)
        if not verify:
            return 0
        from syncd.files.import_verify import verify_bundle

        return await verify_bundle(conn, cfg, root, imp.manifest, out,
                                   update_stream=UPDATE_STREAM if update_existing else None, search=search)
    finally:
        await close_quietly(conn)
