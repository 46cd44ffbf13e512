"""How much CPU other programs took while the benchmark ran, phase by phase.

On a shared machine a test suite running next to the benchmark changes its numbers. The
ledger reads the machine's busy CPU time (``/proc/stat``) and the CPU time of the
benchmark's own processes (this process and its descendants, the PostgreSQL server and its
backends, reaped children included) at each phase boundary; the difference is "foreign"
CPU, reported as a share of the machine's capacity over the phase.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


@dataclass
class CpuLedger:
    """Call :meth:`mark` at the start of each phase and once at the end."""

    postmaster_pid_file: Path | None = None
    marks: list[tuple[str, float, float, float]] = field(default_factory=list)

    def own_seconds(self) -> float:
        own = _tree_cpu(psutil.Process())
        if self.postmaster_pid_file and self.postmaster_pid_file.exists():
            pid = int(self.postmaster_pid_file.read_text().split()[0])
            try:
                own += _tree_cpu(psutil.Process(pid))
            except psutil.Error:
                pass
        return own

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.monotonic(), machine_busy_seconds(), self.own_seconds()))

    def report(self) -> list[dict[str, float | str]]:
        """Per phase: wall seconds, CPU seconds of the benchmark and of everything else."""
        ncpu = os.cpu_count() or 1
        out: list[dict[str, float | str]] = []
        for (phase, t0, busy0, own0), (_, t1, busy1, own1) in zip(
                self.marks, self.marks[1:], strict=False):
            wall = t1 - t0
            own, busy = own1 - own0, busy1 - busy0
            foreign = max(0.0, busy - own)
            out.append({
                "phase": phase,
                "wall_seconds": round(wall, 2),
                "bench_cpu_seconds": round(own, 2),
                "foreign_cpu_seconds": round(foreign, 2),
                "foreign_share": round(foreign / (wall * ncpu), 3) if wall > 0 else 0.0,
            })
        return out


def wait_quiet(max_wait: float, threshold: float = 0.10, window: float = 10.0) -> float:
    """Wait (up to *max_wait* seconds) for a *window* in which the machine is less than
    *threshold* busy; return the busy share of the last window."""
    deadline = time.monotonic() + max_wait
    ncpu = os.cpu_count() or 1
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(window)
        share = (machine_busy_seconds() - b0) / ((time.monotonic() - t0) * ncpu)
        if share < threshold or time.monotonic() >= deadline:
            return share
