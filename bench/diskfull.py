"""Disk-full campaign: fill the filesystem under each store while ``syncd run`` streams.

    python -m bench.diskfull [--only pg,state,sqlite] [--full-seconds 20] [--rate 200]
                             [--seed S] [--work DIR]

Each scenario mounts a small tmpfs of its own (``mount -t tmpfs``: run it as root), puts one
store on it, lets the app (the crash tests' randomized writer) and the daemon run, then
fills the filesystem with a file of zeros, holds it full for ``--full-seconds`` while the app
goes on writing, deletes the file, and checks that the daemon caught up:

- ``pg``: PostgreSQL's data directory. syncd's writes fail (``could not extend file``, or the
  server stops if it cannot write its WAL); the daemon must say so, stay up, apply nothing
  by halves, and catch up once space is freed (a server that stopped is started again, as an
  operator would).
- ``state``: syncd's state directory. The daemon streams on; a restart while it is full either
  runs or stops with one clear line (no traceback); once freed, it catches up.
- ``sqlite``: the app's SQLite file, while the capture triggers run. The app's transactions
  fail cleanly (SQLITE_FULL, rolled back: nothing committed, no changelog row left behind) and
  syncd (which prunes the changelog, a write) stays up.

At the end of each: acknowledged writes lost 0, doubled 0 (audit triggers in PostgreSQL),
every row equal, ``syncd verify`` equal (bench.campaign.final_checks), no traceback in the
daemon's log. One line per check; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import campaign
from bench.campaign import Check

STREAM = {"batch_size": 200, "poll_interval": 0.2, "prune_interval": 1.0}
SCENARIOS = ("pg", "state", "sqlite")
SPACE_WORDS = ("no space left", "disk full", "database or disk is full", "out of disk space")
"""What a message about a full disk says, one way or another."""


class Tmpfs:
    """A tmpfs of *mb* MiB mounted at *path*; :meth:`fill` takes every free byte."""

    def __init__(self, path: Path, mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0777", "tmpfs",
                               str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a {mb} MiB tmpfs at {path} (needs root): "
                               f"{done.stderr.strip() or done.returncode}")
        self.filler = path / "filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write zeros until the filesystem is full; return the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (1 << 20, 1 << 12):
                chunk = bytes(block)
                while True:
                    try:
                        n = os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


@dataclass
class Watch:
    """What the harness saw while the disk was full."""

    samples: int = 0
    daemon_exits: list[str] = field(default_factory=list)
    errors: set[str] = field(default_factory=set)
    degraded: int = 0
    applied_before: int = 0
    applied_during: int = 0
    pg_down: bool = False

    def space_error(self) -> str | None:
        return next((e for e in sorted(self.errors) if any(w in e.lower() for w in SPACE_WORDS)),
                    None)


class TolerantWriter(campaign.PacedWriter):
    """The paced app writer, going on after a transaction fails for want of space (SQLITE_FULL,
    an I/O error), and checking that the failed one left nothing in the changelog."""

    def __init__(self, sqlite: Path, seed: int, rate: float) -> None:
        self.failed: Counter[str] = Counter()
        """Failed transactions by error message."""
        self.half_logged = 0
        """Failed transactions after which the changelog held rows it did not hold before."""
        super().__init__(sqlite, seed, rate)  # starts the thread

    def _transaction(self) -> None:
        conn = self.writer.conn
        top = conn.execute("SELECT coalesce(max(id), 0) FROM _syncd_changelog").fetchone()[0]
        try:
            self.writer.transaction()
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc) and "I/O" not in str(exc):
                raise
            self.failed[str(exc)] += 1
            after = conn.execute("SELECT coalesce(max(id), 0) FROM _syncd_changelog").fetchone()[0]
            if after > top or conn.in_transaction:
                self.half_logged += 1
            self._stop.wait(0.02)


class Scenario:
    """One store on a full filesystem: PostgreSQL, the app and the daemon around it."""

    def __init__(self, name: str, args: argparse.Namespace, work: Path) -> None:
        self.name, self.args, self.work = name, args, work
        self.mounts: list[Tmpfs] = []
        self.checks: list[Check] = []

    def check(self, what: str, ok: bool, figure: str) -> None:
        self.checks.append(Check(f"{self.name}: {what}", ok, figure))

    def mount(self, sub: str, mb: int) -> Tmpfs:
        fs = Tmpfs(self.work / sub, mb)
        self.mounts.append(fs)
        return fs

    async def run(self) -> list[Check]:
        fs_pg = self.mount("pgfs", self.args.pg_mb) if self.name == "pg" else None
        fs_state = self.mount("statefs", self.args.state_mb) if self.name == "state" else None
        fs_app = self.mount("appfs", self.args.app_mb) if self.name == "sqlite" else None
        pg = campaign.Postgres((fs_pg.path if fs_pg else self.work) / "pg")
        try:
            setup = campaign.prepare(pg.server, self.work / "run", database=f"full_{self.name}",
                                     seed=self.args.seed, scale=self.args.scale, stream=STREAM,
                                     sqlite_dir=fs_app.path if fs_app else None,
                                     state_dir=fs_state.path / "state" if fs_state else None)
            init = campaign.run_cli(setup, "init")
            if init.returncode != 0:
                self.check("syncd init", False, f"exit {init.returncode}: {init.stderr[-300:]}")
                return self.checks
            conn = await asyncpg.connect(setup.dsn)
            try:
                await self.drive(setup, pg, conn, fs_pg or fs_state or fs_app)
            finally:
                await conn.close()
        finally:
            with_pg_stop(pg)
            for fs in self.mounts:
                fs.unmount()
        return self.checks

    async def drive(self, setup: campaign.Setup, pg: campaign.Postgres, conn: asyncpg.Connection,
                    fs: Tmpfs | None) -> None:
        assert fs is not None
        writer = TolerantWriter(setup.sqlite, self.args.seed + 1, self.args.rate)
        daemon = campaign.Daemon(setup)
        try:
            writer.pause()  # the snapshot first, then the audit on a still app
            await campaign.wait_caught_up(conn, setup, daemon, within=600)
            await conn.execute(campaign.AUDIT)
            base = (campaign.sqlite_value(setup.sqlite, "SELECT count(*) FROM events"),
                    campaign.sqlite_value(setup.sqlite, "SELECT sum(n) FROM counters"))
            writer.pause(False)
            await asyncio.sleep(3.0)
            if self.name == "sqlite":  # an empty WAL: the app's next write needs new space
                await asyncio.to_thread(truncate_wal, setup.sqlite)
            filled = await asyncio.to_thread(fs.fill)
            print(f"{self.name}: filled {fs.path} ({filled / (1 << 20):.1f} MiB of zeros)",
                  flush=True)
            watch = await self.hold_full(fs, setup, daemon, pg, writer)
            if self.name == "state":
                daemon = await self.restart_while_full(fs, setup, daemon)
            fs.free()
            print(f"{self.name}: freed", flush=True)
            if watch.pg_down or not pg_alive(pg):
                await asyncio.to_thread(pg.restart)
                print(f"{self.name}: PostgreSQL started again after freeing space", flush=True)
            conn = await reconnect(conn, setup)
            if not daemon.alive:
                daemon = campaign.Daemon(setup)
            started = time.monotonic()
            await campaign.wait_caught_up(conn, setup, daemon, within=300)
            resumed = time.monotonic() - started
            await asyncio.sleep(2.0)
            tally = writer.stop()
            await campaign.wait_caught_up(conn, setup, daemon)
            self.report_watch(watch, writer, resumed)
            for c in await campaign.final_checks(conn, setup, tally, base):
                self.check(c.name, c.ok, c.figure)
            code = await asyncio.to_thread(daemon.terminate)
            self.check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}")
        finally:
            writer.halt()
            if daemon.alive:
                daemon.kill()
        log = daemon.log.read_text(errors="replace")
        self.check("no traceback in the daemon's log", "Traceback" not in log,
                   f"{log.count('Traceback')} tracebacks, {log.count('retrying')} retry lines")

    async def hold_full(self, fs: Tmpfs, setup: campaign.Setup, daemon: campaign.Daemon,
                        pg: campaign.Postgres, writer: TolerantWriter) -> Watch:
        """Keep the disk full for --full-seconds (and, for the app's disk, until one of its
        transactions failed, at most 60 s more)."""
        watch = Watch()
        st = await asyncio.to_thread(daemon.status)
        watch.applied_before = int(st["applied"]) if st else 0
        started = time.monotonic()
        while True:
            spent = time.monotonic() - started
            if spent >= self.args.full_seconds and (
                    self.name != "sqlite" or writer.failed or spent >= self.args.full_seconds + 60):
                break
            await asyncio.sleep(0.5)
            await asyncio.to_thread(fs.fill)  # whatever was freed meanwhile (a WAL truncated)
            watch.samples += 1
            if not daemon.alive:
                watch.daemon_exits.append(f"exit {daemon.proc.returncode}")
                print(f"{self.name}: daemon exited {daemon.proc.returncode}:\n{daemon.tail(8)}",
                      flush=True)
                break
            st = await asyncio.to_thread(daemon.status)
            if st:
                if st.get("last_error"):
                    watch.errors.add(str(st["last_error"]))
                watch.degraded += bool(st.get("degraded"))
                watch.applied_during = int(st["applied"]) - watch.applied_before
            if not pg_alive(pg):
                watch.pg_down = True
        log = daemon.log.read_text(errors="replace")
        watch.errors.update(line for line in log.splitlines()[-200:]
                            if any(w in line.lower() for w in SPACE_WORDS))
        print(f"{self.name}: while full: {watch.samples} samples, degraded in {watch.degraded}, "
              f"applied {watch.applied_during}, PostgreSQL down: {watch.pg_down}, errors: "
              f"{sorted(watch.errors)[:2]}", flush=True)
        return watch

    async def restart_while_full(self, fs: Tmpfs, setup: campaign.Setup,
                                 daemon: campaign.Daemon) -> campaign.Daemon:
        """Stop the daemon (SIGTERM: it truncates its lock file, giving back its page) and
        start it again on the full state dir."""
        if daemon.alive:
            await asyncio.to_thread(daemon.terminate)
        await asyncio.to_thread(fs.fill)
        again = campaign.Daemon(setup)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not again.alive or again.phase() == "streaming":
                break
            await asyncio.sleep(0.3)
        tail = again.tail(5)
        if again.alive:
            self.check("restart on a full state dir", True, f"streams ({again.phase()})")
        else:
            lines = [line for line in tail.splitlines() if not line.startswith("---")]
            clear = "Traceback" not in tail and any("state" in line for line in lines[-1:])
            self.check("restart on a full state dir", clear,
                       f"exit {again.proc.returncode}: {' '.join(lines[-1:])[:240]}")
        return again

    def report_watch(self, watch: Watch, writer: TolerantWriter, resumed: float) -> None:
        self.check("daemon stayed up while full", not watch.daemon_exits or self.name == "state",
                   f"{watch.samples / 2:.0f} s full, exits {watch.daemon_exits or 0}")
        if self.name == "pg":
            said = watch.space_error()
            self.check("daemon said the disk is full", said is not None,
                       (said or f"nothing; errors seen: {sorted(watch.errors)[:2]}")[:240])
            self.check("daemon degraded while full", watch.degraded > 0,
                       f"{watch.degraded} of {watch.samples} samples")
        if self.name == "state":
            self.check("daemon streamed while full", watch.applied_during > 0,
                       f"{watch.applied_during} changes applied")
        if self.name == "sqlite":
            failed = sum(writer.failed.values())
            self.check("app transactions failed for want of space", failed > 0,
                       f"{failed} {dict(writer.failed.most_common(2))}")
            self.check("failed app transactions left changelog rows", writer.half_logged == 0,
                       f"{writer.half_logged}")
        self.check("caught up after space was freed", True, f"in {resumed:.1f} s")


def truncate_wal(db: Path) -> None:
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


def pg_alive(pg: campaign.Postgres) -> bool:
    try:
        return bool(pg._postmaster().is_running())
    except Exception:  # no postmaster.pid, or no such process
        return False


def with_pg_stop(pg: campaign.Postgres) -> None:
    try:
        pg.stop()
    except Exception as exc:  # a server that would not stop is reported, not fatal
        print(f"note: stopping PostgreSQL: {exc}", flush=True)


async def reconnect(conn: asyncpg.Connection, setup: campaign.Setup) -> asyncpg.Connection:
    try:
        await conn.fetchval("SELECT 1")
        return conn
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        conn.terminate()
    deadline = time.monotonic() + 60
    while True:
        try:
            return await asyncpg.connect(setup.dsn)
        except (asyncpg.PostgresError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> int:
    checks: list[Check] = []
    for name in args.only:
        print(f"--- {name}: disk full for {args.full_seconds:g} s", flush=True)
        scenario = Scenario(name, args, args.work / name)
        try:
            checks += await scenario.run()
        except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
            checks += scenario.checks
            checks.append(Check(f"{name}: scenario ran to the end", False, str(exc)[:400]))
    return campaign.report(checks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.diskfull",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--only", type=lambda s: [x for x in s.split(",") if x],
                    default=list(SCENARIOS), help="comma-separated: pg, state, sqlite")
    ap.add_argument("--full-seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=200.0, help="app row changes per second")
    ap.add_argument("--scale", type=int, default=50, help="initial rows (x2..x5 per table)")
    ap.add_argument("--pg-mb", type=int, default=160, help="size of PostgreSQL's tmpfs")
    ap.add_argument("--app-mb", type=int, default=8, help="size of the app's tmpfs")
    ap.add_argument("--state-mb", type=int, default=80,
                    help="size of the state dir's tmpfs (init's backup wants 64 MB free)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    bad = [s for s in args.only if s not in SCENARIOS]
    if bad:
        ap.error(f"--only: unknown scenario {bad[0]!r}; choose from {', '.join(SCENARIOS)}")
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="syncd-diskfull-"))
    print(f"diskfull: {', '.join(args.only)}, seed {args.seed}, work {args.work}", flush=True)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
