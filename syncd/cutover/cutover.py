"""`syncd cutover` and `syncd rollback`: move the app between its old and new stores.

Cutover: preflight → fence the old stores → drain the forward streams → flip the app's
config → reload the app → commit the fence → the daemon switches to the reverse streams.
Rollback is the mirror image. The daemon (`syncd run`) does the streaming; these commands
fence, wait for it, flip, reload and record where things stand in ``syncd.cutover``
(:mod:`syncd.cutover.state`), so that a crash part-way can be resumed (`--resume`) or
reverted (`syncd rollback`).

SQLite is fenced by holding its write lock (``BEGIN IMMEDIATE``): the app's writers wait in
their busy timeout instead of failing. Inside that transaction the fence triggers are created;
the lock is held through the drain, the flip and the reload, and released by the COMMIT that
makes the fence permanent — the waiting writers then hit the fence, and an app that retries
finds its new config. The write pause is the time the lock was held.

PostgreSQL is fenced (rollback) by statement triggers committed at once: its writers get an
error for the pause instead of waiting (a transaction held open across the drain would hold
back the reverse capture's read horizon — see docs/cutover.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import TextIO

import asyncpg

from syncd import killpoints
from syncd.config import Config
from syncd.cutover import fence
from syncd.cutover import state as cutover_state
from syncd.cutover.plan import (
    REVERSE_TABLES_STREAM,
    CutoverRefused,
    Outcome,
    Switch,
    app_files,
    by_schema,
    chroma_dir_of,
    discover,
    pg_changelog_head,
    print_plan,
    reload_note,
    run_reload,
    set_sqlite_checkpoint,
    sqlite_connect,
    wait_until,
)
from syncd.cutover.state import FORWARD, REVERSE
from syncd.errors import SyncdError
from syncd.model import Phase
from syncd.pg import capture as pg_capture
from syncd.pg import state as pgstate
from syncd.pg.connect import close_quietly, connect, translate
from syncd.service import checks
from syncd.sql import STATE_SCHEMA
from syncd.status import NOT_STARTED
from syncd.stores.chroma import fence as chroma_fence
from syncd.stores.chroma.topology import server_only
from syncd.stores.sqlite.capture import CHANGELOG
from syncd.streams.chroma_admin import chroma_stored_status
from syncd.streams.pgvector_to_chroma import reverse_stream_names

# --- cutover -------------------------------------------------------------------------------


async def _preflight_cutover(sw: Switch, *, resume: bool, dry_run: bool) -> None:
    cfg, conn = sw.cfg, sw.conn
    problems: list[str] = []
    st = sw.state
    if st.operation is not None and not resume:
        problems.append(f"a {st.operation} stopped at step {st.step!r}: run `syncd {st.operation} --resume` "
                        f"to finish it, or `syncd rollback` to go back")
    elif st.operation is None and st.direction == REVERSE:
        problems.append("already cut over: the app uses PostgreSQL (run `syncd rollback` to go back)")
    elif resume and st.operation not in (None, "cutover"):
        problems.append(f"the operation in progress is a {st.operation}: run `syncd {st.operation} --resume`")
    problems += sw.check_app_config(dict(cfg.cutover.forward))
    if server_only(cfg):
        problems.append("[source.chroma] has only url: the way back (pgvector → Chroma) and the Chroma "
                        "fence need Chroma's persist directory; set source.chroma.path to the directory "
                        "the server runs on (`chroma run --path …`)")
    for schema, tables in by_schema(sw.objects.pg_tables).items():
        missing = await pg_capture.missing(conn, schema, tables)
        if missing:
            problems.append(f"reverse capture is not installed on {schema}.{', '.join(missing)}: "
                            "run `syncd init` (it installs it) and retry")
    if not sw.objects.pg_tables:
        problems.append("nothing to switch: no table or collection has been synced yet")
    if not resume:
        from syncd.streams.commands import stored_status

        stored = await stored_status(cfg)
        problems += await sw.check_streams(lambda n: n == "sqlite" or n.startswith("chroma:"),
                                           {st["name"]: st.get("lag_seconds") for st in stored})
        problems += [f"stream {st['name']} has not copied its snapshot yet (phase {st['phase']} in "
                     "PostgreSQL's syncd.checkpoints): let `syncd run` finish it" for st in stored
                     if st["phase"] in (NOT_STARTED, Phase.SNAPSHOT.value)
                     and not any(st["name"] in p for p in problems)]
        if not problems and cfg.cutover.verify != "off":
            problems += await _quick_verify(sw)
    if not problems and cfg.sqlite is not None:
        try:  # the fence takes this lock: a writer that keeps it would fail the cutover half-way
            await asyncio.to_thread(checks.sqlite_write_lock, cfg.sqlite.path, cfg.cutover.lock_timeout,
                                    "run `syncd cutover` again")
        except SyncdError as exc:
            problems.append(str(exc))
    if not problems:
        problems += await sw.check_reload(run=not dry_run)
    sw.outcome.problems = problems
    if problems:
        raise CutoverRefused("cutover refused: " + "; ".join(problems), problems)


async def _quick_verify(sw: Switch) -> list[str]:
    from syncd.verify.run import verify

    mode = "full" if sw.cfg.cutover.verify == "full" else "counts"
    report = await verify(sw.cfg, sw.dsn, mode=mode)
    return [f"verify ({mode}): {c.kind} {c.name} {c.status}" + (f": {c.detail}" if c.detail else "")
            for c in report.checks if not c.ok and c.status != "skipped"]


async def _forward_pending(sw: Switch, db: sqlite3.Connection | None) -> str | None:
    """What the forward streams still have to apply (None when drained), read from the stores
    themselves — the checkpoints in PostgreSQL against the sources' heads — never from a daemon:
    a stream whose snapshot is not complete is not drained, however empty its changelog."""
    parts: list[str] = []
    if db is not None:
        head = await asyncio.to_thread(
            lambda: db.execute(f"SELECT coalesce(max(id), 0) FROM {CHANGELOG}").fetchone()[0])
        checkpoint = await pgstate.load_checkpoint(sw.conn, "sqlite") if await pgstate.has_state(sw.conn) \
            else None
        if checkpoint is None:
            parts.append("sqlite has not started its snapshot (no checkpoint in syncd.checkpoints)")
        elif checkpoint.snapshot is not None and not checkpoint.snapshot.complete:
            parts.append("sqlite has not finished its snapshot")
        elif checkpoint.position.offset < int(head):
            parts.append(f"sqlite at {checkpoint.position.offset} of {head}")
    if sw.cfg.chroma is not None:
        for s in await chroma_stored_status(sw.cfg, sw.dsn, sw.conn):
            if s["phase"] in (NOT_STARTED, Phase.SNAPSHOT.value):
                parts.append(f"{s['name']} ({s['collection']}) has not finished its snapshot")
            elif s["pending"]:
                parts.append(f"{s['name']} ({s['collection']}) {s['pending']} pending")
    return "; ".join(parts) or None


async def _reverse_start(sw: Switch) -> dict[str, int]:
    """Reverse streams start at the changelog's head before the flip: the app's first write to
    PostgreSQL comes after it."""
    head = await pg_changelog_head(sw.conn)
    positions = {REVERSE_TABLES_STREAM: head} if sw.cfg.sqlite is not None else {}
    if sw.cfg.chroma is not None:
        for name in await reverse_stream_names(sw.cfg, sw.conn):
            positions[name] = head
    return positions


async def _set_reverse_checkpoints(sw: Switch, positions: dict[str, int]) -> None:
    if sw.cfg.sqlite is not None and REVERSE_TABLES_STREAM in positions:
        db = sqlite_connect(sw.cfg)
        try:
            await asyncio.to_thread(set_sqlite_checkpoint, db, REVERSE_TABLES_STREAM,
                                    positions[REVERSE_TABLES_STREAM], await pg_capture.generation(sw.conn))
        finally:
            db.close()
    for name, pos in positions.items():
        if name != REVERSE_TABLES_STREAM:
            await sw.conn.execute(
                f"INSERT INTO {STATE_SCHEMA}.checkpoints (stream, position) VALUES ($1, $2) "
                "ON CONFLICT (stream) DO UPDATE SET position = excluded.position, updated_at = now()",
                name, pos)


async def cutover(cfg: Config, dsn: str, out: TextIO, *, dry_run: bool = False,
                  resume: bool = False) -> Outcome:
    conn = await connect(cfg.target, dsn)
    try:
        sw = Switch(cfg, dsn, conn, out, "cutover")
        sw.state = await cutover_state.load(conn)
        sw.objects = await discover(cfg, conn)
        sw.outcome.dry_run = dry_run
        sw.say(("syncd cutover (dry run)" if dry_run else "syncd cutover") + (" --resume" if resume else ""))
        async with sw.step("preflight") as t:
            await _preflight_cutover(sw, resume=resume, dry_run=dry_run)
            t.note = (f"{len(sw.objects.sqlite_tables)} tables, {len(sw.objects.collections)} collections; "
                      "streams caught up, " + reload_note(cfg, dry_run))
        if dry_run:
            print_plan(sw, forward=True)
            sw.outcome.ok = True
            return sw.outcome
        from syncd.files.commands import auto_backup

        await auto_backup(cfg, "cutover", out)
        await _do_cutover(sw, resume=resume)
        return sw.outcome
    except asyncpg.PostgresError as exc:
        raise translate(exc, "cutover") from None
    finally:
        await close_quietly(conn)


async def _do_cutover(sw: Switch, *, resume: bool) -> None:
    cfg, conn = sw.cfg, sw.conn
    positions: dict[str, int] = sw.state.detail.get("reverse_start") or {}
    if not positions:
        positions = await _reverse_start(sw)
    pg_was_fenced = sw.state.detail.get("pg_was_fenced")
    if pg_was_fenced is None:
        pg_was_fenced = any([await fence.pg_fenced(conn, schema)
                             for schema in by_schema(sw.objects.pg_tables)])
    await sw.record(operation="cutover", step="preflight",
                    detail={**sw.state.detail, "reverse_start": positions, "pg_was_fenced": pg_was_fenced})
    await _set_reverse_checkpoints(sw, positions)
    killpoints.at("cutover:preflight")
    db = sqlite_connect(cfg) if cfg.sqlite is not None else None
    locked_at: float | None = None
    chroma_fenced = flipped = pg_unfenced = False
    try:
        async with sw.step("fence") as t:
            if db is not None:
                await asyncio.to_thread(db.execute, "BEGIN IMMEDIATE")
                locked_at = time.monotonic()
                await asyncio.to_thread(fence.install_sqlite, db, sw.objects.sqlite_tables)
            chroma_dir = chroma_dir_of(cfg)
            if chroma_dir is not None:
                await asyncio.to_thread(chroma_fence.install_fence, chroma_dir)
                chroma_fenced = True
            elif cfg.chroma is not None:
                sw.say("  warning: Chroma runs as a server; syncd cannot fence it: the app must stop writing")
            t.note = f"SQLite write lock held, {len(sw.objects.sqlite_tables)} tables fenced" if db else ""
        await sw.record(step="fence")
        killpoints.at("cutover:fence")
        async with sw.step("drain") as t:
            await wait_until(lambda: _forward_pending(sw, db), cfg.cutover.drain_timeout,
                             "draining the forward streams")
            t.note = "forward streams at zero pending"
        await sw.record(step="drain")
        killpoints.at("cutover:drain")
        async with sw.step("flip") as t:
            for schema, tables in by_schema(sw.objects.pg_tables).items():
                await fence.remove_pg(conn, schema, tables)
            pg_unfenced = True
            flipped = True  # from here an undo flips every file back (files already back stay as they are)
            t.note = await sw.flip(dict(cfg.cutover.forward))
            await sw.record(step="flip")
        killpoints.at("cutover:flip")
        async with sw.step("reload") as t:
            t.note = await run_reload(cfg)
        await sw.record(step="reload")
        killpoints.at("cutover:reload")
        async with sw.step("commit") as t:
            if db is not None:
                await asyncio.to_thread(db.execute, "COMMIT")
                assert locked_at is not None
                sw.outcome.pause_seconds = time.monotonic() - locked_at
            await sw.record(direction=REVERSE, operation=None, step=None, detail={})
            t.note = "fence committed; the daemon now streams PostgreSQL back"
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            raise
        await _undo_cutover(sw, db, chroma_fenced=chroma_fenced, flipped=flipped, pg_unfenced=pg_unfenced)
        raise
    finally:
        if db is not None:
            db.close()
    sw.outcome.ok = True
    sw.report()
    sw.say("cut over: the app writes to PostgreSQL; `syncd rollback` returns it to the old stores.")


async def _undo_cutover(sw: Switch, db: sqlite3.Connection | None, *, chroma_fenced: bool, flipped: bool,
                        pg_unfenced: bool) -> None:
    """A step before the commit failed: put everything back as it was."""
    cfg = sw.cfg
    notes: list[str] = []
    if db is not None and db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await asyncio.to_thread(db.execute, "ROLLBACK")
        notes.append("SQLite fence undone")
    if chroma_fenced:
        chroma_dir = chroma_dir_of(cfg)
        assert chroma_dir is not None
        await asyncio.to_thread(chroma_fence.remove_fence, chroma_dir)
        notes.append("Chroma fence undone")
    if flipped:
        await sw.flip(dict(cfg.cutover.rollback), backup=False)
        notes.append(f"{', '.join(str(p) for p, _ in app_files(cfg))} restored")
        try:
            await run_reload(cfg)
        except SyncdError as exc:
            notes.append(f"the reload after restoring failed too ({exc}): reload the app by hand")
    if pg_unfenced and sw.state.detail.get("pg_was_fenced"):
        for schema, tables in by_schema(sw.objects.pg_tables).items():
            await fence.install_pg(sw.conn, schema, tables)
    await sw.record(direction=FORWARD, operation=None, step=None, detail={})
    sw.outcome.message = "cutover undone: " + (", ".join(notes) or "nothing had changed")
    sw.say(f"  {sw.outcome.message}")
