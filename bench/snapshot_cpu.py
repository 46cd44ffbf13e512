"""Where a snapshot's time goes: CPU of syncd and of each PostgreSQL process against wall time.

    python -m bench.snapshot_cpu [--trials 2] [--against /path/to/other/syncd] [--ceiling]

Each trial: a fresh copy of the generated app database (``gen_app_db``, 200,000 users +
500,000 documents), an empty target database, ``init``, then ``run --until-caught-up`` while
every process's CPU time is sampled (psutil, every 0.2 s; a PostgreSQL backend's last sample
before it exits counts). Printed per run: wall time, syncd's CPU seconds, PostgreSQL's by role
(the backend copying, parallel index workers, I/O workers, WAL writer …), and the share of the
machine's cores nobody used. On a machine of N cores, a run whose programs could overlap
perfectly takes max(syncd's busiest thread, PostgreSQL's backend, all CPU / N); the idle share
says how far from that it is. ``--ceiling`` measures the binary ``COPY FROM`` file ceiling the
same way (its files are written once by ``copy_ceiling.prepare``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import copy_ceiling, gen_app_db, pg, syncd_run
from bench.procs import run_measured, warm_file

OUT = Path(__file__).resolve().parent / "out" / "snapshot_cpu"


def _role(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "?"
    if not cmd.startswith("postgres"):
        return "other"
    words = cmd.split()
    return " ".join(words[1:3]) if len(words) > 2 and "worker" in words[2] else (
        "backend" if len(words) > 3 else " ".join(words[1:]))


def sample_run(argv: list[str], log: Path) -> dict[str, Any]:
    """Run *argv*; CPU seconds of it (with its children) and of each PostgreSQL role over the run."""
    before = {p.pid: sum(p.cpu_times()[:2]) for p in psutil.process_iter() if _alive(p)}
    busy0, t0 = psutil.cpu_times(), time.monotonic()
    seen: dict[int, tuple[str, float]] = {}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        me = psutil.Process(proc.pid)
        mine: dict[int, float] = {}
        while proc.poll() is None:
            for p in psutil.process_iter():
                try:
                    cpu = sum(p.cpu_times()[:2])
                    if p.pid == me.pid or p.ppid() == me.pid:
                        mine[p.pid] = cpu
                    elif p.name().startswith("postgres"):
                        seen[p.pid] = (_role(p), cpu - before.get(p.pid, 0.0))
                except psutil.Error:
                    pass
            time.sleep(0.2)
    wall = time.monotonic() - t0
    busy1 = psutil.cpu_times()
    roles: dict[str, float] = collections.defaultdict(float)
    for role, cpu in seen.values():
        roles[role] += cpu
    idle = (busy1.idle - busy0.idle) + (busy1.iowait - busy0.iowait)
    return {"rc": proc.returncode, "wall": round(wall, 2), "syncd_cpu": round(sum(mine.values()), 2),
            "postgres_cpu": round(sum(roles.values()), 2),
            "postgres_roles": {k: round(v, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])
                               if v >= 0.05},
            "idle_share": round(idle / (wall * (os.cpu_count() or 1)), 3),
            "load_before": round(os.getloadavg()[0], 2)}


def _alive(p: psutil.Process) -> bool:
    try:
        p.cpu_times()
        return True
    except psutil.Error:
        return False


def syncd_trial(server: pg.Server, source: Path, syncd: Path) -> dict[str, Any]:
    setup = dataclasses.replace(syncd_run.prepare(server, source, OUT / "work", "snapshot_cpu"), syncd=syncd)
    run_measured(setup.argv("init"), setup.work / "init.log", timeout=300).check()
    warm_file(setup.sqlite)
    pg.checkpoint(server)
    return sample_run(setup.argv("--log-level", "info", "run", "--until-caught-up"), setup.work / "run.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--against", type=Path, help="another build's syncd: runs alternate with it")
    ap.add_argument("--ceiling", action="store_true", help="also the binary COPY FROM file ceiling")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    source = gen_app_db.cached(OUT, args.users, args.documents)
    server = pg.start(OUT / "pgdata")
    files = OUT / "copy_files"
    if args.ceiling and not (files / "users.bin").exists():
        files.mkdir(exist_ok=True)
        copy_ceiling.prepare(server, source, files)
    runs: dict[str, Path | None] = {"this tree": syncd_run.SYNCD}
    if args.against:
        runs["other"] = args.against
    if args.ceiling:
        runs["ceiling"] = None
    for i in range(args.trials):
        for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            build = runs[name]
            if build is None:
                ceiling = [sys.executable, "-c", "import sys; from pathlib import Path; from bench import "
                           "copy_ceiling, pg; copy_ceiling.ceiling(pg.start(Path(sys.argv[1]), fresh=False), "
                           "Path(sys.argv[2]))", str(OUT / "pgdata"), str(files)]
                r = sample_run(ceiling, OUT / "ceiling.log")
            else:
                r = syncd_trial(server, source, build)
            print(json.dumps({"trial": i + 1, "run": name, **r}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
