"""Run a command while sampling the peak resident memory of its whole process tree."""

from __future__ import annotations

import resource
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of *proc* and all its descendants (0 once it is gone)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class RssSampler:
    """Samples :func:`tree_rss` of one pid on a background thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            rss = tree_rss(self.proc)
            if rss:
                self.peak = max(self.peak, rss)
                self.samples.append((time.monotonic() - start, rss))
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class Measured:
    argv: list[str]
    returncode: int
    seconds: float
    peak_rss: int
    log: Path
    cpu_seconds: float = 0.0
    """User + system CPU of the process and the children it waited for."""

    def check(self) -> Measured:
        if self.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            cmd = " ".join(self.argv)
            raise RuntimeError(f"{cmd} exited {self.returncode}; log {self.log}:\n{tail}")
        return self


def run_measured(argv: Sequence[str], log: Path, *, timeout: float,
                 env: dict[str, str] | None = None) -> Measured:
    """Run *argv* to completion (stdout+stderr to *log*), timing it, sampling its RSS and
    reading its CPU time (what this process's waited-for children used meanwhile)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        with RssSampler(proc.pid) as sampler:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -9
        seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Measured(list(argv), code, seconds, sampler.peak, log, cpu)


def warm_file(path: Path) -> None:
    """Read *path* once so every timed reader starts from the same (warm) page cache."""
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass
