"""Drive syncd through its CLI: a generated config, ``init``, and a timed snapshot.

    syncd --config FILE init
    syncd --config FILE run --until-caught-up     (timed, peak RSS of the process tree)

Each run works on its own copy of the generated database, because ``init`` installs
triggers and a changelog into it and the streaming benchmark then writes to it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import RssSampler, run_measured, warm_file
from bench.schema import TABLES

SYNCD = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "syncd"
TICKS = "bench_ticks"


@dataclass(frozen=True)
class Setup:
    """One syncd instance: its database copy, config, state and target."""

    sqlite: Path
    config: Path
    state_dir: Path
    database: str
    dsn: str
    health: str
    work: Path
    syncd: Path = SYNCD

    def argv(self, *args: str) -> list[str]:
        return [str(self.syncd), "--config", str(self.config), *args]


def available() -> bool:
    return SYNCD.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def copy_database(src: Path, dst: Path) -> None:
    """Copy the pristine database and add the table the streaming benchmark stamps."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst)
    try:
        conn.execute(f"CREATE TABLE {TICKS} (id INTEGER PRIMARY KEY, t REAL NOT NULL)")
        conn.commit()
    finally:
        conn.close()


def prepare(server: pg.Server, source: Path, work: Path, database: str) -> Setup:
    """Fresh work dir, database copy, empty target database and config file."""
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sqlite_path = work / "app.sqlite"
    copy_database(source, sqlite_path)
    dsn = pg.recreate_database(server, database)
    health = f"127.0.0.1:{free_port()}"
    config = work / "syncd.toml"
    config.write_text(
        "[source.sqlite]\n"
        f"path = {_toml_str(str(sqlite_path))}\n\n"
        "[target]\n"
        f"dsn = {_toml_str(dsn)}\n\n"
        "[state]\n"
        f"dir = {_toml_str(str(work / 'state'))}\n\n"
        "[health]\n"
        f"listen = {_toml_str(health)}\n"
    )
    return Setup(sqlite_path, config, work / "state", database, dsn, health, work)


def source_counts(sqlite_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def snapshot(server: pg.Server, source: Path, work: Path, database: str,
             time_limit: float = 1800.0) -> tuple[Setup, dict[str, Any]]:
    """``init`` then a timed ``run --until-caught-up``; returns the setup for streaming."""
    setup = prepare(server, source, work, database)
    init = run_measured(setup.argv("init"), setup.work / "init.log", timeout=300).check()
    warm_file(setup.sqlite)
    pg.checkpoint(server)
    run = run_measured(setup.argv("run", "--until-caught-up"), setup.work / "snapshot.log",
                       timeout=time_limit).check()
    target = pg.describe(server, database, TABLES)
    expected = source_counts(setup.sqlite)
    return setup, {
        "init_seconds": init.seconds,
        "seconds": run.seconds,
        "peak_rss": run.peak_rss,
        "source_rows": expected,
        "complete": target["rows"] == expected,
        **target,
    }


def catch_up(setup: Setup, time_limit: float = 900.0) -> dict[str, Any]:
    """A timed ``run --until-caught-up`` of an already-snapshotted stream."""
    run = run_measured(setup.argv("run", "--until-caught-up"), setup.work / "catch-up.log",
                       timeout=time_limit).check()
    return {"seconds": run.seconds, "peak_rss": run.peak_rss}


class Daemon:
    """``syncd run`` in the background, with its process tree's RSS sampled throughout."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.log = setup.work / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.returncode: int | None = None
        self.stop_seconds: float | None = None

    def __enter__(self) -> Daemon:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.setup.argv("run"), stdout=out,
                                         stderr=subprocess.STDOUT)
        self.sampler = RssSampler(self.proc.pid).__enter__()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None and self.sampler is not None
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stop_seconds = time.perf_counter() - t0
        self.returncode = self.proc.returncode
        self.sampler.__exit__()

    def summary(self) -> dict[str, Any]:
        assert self.sampler is not None
        return {
            "peak_rss": self.sampler.peak,
            "exit_code": self.returncode,
            "sigterm_to_exit_seconds": self.stop_seconds,
            "log": str(self.log),
        }
