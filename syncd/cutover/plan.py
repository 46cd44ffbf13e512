"""What a cutover and a rollback share: the objects switched, the app's reload, the
positions both sides report, the step timings, and the waiting for a drain.

The operations themselves: :mod:`syncd.cutover.cutover` and :mod:`syncd.cutover.rollback`; decisions and
the state machine: ``docs/cutover.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import structlog

from syncd import killpoints
from syncd.config import Config
from syncd.cutover import appconfig, appconfig_set
from syncd.cutover import state as cutover_state
from syncd.cutover.state import State
from syncd.errors import FatalError, SyncdError, redact
from syncd.model import Phase
from syncd.sql import STATE_SCHEMA
from syncd.stores.sqlite.capture import META
from syncd.stores.sqlite.schema import uri
from syncd.streams.postgres_to_sqlite import REVERSE_SQLITE_STREAM

log = structlog.get_logger("syncd.cutover")

REVERSE_TABLES_STREAM = REVERSE_SQLITE_STREAM
"""The reverse table stream, as cutover and rollback name it."""


class CutoverRefused(FatalError):
    """Preflight found a reason not to start; nothing was changed."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(slots=True)
class Timing:
    step: str
    seconds: float
    note: str = ""


@dataclass(slots=True)
class Outcome:
    operation: str
    ok: bool = False
    dry_run: bool = False
    steps: list[Timing] = field(default_factory=list)
    pause_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "ok": self.ok, "dry_run": self.dry_run,
                "steps": [{"step": t.step, "seconds": round(t.seconds, 4), "note": t.note}
                          for t in self.steps],
                "pause_seconds": None if self.pause_seconds is None else round(self.pause_seconds, 4),
                "problems": self.problems, "message": self.message}


# --- what is switched ---------------------------------------------------------------------


@dataclass(slots=True)
class Objects:
    """The stores' objects a switch touches."""

    sqlite_tables: list[str] = field(default_factory=list)
    """Captured SQLite tables (fenced after cutover)."""
    table_targets: list[tuple[str, str]] = field(default_factory=list)
    """(schema, table) in PostgreSQL of the table stream."""
    vector_tables: list[tuple[str, str]] = field(default_factory=list)
    """(schema, table) in PostgreSQL of the collections."""
    collections: list[str] = field(default_factory=list)

    @property
    def pg_tables(self) -> list[tuple[str, str]]:
        return self.table_targets + self.vector_tables


async def discover(cfg: Config, conn: asyncpg.Connection) -> Objects:
    objs = Objects()
    if cfg.sqlite is not None:
        db = sqlite3.connect(uri(cfg.sqlite.path, "ro"), uri=True)
        try:
            have = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
            if META in have:
                objs.sqlite_tables = [r[0] for r in db.execute(
                    f"SELECT tbl FROM {META} WHERE tbl <> '' ORDER BY tbl")]
        finally:
            db.close()
        objs.table_targets = [(cfg.target.schema, cfg.target.table_for(t)) for t in objs.sqlite_tables]
    if cfg.chroma is not None and await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.chroma_collections"):
        for r in await conn.fetch(
                f"SELECT name, schema_name, table_name FROM {STATE_SCHEMA}.chroma_collections"
                " WHERE deleted_at IS NULL ORDER BY name"):
            objs.collections.append(r["name"])
            objs.vector_tables.append((r["schema_name"], r["table_name"]))
    return objs


def by_schema(tables: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for schema, table in tables:
        out.setdefault(schema, []).append(table)
    return out


# --- the app's config and its reload ---------------------------------------------------------


def app_files(cfg: Config) -> list[tuple[Path, str]]:
    """Every app config file with its format (``cutover.format``, or from each file's name)."""
    paths = cfg.cutover.app_configs or ((cfg.cutover.app_config,) if cfg.cutover.app_config else ())
    return [(p, appconfig.detect_format(p, cfg.cutover.format)) for p in paths]


async def run_reload(cfg: Config) -> str:
    """Run ``[cutover] reload_command``; raise with its output unless it exits 0 in time."""
    argv = cfg.cutover.reload_command
    if not argv:
        return "no reload_command configured"
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        raise FatalError(f"cutover.reload_command {argv[0]!r} cannot be started: {exc.strerror}; "
                         "fix the command in [cutover]") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), cfg.cutover.reload_timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise FatalError(f"cutover.reload_command did not finish within {cfg.cutover.reload_timeout:g} s "
                         "(cutover.reload_timeout)") from None
    if proc.returncode != 0:
        tail = redact(out.decode(errors="replace").strip()[-300:])
        raise FatalError(f"cutover.reload_command exited with {proc.returncode}: {tail or '(no output)'}")
    return f"exit 0 in {argv[0]}"


