"""The Chroma -> pgvector streams: one per collection, following Chroma's catalog.

Where the log and the server come from is :mod:`syncd.stores.chroma.topology`; with a
server only, the streams scan it instead (:mod:`syncd.stores.chroma.remote`).
Collections created while syncd runs get a table and a snapshot; deleted ones
have their table kept and marked, or dropped (``source.chroma.on_delete``);
renamed ones keep streaming, and a table syncd named after the collection is
renamed with it (:mod:`syncd.streams.chroma_admin`).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from syncd import killpoints
from syncd.config import Config
from syncd.errors import CaptureError, FatalError, SyncdError
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, translate
from syncd.ports import Sink
from syncd.ports.collections import CollectionInfo
from syncd.service.health import Liveness
from syncd.sql import STATE_SCHEMA
from syncd.status import StreamStatus
from syncd.stores.chroma import retention as chroma_retention
from syncd.stores.chroma.remote import RemoteCollectionSource, RemoteTopology
from syncd.stores.chroma.server import find_openers
from syncd.stores.chroma.source import ChromaCollectionSource
from syncd.stores.chroma.topology import Topology, server_only, wanted
from syncd.stores.pgvector.mapping import parse_columns
from syncd.stores.pgvector.remote_sink import open_remote_sink
from syncd.stores.pgvector.sink import PgvectorSink
from syncd.stores.pgvector.table import ensure_state, prepare_table, stream_name
from syncd.stream import Stream
from syncd.streams.chroma_admin import rename_table, retire
from syncd.streams.ownership import Ownership

log = structlog.get_logger("syncd.chroma")
STOP_TIMEOUT = 30.0


class ChromaStreams:
    """The streams of one Chroma source. Only its run() task starts, stops and replaces them."""

    def __init__(self, config: Config, dsn: str, topology: Topology | RemoteTopology,
                 liveness: Liveness | None = None, ownership: Ownership | None = None) -> None:
        assert config.chroma is not None
        self.liveness = liveness
        self.ownership = ownership
        self.config = config
        self.chroma = config.chroma
        self.dsn = dsn
        self.topology = topology
        self.streams: dict[str, Stream] = {}
        self.sources: dict[str, ChromaCollectionSource | RemoteCollectionSource] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._vacuums: int | None = None
        self._kill = killpoints.from_environment()
        self._until_caught_up = False

    def statuses(self) -> list[StreamStatus]:
        return [s.status for s in self.streams.values()]

    # --- setting up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Check retention, retire collections deleted while syncd was away, build the streams."""
        if isinstance(self.topology, Topology) and \
                chroma_retention.recorded(self.config.state_dir, self.topology.log) is None:
            raise CaptureError(f"Chroma log retention is not set up for {self.topology.log.directory}: "
                               "run `syncd init` first (it stops Chroma from purging its log before syncd "
                               "reads it)")
        for i, entry in enumerate(self.config.target.collections):
            parse_columns(entry, i)  # a mapping error is a config error, before anything starts
        await self._check_evidence()
        catalog = await self._catalog()
        missing = sorted(set(self.chroma.collections or ()) - {c.name for c in catalog})
        if missing:
            log.warning("collections named in source.chroma.collections do not exist (yet)", missing=missing)
        conn = await connect(self.config.target, self.dsn)
        try:
            try:
                await ensure_state(conn)
            except SyncdError:
                raise
            except Exception as exc:
                raise translate(exc, "creating syncd's state tables") from exc
            live = {c.id for c in catalog}
            for record in await conn.fetch(
                    f"SELECT collection_id FROM {STATE_SCHEMA}.chroma_collections WHERE deleted_at IS NULL"):
                if record["collection_id"] not in live:
                    await retire(conn, record["collection_id"], self.chroma.on_delete)
            for info in catalog:
                if wanted(self.config, info) and info.dimension is not None:
                    rejects = await pgstate.count_rejects(conn, stream_name(info.id))
                    self._add(info, rejects)
        finally:
            await close_quietly(conn)
        waiting = [c.name for c in catalog if wanted(self.config, c) and c.dimension is None]
        if waiting:
            log.info("collections without items yet: synced once they have one", collections=waiting)

    async def _catalog(self) -> list[CollectionInfo]:
        if isinstance(self.topology, RemoteTopology):
            return await self.topology.catalog()
        return await self.topology.log.catalog(self.chroma.tenant, self.chroma.database)

    def _add(self, info: CollectionInfo, rejects: int = 0) -> Stream:
        source: ChromaCollectionSource | RemoteCollectionSource
        if isinstance(self.topology, RemoteTopology):
            source = self.topology.source(info)
        else:
            source = ChromaCollectionSource(self.topology.log, self.topology.server, info)
        config, dsn = self.config, self.dsn
        stream: Stream

        async def open_sink() -> Sink:
            if isinstance(source, RemoteCollectionSource):
                return await open_remote_sink(config, dsn, source, on_reject=stream.count_rejects,
                                              busy=liveness.busy if liveness else None)
            conn = await connect(config.target, dsn)
            try:
                await ensure_state(conn)
                table = await prepare_table(conn, source, config.target, reverse_capture=True)
            except BaseException as exc:
                await close_quietly(conn)
                if isinstance(exc, Exception) and not isinstance(exc, SyncdError):
                    # a deadlock or serialization failure is retried like any retryable error
                    raise translate(exc, f"preparing the table of collection {info.name!r}") from exc
                raise
            return PgvectorSink(conn, table, source, strict=config.target.strict,
                                chunk_rows=config.stream.chunk_rows, on_reject=stream.count_rejects,
                                busy=liveness.busy if liveness else None)

        liveness = self.liveness
        stream = Stream(stream_name(info.id), source, open_sink, config.stream, rejects=rejects,
                        on_chunk=self._kill.get("chunk"), on_batch=self._kill.get("batch"),
                        on_progress=liveness.observe if liveness else None,
                        busy=liveness.busy if liveness else None,
                        may_release=lambda sink: isinstance(sink, PgvectorSink) and sink.idle_work_done())
        if self.ownership is not None:  # claimed on first open (new collections), checked on reopen
            stream.open_sink = self.ownership.guard(dsn, stream.name, stream.open_sink)
        self.streams[info.id] = stream
        self.sources[info.id] = source
        log.info("collection", collection=info.name, id=info.id, stream=stream.name, space=info.space,
                 dimension=info.dimension)
        return stream

    # --- running -------------------------------------------------------------------------

    def _launch(self, cid: str) -> None:
        stop = asyncio.Event()
        self._stops[cid] = stop
        self._tasks[cid] = asyncio.create_task(
            self.streams[cid].run(stop, until_caught_up=self._until_caught_up), name=self.streams[cid].name)

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        """Run every collection's stream; follow the catalog until *stop* (or until caught up)."""
        self._until_caught_up = until_caught_up
        for cid in self.streams:
            self._launch(cid)
        interval = max(1.0, self.config.stream.poll_interval)
        try:
            while not stop.is_set():
                running = {t for t in self._tasks.values() if not t.done()}
                if until_caught_up and not running:
                    break
                halt = asyncio.ensure_future(stop.wait())
                await asyncio.wait({halt, *running}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                halt.cancel()
                if stop.is_set():
                    break
                if not until_caught_up:
                    await self._follow()
                await self._check_evidence()
                if self.topology.private is not None:
                    await self._check_openers()
        except asyncio.CancelledError:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            raise
        except BaseException:
            for ev in self._stops.values():
                ev.set()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            raise
        for ev in self._stops.values():
            ev.set()
        results = await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        broken = []
        for cid, r in zip(list(self._tasks), results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, FatalError | asyncio.CancelledError):
                # a FatalError left its stream in phase "failed"; anything else did not
                log.error("stream crashed", stream=self.streams[cid].name, error=repr(r))
                broken.append(f"{self.streams[cid].name}: {r}")
        if broken:
            raise FatalError("Chroma streams ended on an unexpected error: " + "; ".join(broken))

    async def _halt(self, cid: str) -> None:
        """Stop the collection's stream task; its source and status stay (see :meth:`_forget`)."""
        task = self._tasks.pop(cid, None)
        self._stops.pop(cid, asyncio.Event()).set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
            except TimeoutError:
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _forget(self, cid: str) -> None:
        """Drop a halted stream: close its source, remove it and its status."""
        source = self.sources.pop(cid, None)
        if source is not None:
            await source.close()
        self.streams.pop(cid, None)

    async def _follow(self) -> None:
        """Start streams for new collections, retire deleted ones, follow renames.

        Each change is done in PostgreSQL before syncd forgets the old state, so one that
        cannot be done now (the target is unreachable) is seen again, and done, at a later
        poll; meanwhile the other streams go on (their own retries wait the outage out)."""
        try:
            found = await self._catalog()
            catalog = {c.id: c for c in found}
        except SyncdError as exc:
            log.warning("reading Chroma's catalog failed", error=str(exc))
            return
        gone = [cid for cid in self.sources if cid not in catalog]
        renamed = [c for cid, c in catalog.items()
                   if cid in self.sources and self.sources[cid].info.name != c.name]
        new = [c for cid, c in catalog.items()
               if cid not in self.sources and wanted(self.config, c) and c.dimension is not None]
        if not (gone or renamed or new):
            return
        try:
            await self._apply_catalog(gone, renamed, new)
        except FatalError:
            raise
        except (SyncdError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            error = translate(exc, "following Chroma's catalog")
            if isinstance(error, FatalError):
                raise error from exc
            log.warning("following Chroma's catalog: not done yet, trying again at the next poll",
                        error=str(error), deleted=len(gone), renamed=len(renamed), created=len(new))

    async def _apply_catalog(self, gone: list[str], renamed: list[CollectionInfo],
                             new: list[CollectionInfo]) -> None:
        conn = await connect(self.config.target, self.dsn)
        try:
            for cid in gone:
                name = self.sources[cid].info.name
                await self._halt(cid)
                what = await retire(conn, cid, self.chroma.on_delete)
                await self._forget(cid)
                log.warning("collection deleted in Chroma", collection=name, id=cid, table=what)
            for info in renamed:
                old = self.sources[info.id].info.name
                await self._halt(info.id)
                table = await rename_table(conn, self.config, info, old)
                rejects = await pgstate.count_rejects(conn, stream_name(info.id))
                await self._forget(info.id)
                log.info("collection renamed in Chroma", collection=info.name, previous=old, table=table)
                self._add(info, rejects)
                self._launch(info.id)
            for info in new:
                rejects = await pgstate.count_rejects(conn, stream_name(info.id))
                log.info("collection created in Chroma", collection=info.name, id=info.id)
                self._add(info, rejects)
                self._launch(info.id)
        finally:
            await close_quietly(conn)

    async def _check_evidence(self) -> None:
        """If Chroma may have purged its log (purging back on, a vacuum), check every stream for gaps."""
        if not isinstance(self.topology, Topology):
            return  # server only: no log to purge
        try:
            evidence = await chroma_retention.purge_evidence(self.topology.log)
            purged = evidence.automatically_purge or (self._vacuums is not None
                                                      and evidence.vacuums != self._vacuums)
            if evidence.automatically_purge:
                log.warning("Chroma's automatic log purging is on again (chroma vacuum, or set by hand); "
                            "turning it off, and checking every collection for purged changes")
                await chroma_retention.set_purge(self.topology.log, False)
            self._vacuums = evidence.vacuums
        except SyncdError as exc:
            log.warning("reading Chroma's purge setting failed", error=str(exc))
            return
        if purged:
            for source in self.sources.values():
                if isinstance(source, ChromaCollectionSource):
                    source.suspect_gap()

    async def _check_openers(self) -> None:
        assert isinstance(self.topology, Topology) and self.topology.private is not None
        directory = self.topology.log.directory
        ours = [p for p in (self.topology.private.pid,) if p]
        found = await asyncio.to_thread(find_openers, directory, ours)
        if found.pids:
            who = ", ".join(f"{pid} ({found.names.get(pid, '?')})" for pid in found.pids)
            raise FatalError(f"process {who} opened Chroma directory {directory}, which syncd serves with "
                             "its own Chroma server: two processes on one directory corrupt it. Stopped. "
                             f"Serve it with `chroma run --path {directory}` and set source.chroma.url")

    async def close(self) -> None:
        """Stop what still runs and close the sources; the streams' last status stays readable."""
        for ev in self._stops.values():
            ev.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks.values(), timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for source in self.sources.values():
            await source.close()
        await self.topology.close()


async def open_chroma_streams(config: Config, dsn: str, liveness: Liveness | None = None,
                              ownership: Ownership | None = None) -> ChromaStreams:
    """The Chroma streams of ``config`` (not started: call run())."""
    topology = await RemoteTopology.open(config) if server_only(config) else await Topology.open(config)
    group = ChromaStreams(config, dsn, topology, liveness, ownership)
    try:
        await group.start()
    except BaseException:
        await topology.close()
        raise
    return group
