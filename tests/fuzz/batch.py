"""Several fuzz cases through one daemon life: the batch mode of the campaign.

A batch runs N cases (N seeds) in ONE SQLite file and ONE PostgreSQL database: each case's
tables are renamed ``b<i>_<name>`` (:meth:`~tests.fuzz.model.Schema.prefixed`), each case
draws its schema, values, operations, kills and timing from its own seed exactly as alone
and writes through its own SQLite connection (its own ``PRAGMA foreign_keys``). The cases'
steps are interleaved one by one; ``syncd init`` and ``run --until-caught-up`` are barriers:
a case that reaches one waits until every unfinished case has reached one, then the batch
runs it once for all. The background ``syncd run`` is shared: a case's ``start`` starts it
if it is not running, its ``kill`` SIGKILLs it (for every case). One final catch-up, one
``syncd verify``, then every case's tables are held to the oracle on their own and each
divergence is the case's whose tables it concerns (``syncd`` errors naming no case's table
are every case's of the batch). A case of a batch replays alone with its prefix, the
batch's journal mode and ``[stream]`` settings (:class:`~tests.fuzz.case.Options`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.fuzz.case import CaseResult, Options, Runner, create_database, drop_database, read_targets
from tests.fuzz.check import Divergence
from tests.fuzz.daemon import Syncd, error_line, write_config
from tests.fuzz.model import Step
from tests.fuzz.stores import read_source


def prefix(index: int) -> str:
    return f"b{index:03d}_"


class BatchCase(Runner):
    """One case of a batch: ``init`` and ``sync`` are yielded to the batch, not run; ``start``
    and ``kill`` act on the batch's one background daemon."""

    batch: Batch

    def event(self, name: str) -> None:
        self.result.steps.append(Step(name))
        if name == "start":
            if not self.syncd.running:
                self.syncd.start()
        elif name == "kill":
            self.batch.kill()
        else:
            raise AssertionError(f"{name}: a barrier of the batch")

    def barrier(self, name: str) -> Iterator[str]:
        if name == "init":
            self.result.steps.append(Step("init"))
            self.initialised = True
        else:
            self.result.steps.append(Step("sync"))
        yield name