# --- positions ------------------------------------------------------------------------------


def sqlite_connect(cfg: Config) -> sqlite3.Connection:
    assert cfg.sqlite is not None
    db = sqlite3.connect(cfg.sqlite.path, timeout=cfg.cutover.lock_timeout, isolation_level=None,
                         check_same_thread=False)
    return db


SQLITE_CHECKPOINTS = "_syncd_checkpoints"
_SQLITE_CHECKPOINTS_DDL = (f"CREATE TABLE IF NOT EXISTS {SQLITE_CHECKPOINTS} (stream TEXT PRIMARY KEY, "
                           "position INTEGER NOT NULL, source_id TEXT, "
                           "generation INTEGER NOT NULL DEFAULT 0, owner TEXT)")
"""As :data:`syncd.stores.sqlite.sink.SETUP` creates it; the fencing columns are the reverse stream's."""


def set_sqlite_checkpoint(db: sqlite3.Connection, stream: str, position: int, source_id: str | None) -> None:
    """Where a reverse stream starts; *source_id* is the PostgreSQL changelog's generation."""
    db.execute(_SQLITE_CHECKPOINTS_DDL)
    db.execute(f"INSERT INTO {SQLITE_CHECKPOINTS} (stream, position, source_id) VALUES (?, ?, ?) "
               "ON CONFLICT (stream) DO UPDATE SET position = excluded.position, "
               "source_id = excluded.source_id",
               (stream, position, source_id))


