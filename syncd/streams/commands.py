"""What each subcommand does; the CLI parses and prints, this module acts."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog

from syncd.config import Config, exposed
from syncd.cutover import fence
from syncd.errors import ConfigError, FatalError, SourceUnavailable, SyncdError
from syncd.model import START, Phase
from syncd.pg import capture as pg_capture
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect
from syncd.service import checks
from syncd.status import NOT_INITIALISED, NOT_STARTED, UNINSTALLED, StreamReport
from syncd.stores.postgres.sink import PostgresSink
from syncd.stores.sqlite.capture import CHANGELOG
from syncd.stores.sqlite.schema import uri
from syncd.stores.sqlite.source import SqliteSource
from syncd.streams import supervisor

log = structlog.get_logger("syncd.streams.commands")

_WRITERS = ("init", "run", "uninstall", "cutover", "rollback")
"""Commands that write into the app's stores."""


def preflight(cfg: Config, command: str) -> None:
    """What can be checked before a command touches a store: paths, permissions, exposure."""
    if cfg.target.embedded:
        checks.state_dir(cfg.state_dir, "the embedded PostgreSQL keeps its data there")
    elif cfg.chroma is not None and cfg.chroma.path is not None and command in _WRITERS:
        checks.state_dir(cfg.state_dir, "syncd records Chroma's log retention there")
    if cfg.sqlite is not None:
        checks.sqlite_path(cfg.sqlite.path)
    if cfg.sqlite is not None and command in _WRITERS:
        checks.sqlite_writable(cfg.sqlite.path)
    listen = cfg.health.listen
    if command in ("init", "run") and listen and exposed(listen):
        port = listen.rpartition(":")[2]
        log.warning(f"health.listen = {listen} serves /status and /metrics to the network, without "
                    f"authentication; listen on 127.0.0.1:{port} (or a management address), or "
                    "firewall the port")


def chroma_answers(cfg: Config, timeout: float = 5.0) -> None:
    """The Chroma server of ``source.chroma.url`` answers its heartbeat (when a url is set)."""
    if cfg.chroma is None or cfg.chroma.url is None:
        return
    url = cfg.chroma.url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        why = f"it answered HTTP {exc.code} to /api/v2/heartbeat: is it a Chroma 1.x server?"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        why = f"{getattr(reason, 'strerror', None) or reason}"
    raise SourceUnavailable(f"Chroma at {url} (source.chroma.url) does not answer: {why}; start the "
                            "app's Chroma server, or fix source.chroma.url")


async def init(cfg: Config) -> int:
    """Validate config, create the target schema, install capture. Idempotent."""
    await asyncio.to_thread(chroma_answers, cfg)
    dsn = await supervisor.target_dsn(cfg)
    from syncd.files.commands import auto_backup

    await auto_backup(cfg, "init")
    if cfg.chroma is not None:
        from syncd.streams.chroma_admin import init_chroma
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
        await asyncio.to_thread(checks.something_to_sync, cfg.sqlite, list(source.tables))
        await asyncio.to_thread(checks.sqlite_write_lock, cfg.sqlite.path, cfg.cutover.lock_timeout,
                                "run `syncd init` again")
        conn = await connect(cfg.target, dsn)
        try:
            await checks.target_config(conn, cfg.target, list(source.tables.values()), cfg.sqlite.path)
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
    import sys

    from syncd.streams import daemon

    await asyncio.to_thread(chroma_answers, cfg)
    started = time.monotonic()
    code = await daemon.run(cfg, until_caught_up=until_caught_up, timeout=timeout)
    if until_caught_up and sys.stderr.isatty():  # a person is watching: say what happened
        print(await run_summary(cfg, code, time.monotonic() - started), file=sys.stderr)
    return code