class Batch:
    def __init__(self, seeds: list[int], admin_dsn: str, root: Path, opts: Options) -> None:
        self.seeds, self.admin_dsn, self.opts = seeds, admin_dsn, opts
        lead = Runner(seeds[0], admin_dsn, root, opts)  # the first case's draws configure the batch
        self.journal, self.settings = lead.result.journal, lead.result.settings
        self.cases = [BatchCase(s, admin_dsn, root, Options(
            kills=opts.kills, verify=opts.verify, keep=opts.keep, prefix=prefix(i),
            journal=self.journal, settings=self.settings)) for i, s in enumerate(seeds)]
        for c in self.cases:
            c.batch = self
        self.work = root / f"batch-{seeds[0]}-{len(seeds)}-{uuid.uuid4().hex[:6]}"
        self.db_name = f"fzb_{seeds[0] % 10**9}_{uuid.uuid4().hex[:8]}"
        self.errors: list[Divergence] = []
        self.final_ok = False
        self.initialised = False

    # --- the daemon's shared life --------------------------------------------------------------

    def _sync(self) -> None:
        if self.syncd.running:
            self.kill()
        code, out = self.syncd.run("run", "--until-caught-up", timeout=120 + 10 * len(self.cases))
        self.final_ok = code == 0
        if code != 0:
            self.errors.append(Divergence("syncd-error", "-", "-", detail=(
                f"run --until-caught-up exited {code}: " + error_line(out))))

    def kill(self) -> None:
        early = self.syncd.kill()
        for c in self.cases:
            c.ctx.killed = True
        if early not in (None, 0):
            text = self.syncd.log.read_text(errors="replace").rsplit("--- syncd run (background)", 1)[-1]
            self.errors.append(Divergence("syncd-error", "-", "-",
                                          detail=f"run exited {early}: " + error_line(text)))

    def _barrier(self, name: str) -> None:
        if name == "init":
            code, out = self.syncd.run("init", timeout=120 + 10 * len(self.cases))
            self.initialised = True
            if code != 0:
                self.errors.append(Divergence("syncd-error", "-", "-",
                                              detail=f"init exited {code}: {error_line(out)}"))
        else:
            self._sync()

    def interleave(self) -> None:
        """Every case's steps, one step of each in turn; barriers run once all cases wait."""
        iters: list[Iterator[str]] = [c.steps() for c in self.cases]
        running = list(iters)
        waiting: list[tuple[Iterator[str], str]] = []
        while running or waiting:
            for it in list(running):
                try:
                    token = next(it, None)
                except Exception:  # a fault of the harness in one case: that case stops, not the batch
                    self.cases[iters.index(it)].result.harness_error = traceback.format_exc()
                    token = None
                if token is None:
                    running.remove(it)
                elif token:
                    running.remove(it)
                    waiting.append((it, token))
            if not running and waiting:
                # every case's first barrier is init; after it, only syncs
                self._barrier("init" if not self.initialised else "sync")
                running, waiting = [it for it, _ in waiting], []

    # --- the batch -----------------------------------------------------------------------------

    async def run(self) -> list[CaseResult]:
        started = time.monotonic()
        self.work.mkdir(parents=True)
        sqlite = self.work / "app.sqlite"
        dsn = await self._create_db()
        self.syncd = Syncd(write_config(self.work / "syncd.toml", sqlite, dsn, self.work / "state",
                                        **self.settings), self.work / "syncd.log")
        for c in self.cases:
            c.syncd = self.syncd
            c.setup(sqlite)
        try:
            await asyncio.to_thread(self.interleave)
            if self.initialised:
                await asyncio.to_thread(self._sync)
            await self.check(dsn)
        finally:
            if self.syncd.running:
                self.syncd.kill()
            for c in self.cases:
                c.conn.close()
            if not self.opts.keep:
                await self._drop_db()
                shutil.rmtree(self.work, ignore_errors=True)
        each = (time.monotonic() - started) / len(self.cases)
        for c in self.cases:
            c.result.seconds = each
            c.result.batch = tuple(self.seeds)
            c.result.workdir = str(self.work) if self.opts.keep else ""
        return [c.result for c in self.cases]

    async def check(self, dsn: str) -> None:
        """One read of each store and one ``syncd verify``; each case judged on its own tables."""
        source = read_source(self.work / "app.sqlite")
        targets, rejects = await read_targets(dsn, [st.name for st in source])
        out = None
        if self.opts.verify and self.initialised:
            _, out = await asyncio.to_thread(self.syncd.verify)
        errors = {d.detail: d for d in self.errors}.values()
        for c in self.cases:
            if c.result.harness_error:
                continue
            mine = c.result.prefix
            c.final_ok = self.final_ok
            c.initialised = self.initialised
            c.ctx.vacuumed_after_init = any(x.ctx.vacuumed_after_init for x in self.cases)
            named = [d for d in errors if any(x.result.prefix in d.detail for x in self.cases)]
            c.errors = [d for d in errors if mine in d.detail or d not in named]
            try:
                c.judge([st for st in source if st.name.startswith(mine)], targets, rejects, out)
            except Exception:  # a fault of the harness in one case's check: the others go on
                c.result.harness_error = traceback.format_exc()

    async def _create_db(self) -> str:
        return await create_database(self.admin_dsn, self.db_name)

    async def _drop_db(self) -> None:
        await drop_database(self.admin_dsn, self.db_name)


async def run_batch(seeds: list[int], admin_dsn: str, root: Path,
                    opts: Options | None = None) -> list[CaseResult]:
    """The cases *seeds* through one daemon life; one :class:`CaseResult` per seed."""
    return await Batch(seeds, admin_dsn, root, opts or Options()).run()
