"""One fuzz case from its seed: schema, rows, ``syncd init``, phases of app writes while
syncd catches up (``run --until-caught-up``) or streams in the background and is SIGKILLed,
a final catch-up, then the oracle and ``syncd verify``."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.fuzz.check import Divergence, TableResult, compare_table
from tests.fuzz.classify import Context, classify
from tests.fuzz.daemon import Syncd, error_line, write_config
from tests.fuzz.model import Schema, Step
from tests.fuzz.ops import OpGen, apply
from tests.fuzz.schemas import SchemaGen
from tests.fuzz.stores import (
    SESSION,
    Reject,
    SourceTable,
    TargetTable,
    read_rejects,
    read_source,
    read_target,
)
from tests.fuzz.values import ValueGen
from tests.fuzz.verifycheck import cross_check, parse_verify


@dataclass(frozen=True)
class Options:
    kills: bool = True          # background daemons, SIGKILLed at random moments
    verify: bool = True         # run ``syncd verify`` and hold it to the oracle
    keep: bool = False          # keep the work dir and the database
    replay: tuple[Step, ...] | None = None  # replay these steps (shrinking), kills become syncs
    prefix: str = ""            # table-name prefix (a case of a batch, and its replays)
    journal: str | None = None  # the batch's journal mode and [stream] settings instead of the
    settings: dict[str, int] | None = None  # case's own draws (which are drawn all the same)


@dataclass
class CaseResult:
    seed: int
    schema: Schema
    journal: str
    settings: dict[str, int]
    steps: list[Step] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    notices: list[Divergence] = field(default_factory=list)
    consequences: int = 0  # row divergences left out because syncd itself failed (not silent)
    seconds: float = 0.0
    workdir: str = ""
    prefix: str = ""
    batch: tuple[int, ...] = ()  # the seeds of the batch this case ran in (batch mode)
    harness_error: str = ""  # a fault of the harness in this case of a batch (its traceback)

    @property
    def tags(self) -> set[str]:
        return {d.tag for d in self.divergences}


class Runner:
    """Runs the steps of one case against the file and the daemon."""

    def __init__(self, seed: int, admin_dsn: str, root: Path, opts: Options) -> None:
        self.seed, self.admin_dsn, self.opts = seed, admin_dsn, opts
        self.rng = random.Random(seed)
        self.timing = random.Random(seed ^ 0x5EED)
        self.work = root / f"case-{seed}-{uuid.uuid4().hex[:6]}"
        self.db_name = f"fz_{seed % 10**9}_{uuid.uuid4().hex[:8]}"
        self.ctx = Context()
        self.errors: list[Divergence] = []
        self.initialised = False
        self.final_ok = False
        schema = SchemaGen(self.rng).schema().prefixed(opts.prefix)
        self.gen = OpGen(self.rng, schema, ValueGen(self.rng, self.rng.choice((0.02, 0.08, 0.2))))
        self.result = CaseResult(seed, schema, self.rng.choice(("wal", "delete")),
                                 {"chunk_rows": self.rng.choice((2, 5, 50)),
                                  "batch_size": self.rng.choice((1, 3, 50))}, prefix=opts.prefix)
        self.result.journal = opts.journal or self.result.journal
        self.result.settings = opts.settings or self.result.settings

    # --- events ------------------------------------------------------------------------------

    def event(self, name: str) -> None:
        self.result.steps.append(Step(name))
        if name == "start":
            self.syncd.start()
        elif name == "kill":
            self.ctx.killed = True
            early = self.syncd.kill()
            if early not in (None, 0):
                self.errors.append(Divergence("syncd-error", "-", "-",
                                              detail=f"run exited {early}: " + self._log_error()))
        elif name == "sync":
            if self.syncd.running:
                self.event("kill")
            code, out = self.syncd.run("run", "--until-caught-up", timeout=120)
            self.final_ok = code == 0
            if code != 0:
                detail = f"run --until-caught-up exited {code}: " + error_line(out)
                self.errors.append(Divergence("syncd-error", "-", "-", detail=detail))

    def _log_error(self) -> str:
        text = self.syncd.log.read_text(errors="replace")
        return error_line(text.rsplit("--- syncd run (background)", 1)[-1])

    def step(self, step: Step) -> None:
        if step.is_event:
            if self.opts.replay is not None:  # replay without timing: a kill becomes a catch-up
                if step.label in ("kill", "sync"):
                    self.event("sync")
                return
            self.event(step.label)
            return
        if apply(self.conn, step, self.result.schema.foreign_keys_on):
            self.gen.applied(step)
            self.result.steps.append(step)
            self._track(step)

    def _track(self, step: Step) -> None:
        kind, _, table = step.label.partition(" ")
        if kind == "vacuum" and self.initialised:
            self.ctx.vacuumed_after_init = True
        if kind in ("alter", "rebuild"):
            self.ctx.touched.setdefault(table.split(" ")[0], set()).add("ddl")
        elif table:
            self.ctx.touched.setdefault(table, set()).add(kind)
        for sql, _ in step.statements:
            if sql.startswith("INSERT OR REPLACE INTO "):
                name = sql.split('"')[1]
                self.ctx.touched.setdefault(name, set()).add("replace")

    # --- the case ----------------------------------------------------------------------------

    def setup(self, sqlite: Path | None = None) -> None:
        """The app's connection to *sqlite* (a batch's shared file), or to a new file of its own."""
        if sqlite is None:
            self.work.mkdir(parents=True)
        self.sqlite = sqlite or self.work / "app.sqlite"
        self.conn = sqlite3.connect(self.sqlite, isolation_level=None, timeout=30,
                                    check_same_thread=False)
        self.conn.execute(f"PRAGMA journal_mode = {self.result.journal}")
        for ddl in self.result.schema.ddl():
            self.conn.execute(ddl)
        self.conn.execute(f"PRAGMA foreign_keys = {'ON' if self.result.schema.foreign_keys_on else 'OFF'}")

    def plan(self) -> None:
        """Draw and apply the steps (or replay given ones)."""
        for _ in self.steps():
            pass

    def barrier(self, name: str) -> Iterator[str]:
        """``init`` or ``sync``: run it here; a case of a batch yields it to the batch instead."""
        if name == "init":
            self._init()
        else:
            self.step(Step("sync"))
        yield from ()

    def steps(self) -> Iterator[str]:
        """Draw and apply the steps one by one, yielding after each ("" or a barrier's name)."""
        if self.opts.replay is not None:
            for step in self.opts.replay:
                if step.label == "init":
                    self._init()
                else:
                    self.step(step)
            if not self.initialised:
                self._init()
            return
        for table in self.result.schema.tables:
            for _ in range(self.rng.randint(2, 12)):
                self.step(Step(f"insert {table.name}", (self.gen.one(self.conn, table, "insert"),)))
                yield ""
        yield from self.barrier("init")
        for _ in range(self.rng.randint(1, 3)):
            live = self.opts.kills and self.rng.random() < 0.5
            if live and not self.syncd.running:
                self.step(Step("start"))
            for _ in range(self.rng.randint(3, 12)):
                self.step(self.gen.step(self.conn))
                if live:
                    time.sleep(self.timing.uniform(0, 0.05))
                    if self.rng.random() < 0.15:
                        time.sleep(self.timing.uniform(0, 0.4))
                        self.step(Step("kill"))
                        self.step(Step("start"))
                yield ""
            if not live:
                yield from self.barrier("sync")

    def _init(self) -> None:
        self.result.steps.append(Step("init"))
        code, out = self.syncd.run("init")
        self.initialised = True
        if code != 0:
            detail = f"init exited {code}: {error_line(out)}"
            self.errors.append(Divergence("syncd-error", "-", "-", detail=detail))

    async def run(self) -> CaseResult:
        started = time.monotonic()
        self.setup()
        dsn = await self._create_db()
        self.syncd = Syncd(write_config(self.work / "syncd.toml", self.sqlite, dsn, self.work / "state",
                                        **self.result.settings), self.work / "syncd.log")
        try:
            await asyncio.to_thread(self.plan)
            if self.initialised:
                await asyncio.to_thread(self.event, "sync")
            await self.check(dsn)
        finally:
            if self.syncd.running:
                self.syncd.kill()
            self.conn.close()
            if not self.opts.keep:
                await self._drop_db()
                shutil.rmtree(self.work, ignore_errors=True)
        self.result.seconds = time.monotonic() - started
        self.result.workdir = str(self.work) if self.opts.keep else ""
        return self.result

    async def check(self, dsn: str) -> None:
        source = read_source(self.sqlite)
        targets, rejects = await read_targets(dsn, [st.name for st in source])
        out = None
        if self.opts.verify and self.initialised:
            _, out = await asyncio.to_thread(self.syncd.verify)
        self.judge(source, targets, rejects, out)

    def judge(self, source: list[SourceTable], targets: dict[str, TargetTable | None],
              rejects: list[Reject], verify_out: str | None) -> None:
        """Hold this case's tables (*source*) to the oracle, and ``syncd verify``'s answer
        (*verify_out*, None when not run) to the oracle's."""
        for t in self.gen.schema.tables:
            self.ctx.pk_style[t.name] = t.pk_style
            if not t.pk:
                self.ctx.rowid_tables.add(t.name)
        results: dict[str, TableResult] = {
            st.name: compare_table(st, targets[st.name], rejects) for st in source}
        rows = classify([d for r in results.values() for d in r.divergences], self.ctx)
        if not self.final_ok:  # syncd said it failed: the rows behind are its consequence
            self.result.consequences = sum(not d.notice for d in rows)
            rows = [d for d in rows if d.notice]
        unique = {d.detail: d for d in self.errors}
        divs = rows + classify(list(unique.values()), self.ctx)
        if verify_out is not None:
            pks = {st.name: st.pk for st in source}
            divs += classify(cross_check(parse_verify(verify_out), verify_out, results, pks), self.ctx)
        self.result.divergences = [d for d in divs if not d.notice]
        self.result.notices = [d for d in divs if d.notice]

    async def _create_db(self) -> str:
        return await create_database(self.admin_dsn, self.db_name)

    async def _drop_db(self) -> None:
        await drop_database(self.admin_dsn, self.db_name)


async def create_database(admin_dsn: str, name: str) -> str:
    """A fresh database *name* on the server of *admin_dsn*; its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def read_targets(dsn: str, tables: list[str]) -> tuple[dict[str, TargetTable | None], list[Reject]]:
    """Each table as PostgreSQL holds it, and the open rejects."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SESSION)
        return {t: await read_target(conn, t) for t in tables}, await read_rejects(conn)
    finally:
        await conn.close()


def with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def run_case(seed: int, admin_dsn: str, root: Path, opts: Options | None = None) -> CaseResult:
    return await Runner(seed, admin_dsn, root, opts or Options()).run()
