"""`syncd rollback`: the app goes back to SQLite/Chroma, with nothing it wrote to PostgreSQL lost.

Fence PostgreSQL (statement triggers: the app's writes there fail from now on) → drain the
reverse streams to zero → drop the SQLite/Chroma fences → flip the app config back → reload →
the daemon streams forward again. PostgreSQL stays fenced until the next cutover, so a writer
that was not reloaded fails loudly. Also the way back from a cutover that crashed part-way:
the reverse streams first bring back whatever the app wrote to PostgreSQL meanwhile.
"""

from __future__ import annotations

import asyncio
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
    by_schema,
    chroma_dir_of,
    discover,
    print_plan,
    reload_note,
    run_reload,
    sqlite_checkpoint,
    sqlite_connect,
    wait_until,
)
from syncd.cutover.state import FORWARD, REVERSE
from syncd.errors import FatalError, SyncdError
from syncd.pg.connect import close_quietly, connect, translate
from syncd.stores.chroma import fence as chroma_fence
from syncd.stores.sqlite.schema import uri
from syncd.streams.pgvector_to_chroma import reverse_pending


async def _reverse_pending(sw: Switch) -> str | None:
    parts: list[str] = []
    conn = sw.conn
    if not await conn.fetchval("SELECT to_regclass('syncd.changelog') IS NOT NULL"):
        return None
    if sw.cfg.sqlite is not None:
        db = sqlite3.connect(uri(sw.cfg.sqlite.path, "ro"), uri=True)
        try:
            done = sqlite_checkpoint(db, REVERSE_TABLES_STREAM) or 0
        finally:
            db.close()
        tables = [t for _, t in sw.objects.table_targets]
        n = await conn.fetchval("SELECT count(*) FROM syncd.changelog WHERE id > $1 AND tbl = ANY($2)",
                                done, tables)
        if n:
            parts.append(f"{REVERSE_TABLES_STREAM} {n} pending")
    if sw.cfg.chroma is not None:
        parts += await reverse_pending(sw.cfg, conn)
    return "; ".join(parts) or None


async def _reverse_lags(sw: Switch) -> dict[str, float]:
    """The reverse table stream's lag from the stores: the oldest change past its checkpoint."""
    has_log = await sw.conn.fetchval("SELECT to_regclass('syncd.changelog') IS NOT NULL")
    if sw.cfg.sqlite is None or not has_log:
        return {}
    db = sqlite3.connect(uri(sw.cfg.sqlite.path, "ro"), uri=True)
    try:
        done = sqlite_checkpoint(db, REVERSE_TABLES_STREAM) or 0
    finally:
        db.close()
    oldest = await sw.conn.fetchval("SELECT min(ts) FROM syncd.changelog WHERE id > $1 AND tbl = ANY($2)",
                                    done, [t for _, t in sw.objects.table_targets])
    lag = 0.0 if oldest is None else max(0.0, time.time() - float(oldest))
    return {REVERSE_TABLES_STREAM: lag}


async def _preflight_rollback(sw: Switch, *, resume: bool, dry_run: bool) -> None:
    st = sw.state
    problems: list[str] = []
    if st.operation == "rollback" and not resume:
        problems.append(f"a rollback stopped at step {st.step!r}: run `syncd rollback --resume`")
    elif st.operation is None and st.direction == FORWARD:
        problems.append("nothing to roll back: the app already uses SQLite/Chroma (see `syncd status`)")
    problems += sw.check_app_config(dict(sw.cfg.cutover.rollback))
    if sw.cfg.sqlite is not None:
        from syncd.stores.sqlite.capture import check_installed
        from syncd.stores.sqlite.schema import discover as discover_tables

        db = sqlite3.connect(uri(sw.cfg.sqlite.path, "ro"), uri=True)
        try:
            wanted = discover_tables(db, tables=tuple(sw.objects.sqlite_tables), exclude=(),
                                     no_primary_key=sw.cfg.sqlite.no_primary_key)
            check_installed(db, wanted)
        except SyncdError as exc:
            problems.append(f"forward capture in SQLite: {exc}")
        finally:
            db.close()
    if st.direction == REVERSE and st.operation is None and not resume:
        problems += await sw.check_streams(lambda n: n == REVERSE_TABLES_STREAM or n.startswith("pgvector→"),
                                           await _reverse_lags(sw))
    if not problems:
        problems += await sw.check_reload(run=not dry_run)
    sw.outcome.problems = problems
    if problems:
        raise CutoverRefused("rollback refused: " + "; ".join(problems), problems)