async def run_summary(cfg: Config, code: int, seconds: float) -> str:
    """One paragraph after `run --until-caught-up` in a terminal: what was copied, how long,
    rejects, and what to do next."""
    if code != 0:
        return (f"syncd: stopped after {seconds:.1f} s without catching up (exit {code}); the lines "
                "above say why, and `syncd status` shows where each stream stands.")
    try:
        streams = await stored_status(cfg)
    except SyncdError:
        streams = []
    parts = []
    for s in streams:
        copied = f"{s['snapshot_copied']:,} rows copied, " if s.get("snapshot_copied") else ""
        rejects = f"{s['rejects']:,} rejects (`syncd rejects`)" if s.get("rejects") else "no rejects"
        parts.append(f"{s['name']}: {copied}{s.get('pending') or 0:,} pending, {rejects}")
    return (f"syncd: caught up in {seconds:.1f} s — " + ("; ".join(parts) or "nothing to copy") + ". "
            "Next: `syncd verify` compares both sides row by row; `syncd run` (or the service) keeps "
            "streaming; `syncd cutover` switches the app when you are ready.")


def capture_state(path: Any) -> str:
    """``installed``, or ``absent`` when the SQLite file has no changelog (never initialised, or
    uninstalled)."""
    import sqlite3

    from syncd.errors import SourceError

    if not Path(path).is_file():
        raise SourceError(f"SQLite database {path} does not exist (source.sqlite.path)")
    try:
        db = sqlite3.connect(uri(path, "ro"), uri=True)
        try:
            found = db.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?",
                               (CHANGELOG,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SourceError(f"SQLite database {path}: {exc} (source.sqlite.path)") from exc
    return "installed" if found else "absent"


async def stored_status(cfg: Config) -> list[StreamReport]:
    """Per-stream status from the stores themselves (works with the daemon stopped)."""
    dsn = await supervisor.target_dsn(cfg)
    out: list[StreamReport] = []
    chroma: list[StreamReport] = []
    if cfg.chroma is not None:
        from syncd.streams.chroma_admin import chroma_stored_status

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
    if await asyncio.to_thread(capture_state, cfg.sqlite.path) == "absent":
        state = UNINSTALLED if checkpoint is not None else NOT_INITIALISED
        return [{"name": supervisor.SQLITE_STREAM, "phase": state, "source_position": None,
                 "checkpoint": checkpoint.position.offset if checkpoint else None, "pending": None,
                 "lag_seconds": None, "rejects": rejects, "snapshot_copied": None,
                 "daemon": "not running"}, *chroma]
    source = await SqliteSource.open(cfg.sqlite, check_capture=False)
    try:
        position = checkpoint.position if checkpoint else None
        pending = await source.pending(position or START)
    finally:
        await source.close()
    snap = checkpoint.snapshot if checkpoint else None
    if checkpoint is None:
        phase = NOT_STARTED
    elif snap is not None and not snap.complete:
        phase = Phase.SNAPSHOT.value
    elif pending.count:
        phase = Phase.CATCH_UP.value
    else:
        phase = Phase.STREAMING.value
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


async def switch_state(cfg: Config) -> dict[str, Any]:
    """Which stores the app uses, and a cutover / rollback stopped part-way, if any."""
    from syncd.cutover import state as cutover_state

    conn = await connect(cfg.target, await supervisor.target_dsn(cfg))
    try:
        state = await cutover_state.load(conn)
    finally:
        await close_quietly(conn)
    return {"direction": state.direction, "operation": state.operation, "step": state.step}


async def refused_constraints(cfg: Config) -> list[dict[str, Any]]:
    """The indexes and keys PostgreSQL refused (``syncd.refused_constraints``), JSON-ready."""
    from syncd.stores.postgres import constraints

    conn = await connect(cfg.target, await supervisor.target_dsn(cfg))
    try:
        rows = await constraints.recorded(conn)
    finally:
        await close_quietly(conn)
    return [{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.items()} for r in rows]


async def status(cfg: Config, *, as_json: bool) -> int:
    from syncd.service.identity import ask_daemon

    switch = await switch_state(cfg)
    refused = await refused_constraints(cfg)
    answer = await asyncio.to_thread(ask_daemon, cfg)
    streams = answer.streams
    asked = streams is not None
    if streams is None and switch["direction"] == "reverse" and cfg.sqlite is not None:
        from syncd.streams.postgres_to_sqlite import stored_status as reverse_status

        streams = await reverse_status(cfg, await supervisor.target_dsn(cfg))
    elif streams is None:
        streams = await stored_status(cfg)
    chroma_down = None
    if not asked and cfg.chroma is not None and cfg.chroma.url is not None:
        try:
            await asyncio.to_thread(chroma_answers, cfg, 2.0)
        except SourceUnavailable as exc:
            chroma_down = str(exc)
    if as_json:
        daemon = answer.foreign or daemon_note(cfg, asked)
        print(json.dumps({"switch": switch, "streams": streams, "daemon": daemon,
                          "chroma_error": chroma_down, "refused": refused}, indent=2))
        return 0
    from syncd.files.commands import status_line
    from syncd.streams.status_report import render

    lines = render(cfg, switch, streams, daemon=answer.foreign or daemon_note(cfg, asked),
                   chroma_error=chroma_down, refused=refused)
    if cfg.target.embedded:
        dsn = await supervisor.target_dsn(cfg)
        lines.append(f"target: the embedded PostgreSQL, {dsn} (`syncd embedded dsn` prints the psql "
                     "command; `syncd embedded start` keeps it up without the daemon)")
    print("\n".join([*lines, status_line(cfg)]))
    return 0


def daemon_note(cfg: Config, asked: bool) -> str:
    """Whether the figures come from the daemon, and if not, why."""
    listen = cfg.health.listen
    if asked:
        return f"running (answering on {listen})"
    if not listen or listen.endswith(":0"):
        return (f"cannot be asked: health.listen = {listen!r} gives it no fixed address; "
                "the figures below are read from the stores")
    return f"not answering on {listen} (not running?); the figures below are read from the stores"


async def uninstall(cfg: Config) -> int:
    if cfg.sqlite is not None:
        await asyncio.to_thread(checks.sqlite_write_lock, cfg.sqlite.path, cfg.cutover.lock_timeout,
                                "run `syncd uninstall` again")
    if cfg.chroma is not None:
        from syncd.streams.chroma_admin import uninstall_chroma
        from syncd.streams.pgvector_to_chroma import uninstall_reverse

        for line in await uninstall_chroma(cfg):
            print(line)
        tables = await uninstall_reverse(cfg, await supervisor.target_dsn(cfg))
        print(f"reverse capture and fences removed from {', '.join(tables) or 'no collection table'}")
    if cfg.sqlite is None:
        return 0
    source = await SqliteSource.open(cfg.sqlite, check_capture=False)
    try:
        names = [cfg.target.table_for(t) for t in source.tables]
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


async def rejects(cfg: Config, *, as_json: bool, limit: int, accepted: bool = False) -> int:
    """List open (or accepted) rejects, and say how one is cleared."""
    from syncd.streams import rejects as rejects_mod

    if limit < 1:
        raise ConfigError("--limit: must be at least 1")
    conn = await connect(cfg.target, await supervisor.target_dsn(cfg))
    try:
        rows = await rejects_mod.listing(conn, limit=limit, accepted=accepted)
    finally:
        await close_quietly(conn)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print("\n".join(rejects_mod.render(rows, limit=limit, accepted=accepted)))
    return 0


async def accept_rejects(cfg: Config, ids: list[int], *, reason: str) -> int:
    """`syncd rejects --accept ID…`: record that PostgreSQL may lack these rows."""
    from syncd.streams import rejects as rejects_mod

    conn = await connect(cfg.target, await supervisor.target_dsn(cfg))
    try:
        done = await rejects_mod.accept(conn, ids, reason=reason, by=checks.who())
    finally:
        await close_quietly(conn)
    print(f"accepted {len(done)} reject{'s' if len(done) != 1 else ''} "
          f"(#{', #'.join(str(i) for i in done)}): kept in syncd.rejects, marked accepted; verify no "
          "longer counts them. `syncd rejects --accepted` lists them.")
    return 0


__all__ = ["asyncio", "init", "rejects", "run", "status", "stored_status", "uninstall"]
