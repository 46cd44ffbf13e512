"""What each subcommand does; the CLI parses and prints, this module acts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from syncd.config import Config
from syncd.cutover import fence
from syncd.errors import ConfigError, FatalError
from syncd.stores.postgres import capture as pg_capture
from syncd.stores.postgres import state as pgstate
from syncd.stores.postgres.connect import close_quietly, connect
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.sqlite.source import SqliteSource
from syncd.streams import supervisor


async def init(cfg: Config) -> int:
    """Validate config, create the target schema, install capture. Idempotent."""
    dsn = await supervisor.target_dsn(cfg)
    from syncd.files.commands import auto_backup

    await auto_backup(cfg, "init")
    if cfg.chroma is not None:
        from syncd.stores.chroma.admin import init_chroma
        from syncd.streams.pgvector_to_chroma import install_reverse_capture

        for line in await init_chroma(cfg, dsn):
            print(line)
        captured = await install_reverse_capture(cfg, dsn)
        print("reverse capture (for rollback): "
              f"{'on ' + ', '.join(captured) if captured else 'no collection table yet'}")
        if cfg.sqlite is None:
            return 0
    if cfg.sqlite is None:
        raise FatalError("nothing to initialise: configure [source.sqlite]")
    source = await SqliteSource.open(cfg.sqlite, check_capture=False)
    try:
        conn = await connect(cfg.target, dsn)
        try:
            tables = await PostgresSink.prepare(conn, supervisor.SQLITE_STREAM,
                                                list(source.tables.values()), cfg.target)
            reverse = await pg_capture.install(conn, cfg.target.schema, [tt.name for tt in tables])
        finally:
            await close_quietly(conn)
        changed = await source.install_capture()
    finally:
        await source.close()
    for tt in tables:
        how = "created" if tt.created else "adopted"
        print(f"table {tt.name}: {how} {tt.qualified}, key ({', '.join(tt.source.pk)})")
    print(f"capture: triggers {'installed on ' + ', '.join(changed) if changed else 'already current'}"
          f" in {cfg.sqlite.path}")
    print(f"reverse capture (for rollback): {'installed on ' + ', '.join(reverse) if reverse else 'current'}"
          " in PostgreSQL")
    return 0


async def run(cfg: Config, *, until_caught_up: bool, timeout: float | None = None) -> int:
    from syncd.streams import daemon

    return await daemon.run(cfg, until_caught_up=until_caught_up, timeout=timeout)


async def stored_status(cfg: Config) -> list[dict[str, Any]]:
    """Per-stream status from the stores themselves (works with the daemon stopped)."""
    dsn = await supervisor.target_dsn(cfg)
    out: list[dict[str, Any]] = []
    chroma: list[dict[str, Any]] = []
    if cfg.chroma is not None:
        from syncd.stores.chroma.admin import chroma_stored_status

        chroma = await chroma_stored_status(cfg, dsn)
    if cfg.sqlite is None:
        return chroma
    conn = await connect(cfg.target, dsn)
    try:
        checkpoint = None
        rejects = 0
        if await pgstate.has_state(conn):
            checkpoint = await pgstate.load_checkpoint(conn, supervisor.SQLITE_STREAM)
            rejects = await pgstate.count_rejects(conn, supervisor.SQLITE_STREAM)
    finally:
        await close_quietly(conn)
    source = await SqliteSource.open(cfg.sqlite, check_capture=False)
    try:
        position = checkpoint.position if checkpoint else None
        from syncd.model import START

        pending = await source.pending(position or START)
    finally:
        await source.close()
    snap = checkpoint.snapshot if checkpoint else None
    if checkpoint is None:
        phase = "not-started"
    elif snap is not None and not snap.complete:
        phase = "snapshot"
    elif pending.count:
        phase = "catch-up"
    else:
        phase = "streaming"
    lag = 0.0 if not pending.count or pending.oldest_committed_at is None \
        else max(0.0, time.time() - pending.oldest_committed_at)
    out.append({
        "name": supervisor.SQLITE_STREAM,
        "phase": phase,
        "source_position": pending.head.offset,
        "checkpoint": position.offset if position else None,
        "pending": pending.count,
        "lag_seconds": round(lag, 3),
        "rejects": rejects,
        "snapshot_copied": sum(snap.copied.values()) if snap else None,
        "daemon": "not running",
    })
    return out + chroma


def daemon_status(cfg: Config, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """This config's daemon's own view (its /status), or None when it does not answer — or
    when the daemon that answers serves another config (:mod:`syncd.service.identity`)."""
    from syncd.service.identity import ask_daemon

    return ask_daemon(cfg, timeout).streams


async def switch_state(cfg: Config) -> dict[str, Any]:
    """Which stores the app uses, and a cutover / rollback stopped part-way, if any."""
    from syncd.cutover import state as cutover_state

    conn = await connect(cfg.target, await supervisor.target_dsn(cfg))
    try:
        state = await cutover_state.load(conn)
    finally:
        await close_quietly(conn)
    return {"direction": state.direction, "operation": state.operation, "step": state.step}


async def status(cfg: Config, *, as_json: bool) -> int:
    from syncd.service.identity import ask_daemon

    switch = await switch_state(cfg)
    answer = await asyncio.to_thread(ask_daemon, cfg)
    streams = answer.streams
    if streams is None and switch["direction"] == "reverse" and cfg.sqlite is not None:
        from syncd.streams.postgres_to_sqlite import stored_status as reverse_status

        streams = await reverse_status(cfg, await supervisor.target_dsn(cfg))
    elif streams is None:
        streams = await stored_status(cfg)
    if as_json:
        print(json.dumps({"switch": switch, "streams": streams,
                          **({"daemon": answer.foreign} if answer.foreign else {})}, indent=2))
        return 0
    uses = "SQLite/Chroma (forward)" if switch["direction"] == "forward" else "PostgreSQL (reverse: cut over)"
    print(f"app uses {uses}" + (f"; a {switch['operation']} stopped after step {switch['step']}: "
                               f"run `syncd {switch['operation']} --resume` or `syncd rollback`"
                               if switch["operation"] else ""))
    if answer.foreign:
        print(answer.foreign)
    for s in streams:
        print(f"{s['name']}: {s['phase']}, checkpoint {s['checkpoint']} of {s['source_position']}, "
              f"{s['pending']} pending, lag {s['lag_seconds']} s, {s['rejects']} rejects "
              f"(daemon {s.get('daemon', 'not running')})")
    from syncd.files.commands import status_line

    print(status_line(cfg))
    return 0


async def uninstall(cfg: Config) -> int:
    if cfg.chroma is not None:
        from syncd.stores.chroma.admin import uninstall_chroma
        from syncd.streams.pgvector_to_chroma import uninstall_reverse

        for line in await uninstall_chroma(cfg):
            print(line)
        tables = await uninstall_reverse(cfg, await supervisor.target_dsn(cfg))
        print(f"reverse capture and fences removed from {', '.join(tables) or 'no collection table'}")
    if cfg.sqlite is None:
        return 0
    source = await SqliteSource.open(cfg.sqlite, check_capture=False)
    try:
        names = list(source.tables)
        dropped = await source.uninstall_capture()
    finally:
        await source.close()
    print(f"capture removed from {cfg.sqlite.path}: {len(dropped)} triggers (fences included), "
          "changelog dropped")
    dsn = await supervisor.target_dsn(cfg)
    conn = await connect(cfg.target, dsn)
    try:
        await pg_capture.uninstall(conn, cfg.target.schema, names)
        await fence.remove_pg(conn, cfg.target.schema, names)
    finally:
        await close_quietly(conn)
    print("reverse capture and fences removed from PostgreSQL")
    print("syncd's state in the target (schema syncd) is kept; DROP SCHEMA syncd CASCADE to remove it")
    return 0


async def rejects(cfg: Config, *, as_json: bool, limit: int) -> int:
    dsn = await supervisor.target_dsn(cfg)
    conn = await connect(cfg.target, dsn)
    try:
        rows = await pgstate.list_rejects(conn, None, limit) if await pgstate.has_state(conn) else []
    finally:
        await close_quietly(conn)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            print(f"#{r['id']} {r['stream']} {r['object']} key={r['key']} at {r['position']}: {r['error']}")
        print(f"{len(rows)} open rejects")
    return 0


async def verify(cfg: Config, *, as_json: bool, tables: list[str] | None, collections: list[str] | None,
                 chunk_rows: int | None, counts_only: bool, sample_size: int | None = None, k: int = 10,
                 min_recall: float = 0.9, ef_search: int | None = None) -> int:
    """Compare the stores; print a summary (or JSON); exit 0 only when everything matches."""
    import sys

    from syncd.verify import run as verify_mod
    from syncd.verify.report import render

    if chunk_rows is not None and chunk_rows < 2:
        raise ConfigError("--chunk-rows: must be at least 2")
    if sample_size is not None and sample_size < 0:
        raise ConfigError("--sample-size: must be 0 (no search parity) or more")
    if k < 1:
        raise ConfigError("--k: must be at least 1")
    if not 0.0 <= min_recall <= 1.0:
        raise ConfigError("--min-recall: must be between 0 and 1")
    if ef_search is not None and not 1 <= ef_search <= 1000:
        raise ConfigError("--ef-search: must be between 1 and 1000 (pgvector's range)")
    options = verify_mod.TableOptions(chunk_rows=chunk_rows or 5000)
    coll_options = verify_mod.CollectionOptions(sample_size=sample_size, k=k, min_recall=min_recall,
                                                ef_search=ef_search)
    report = await verify_mod.verify(cfg, await supervisor.target_dsn(cfg),
                                     mode="counts" if counts_only else "full", tables=tables,
                                     collections=collections, options=options, progress_to=sys.stderr,
                                     collection_options=coll_options)
    if as_json:
        print(json.dumps(report.to_json(), indent=2, default=str, ensure_ascii=False))
    else:
        print("\n".join(render(report)))
    return 0 if report.ok else 1


__all__ = ["asyncio", "init", "rejects", "run", "status", "stored_status", "uninstall", "verify"]