async def rollback(cfg: Config, dsn: str, out: TextIO, *, dry_run: bool = False,
                  resume: bool = False) -> Outcome:
    conn = await connect(cfg.target, dsn)
    try:
        sw = Switch(cfg, dsn, conn, out, "rollback")
        sw.state = await cutover_state.load(conn)
        sw.objects = await discover(cfg, conn)
        sw.outcome.dry_run = dry_run
        title = "syncd rollback (dry run)" if dry_run else "syncd rollback"
        sw.say(title + (" --resume" if resume else ""))
        async with sw.step("preflight") as t:
            await _preflight_rollback(sw, resume=resume, dry_run=dry_run)
            t.note = "reverse streams caught up, " + reload_note(cfg, dry_run)
        if dry_run:
            print_plan(sw, forward=False)
            sw.outcome.ok = True
            return sw.outcome
        from syncd.files.commands import auto_backup

        await auto_backup(cfg, "rollback", out)
        await _do_rollback(sw)
        return sw.outcome
    except asyncpg.PostgresError as exc:
        raise translate(exc, "rollback") from None
    finally:
        await close_quietly(conn)


async def _do_rollback(sw: Switch) -> None:
    cfg, conn = sw.cfg, sw.conn
    # An interrupted cutover may have let the app write to PostgreSQL: stream those back first.
    await sw.record(direction=REVERSE, operation="rollback", step="preflight")
    killpoints.at("rollback:preflight")
    fenced_at = time.monotonic()
    async with sw.step("fence") as t:
        for schema, tables in by_schema(sw.objects.pg_tables).items():
            await fence.install_pg(conn, schema, tables)
        t.note = f"{len(sw.objects.pg_tables)} PostgreSQL tables fenced"
    await sw.record(step="fence", detail={**sw.state.detail, "pg_was_fenced": True})
    killpoints.at("rollback:fence")
    try:
        async with sw.step("drain") as t:
            await wait_until(lambda: _reverse_pending(sw), cfg.cutover.drain_timeout,
                             "draining the reverse streams")
            t.note = "reverse streams at zero pending"
    except BaseException:
        for schema, tables in by_schema(sw.objects.pg_tables).items():
            await fence.remove_pg(conn, schema, tables)
        await sw.record(operation=None, step=None)
        sw.say("  rollback undone: PostgreSQL unfenced; the app still uses it")
        raise
    await sw.record(step="drain")
    killpoints.at("rollback:drain")
    async with sw.step("unfence") as t:
        if cfg.sqlite is not None:
            db = sqlite_connect(cfg)
            try:
                def unfence() -> list[str]:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        names = fence.remove_sqlite(db)
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    return names

                names = await asyncio.to_thread(unfence)
            finally:
                db.close()
            t.note = f"{len(names)} SQLite fence triggers dropped"
        chroma_dir = chroma_dir_of(cfg)
        if chroma_dir is not None:
            await asyncio.to_thread(chroma_fence.remove_fence, chroma_dir)
    async with sw.step("flip") as t:
        t.note = await sw.flip(dict(cfg.cutover.rollback))
    await sw.record(step="flip")
    killpoints.at("rollback:flip")
    try:
        async with sw.step("reload") as t:
            t.note = await run_reload(cfg)
    except SyncdError as exc:
        raise FatalError(f"{exc}; the app config already names the old stores and PostgreSQL is fenced: "
                         "reload the app by hand, then run `syncd rollback --resume`") from None
    await sw.record(step="reload")
    killpoints.at("rollback:reload")
    async with sw.step("commit") as t:
        await sw.record(direction=FORWARD, operation=None, step=None, detail={})
        t.note = "the daemon now streams the old stores into PostgreSQL again"
    sw.outcome.pause_seconds = time.monotonic() - fenced_at
    sw.outcome.ok = True
    sw.report()
    sw.say("rolled back: the app writes to SQLite/Chroma; PostgreSQL stays fenced until the next cutover.")