def sqlite_checkpoint(db: sqlite3.Connection, stream: str) -> int | None:
    try:
        row = db.execute(f"SELECT position FROM {SQLITE_CHECKPOINTS} WHERE stream = ?", (stream,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row else None


async def pg_changelog_head(conn: asyncpg.Connection) -> int:
    """The newest id in PostgreSQL's changelog (0 when empty or absent)."""
    if not await conn.fetchval("SELECT to_regclass('syncd.changelog') IS NOT NULL"):
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM syncd.changelog"))


async def wait_until(check: Callable[[], Awaitable[str | None]], timeout: float, what: str) -> None:
    """Poll *check* (None when done, else what is still pending) until done or *timeout*."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        pending = await check()
        if pending is None:
            return
        if time.monotonic() > deadline:
            raise FatalError(f"{what} did not finish within {timeout:g} s (cutover.drain_timeout): "
                             f"{pending}; is `syncd run` running?")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


class Switch:
    """One cutover or rollback: the connections, the objects, the timings."""

    def __init__(self, cfg: Config, dsn: str, conn: asyncpg.Connection, out: TextIO, operation: str) -> None:
        self.cfg, self.dsn, self.conn, self.out = cfg, dsn, conn, out
        self.outcome = Outcome(operation)
        self.objects = Objects()
        self.state = State()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> Any:
        started = time.monotonic()
        timing = Timing(name, 0.0)
        try:
            yield timing
        finally:
            timing.seconds = time.monotonic() - started
            self.outcome.steps.append(timing)
            self.say(f"  {name:<9} {timing.seconds * 1000:8.1f} ms  {timing.note}")
            log.info("step", operation=self.outcome.operation, step=name,
                     ms=round(timing.seconds * 1000, 1), note=timing.note)

    async def record(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.state, k, v)
        await cutover_state.save(self.conn, self.state)

    # --- shared checks ---

    def check_app_config(self, values: dict[str, str]) -> list[str]:
        try:
            files = app_files(self.cfg)
            if not files:
                return ["[cutover] app_config is not set: syncd cannot point the app at the other stores; "
                        "set app_config and the forward/rollback values"]
            for path, fmt, mine in appconfig_set.assign(files, values):
                appconfig.check_writable(path)
                appconfig.read_values(path, fmt, mine)
        except SyncdError as exc:
            return [str(exc)]
        return []

    async def flip(self, values: Mapping[str, str], *, backup: bool = True) -> str:
        """Flip every app config file to *values* as one step (:mod:`syncd.cutover.appconfig_set`):
        stage them all, record the intent in ``syncd.cutover``, rename them all. Returns the note."""
        leftovers = appconfig_set.forget(self.state.detail.get("app_flip"))
        staged = await asyncio.to_thread(appconfig_set.stage, app_files(self.cfg), values, backup=backup)
        await self.record(detail={**self.state.detail, "app_flip": appconfig_set.intent(staged)})
        op = self.outcome.operation
        await asyncio.to_thread(appconfig_set.commit, staged,
                                lambda n: killpoints.at(f"{op}:flip-renamed:{n}"))
        parts = [f"{s.path}" + (f" (backup {s.backup.name})" if s.backup else " (already set)")
                 for s in staged]
        return ", ".join(parts) + (f"; an interrupted flip had left {'; '.join(leftovers)}"
                                   if leftovers else "")

    async def check_streams(self, names: Callable[[str], bool],
                            stored_lags: Mapping[str, float | None] | None = None) -> list[str]:
        """The daemon runs the streams *names* selects, all streaming, none lagging over the limit.

        Lag is the larger of the daemon's figure and *stored_lags* (by stream name, computed from
        the stores: the oldest change past the checkpoint), which still grows while a batch is stuck.
        """
        from syncd.service.identity import ask_daemon

        problems: list[str] = []
        listen = self.cfg.health.listen
        answer = await asyncio.to_thread(ask_daemon, self.cfg)
        streams = answer.streams
        if answer.foreign:
            return [f"{answer.foreign}: start this config's `syncd run` on its own health.listen port"]
        if streams is None:
            where = f"health.listen {listen}" if listen else "health.listen (turned off)"
            return [f"the daemon does not answer on {where}: start `syncd run` (it drains the streams "
                    "during the switch) and make its health server reachable"]
        mine = [s for s in streams if names(str(s.get("name", "")))]
        if not mine:
            problems.append("the daemon runs none of the streams this switch drains")
        limit = self.cfg.cutover.max_lag_seconds
        lags = stored_lags or {}
        for s in mine:
            if s.get("phase") != Phase.STREAMING.value:
                problems.append(f"stream {s['name']} is in phase {s.get('phase')}, not streaming"
                                + (f": {s.get('last_error')}" if s.get("last_error") else ""))
            lag = max((x for x in (s.get("lag_seconds"), lags.get(str(s["name"])))
                       if isinstance(x, int | float)), default=0.0)
            if lag > limit:
                problems.append(f"stream {s['name']} lags {lag:.1f} s, "
                                f"over cutover.max_lag_seconds = {limit:g}")
        return problems

    async def check_reload(self, *, run: bool = True) -> list[str]:
        argv = self.cfg.cutover.reload_command
        if not run:
            import shutil

            if argv and shutil.which(argv[0]) is None:
                return [f"cutover.reload_command: {argv[0]!r} not found"]
            return []
        try:
            note = await run_reload(self.cfg)
        except SyncdError as exc:
            return [f"{exc} (preflight runs the reload command once before fencing)"]
        log.info("reload command works", note=note)
        return []

    def report(self) -> None:
        o = self.outcome
        if o.pause_seconds is not None:
            self.say(f"  write pause: {o.pause_seconds * 1000:.1f} ms")


def reload_note(cfg: Config, dry_run: bool) -> str:
    """What the preflight found of the reload command, in words that do not overstate it."""
    argv = cfg.cutover.reload_command
    if not argv:
        return "no reload command configured"
    if dry_run:
        return (f"reload command {argv[0]!r} found but not run (a real run runs it once before "
                "fencing, to check it exits 0, and again after the flip)")
    return "reload command ran and exited 0"


def chroma_dir_of(cfg: Config) -> Path | None:
    return cfg.chroma.path if cfg.chroma is not None and cfg.chroma.path is not None else None


def print_plan(sw: Switch, *, forward: bool) -> None:
    cfg = sw.cfg
    values = cfg.cutover.forward if forward else cfg.cutover.rollback
    files = ", ".join(str(p) for p, _ in app_files(cfg)) or "?"
    old = ("SQLite " + str(cfg.sqlite.path) if cfg.sqlite else "") + (" + Chroma" if cfg.chroma else "")
    if forward:
        sw.say(f"plan: fence {old} (writers wait up to their busy timeout), drain the forward streams,")
    else:
        sw.say("plan: fence PostgreSQL (writers get an error until the app reloads), "
               "drain the reverse streams,")
    sw.say(f"      set {', '.join(f'{k}={v}' for k, v in values.items())} in {files}, "
           f"run {' '.join(cfg.cutover.reload_command) or '(no reload command)'},")
    sw.say("      then stream " + ("PostgreSQL back into the old stores" if forward else
                                   "the old stores into PostgreSQL again") + ".")
    if cfg.chroma is not None and cfg.chroma.path is None:
        sw.say("      Chroma runs as a server: syncd cannot fence it; the app must stop writing to it.")
