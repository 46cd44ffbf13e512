"""Clock steps: the machine's wall clock stepped forward and back by an hour while syncd streams.

    python -m bench.clockstep [--minutes 4] [--rate 200] [--step-hours 1] [--seed S] [--work DIR]

An NTP step (or an operator's ``date -s``) moves the wall clock, not the monotonic one. The
harness re-executes itself under libfaketime (the ``libfaketime`` wheel's library, through
``LD_PRELOAD``) with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` and an offset read from a file, so every
process it starts — the app's writer, ``syncd run``, the campaign's PostgreSQL — sees one wall
clock that the harness steps: +1 h, back to true time, −1 h, back again, at equal intervals.

syncd keeps its timeouts and backoff on the monotonic clock; only its lag (now − the commit
stamp of the oldest change not applied) reads the wall clock. Checks, besides the campaign's
final ones (nothing lost or doubled, rows equal, ``syncd verify``):

- the daemon never exits and ``/status`` answers after every step;
- the lag syncd reports is never negative, and within ``--settle`` seconds (10) of each step it is
  back under ``--lag-bound`` (30 s) and stays there until the next step: a change stamped before a
  forward step is an hour old by the new clock until it is applied, which takes a moment;
- no ``retrying`` or timeout line in the daemon's log after the snapshot (a step must not look
  like a stalled connection).

One line per check; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench import campaign
from bench.campaign import Check

CHILD = "SYNCD_CLOCKSTEP_CLOCK"
"""Set (to the offset file) in the re-executed harness."""


def faketime_library() -> Path:
    try:
        import libfaketime
    except ImportError:
        raise SystemExit("bench.clockstep needs the libfaketime wheel: pip install libfaketime") from None
    found = sorted(Path(libfaketime.__file__).parent.rglob("libfaketime.so.1"))
    if not found:
        raise SystemExit("the libfaketime wheel holds no libfaketime.so.1")
    return found[0]


def reexec_under_faketime(clock: Path) -> None:
    """Run this harness again with every process it starts on the offset in *clock*."""
    clock.write_text("+0\n")
    env = {**os.environ, CHILD: str(clock), "LD_PRELOAD": str(faketime_library()),
           "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "FAKETIME_CACHE_DURATION": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "bench.clockstep", *sys.argv[1:]], env)


def set_offset(clock: Path, hours: float) -> None:
    tmp = clock.with_suffix(".tmp")
    tmp.write_text(f"{hours:+g}h\n" if hours else "+0\n")
    tmp.replace(clock)


async def watch(daemon: campaign.Daemon, seconds: float) -> list[tuple[float, float | None]]:
    """(seconds since the step, the lag /status reports), every 0.5 s."""
    out: list[tuple[float, float | None]] = []
    began = time.monotonic()
    while (t := time.monotonic() - began) < seconds:
        if not daemon.alive:
            raise RuntimeError(f"syncd exited {daemon.proc.returncode}:\n{daemon.tail()}")
        st = await asyncio.to_thread(daemon.status)
        out.append((t, None if st is None else float(st.get("lag_seconds") or 0.0)))
        await asyncio.sleep(0.5)
    return out


def judge(step: str, seen: list[tuple[float, float | None]], settle: float, bound: float) -> Check:
    unanswered = sum(1 for _, lag in seen if lag is None)
    negative = [lag for _, lag in seen if lag is not None and lag < 0]
    late = [lag for t, lag in seen if t >= settle and lag is not None and lag > bound]
    first = max((lag for t, lag in seen if t < settle and lag is not None), default=0.0)
    ok = not negative and not late and unanswered <= 2
    return Check(f"step {step}: lag sane", ok,
                 f"max lag {first:.1f} s in the first {settle:.0f} s, after that max "
                 f"{max((lag for t, lag in seen if t >= settle and lag is not None), default=0.0):.2f} s "
                 f"(bound {bound:.0f} s); negative {len(negative)}; /status unanswered {unanswered} "
                 f"of {len(seen)}")


async def run(args: argparse.Namespace, clock: Path) -> int:
    work: Path = args.work
    server = campaign.Postgres(work / "pg")
    checks: list[Check] = []
    try:
        setup = campaign.prepare(server.server, work / "run", database="clockstep", seed=args.seed,
                                 scale=args.scale)
        init = campaign.run_cli(setup, "init")
        if init.returncode != 0:
            print(f"FAIL  syncd init: exit {init.returncode}: {init.stderr.strip()[-300:]}")
            return 1
        conn = await asyncpg.connect(setup.dsn)
        daemon = campaign.Daemon(setup)
        try:
            await campaign.wait_caught_up(conn, setup, daemon)
            await conn.execute(campaign.AUDIT)
            maps = await asyncio.to_thread(Path(f"/proc/{daemon.pid}/maps").read_text)
            checks.append(Check("the daemon runs on the stepped clock", "libfaketime" in maps,
                                "libfaketime mapped in syncd run's process" if "libfaketime" in maps
                                else "libfaketime is not in syncd run's process: nothing was tested"))
            log_mark = daemon.log.stat().st_size
            writer = campaign.PacedWriter(setup.sqlite, args.seed + 1, args.rate)
            interval = args.minutes * 60 / 5
            try:
                await watch(daemon, interval)
                for offset, step in ((args.step_hours, "forward"), (0.0, "back"),
                                     (-args.step_hours, "back"), (0.0, "forward")):
                    set_offset(clock, offset)
                    name = f"{step} to {offset:+g} h"
                    print(f"clock stepped {name} ({time.strftime('%H:%M:%S')} by the new clock)",
                          flush=True)
                    checks.append(judge(name, await watch(daemon, interval), args.settle, args.lag_bound))
                    print(checks[-1].line(), flush=True)
            finally:
                tally = writer.stop()
            await campaign.wait_caught_up(conn, setup, daemon)
            with daemon.log.open("rb") as f:
                f.seek(log_mark)
                tail = f.read().decode(errors="replace").splitlines()
            bad = [ln for ln in tail if "retrying" in ln or "timeout" in ln.lower() or "Traceback" in ln]
            checks.append(Check("no retry, timeout or traceback after the steps", not bad,
                                f"{len(bad)} lines" + (f": {bad[0][:200]}" if bad else "")))
            checks.append(Check("offered load (information)", True,
                                f"{tally.transactions} transactions at {args.rate:.0f} changes/s"))
            checks += await campaign.final_checks(conn, setup, tally, (0, 0))
            code = await asyncio.to_thread(daemon.terminate)
            checks.append(Check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}"))
        finally:
            if daemon.alive:
                daemon.kill()
            await conn.close()
    finally:
        set_offset(clock, 0.0)
        server.stop()
    print(f"work dir: {work}")
    return campaign.report(checks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clockstep", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=200.0, help="row changes per second")
    ap.add_argument("--step-hours", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds a step may disturb the lag")
    ap.add_argument("--lag-bound", type=float, default=30.0, help="lag bound after settling, seconds")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--scale", type=int, default=100, help="initial rows (x2..x5 per table)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    clock = os.environ.get(CHILD)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="syncd-clockstep-"))
        sys.argv += ["--work", str(args.work)]
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
        sys.argv += ["--seed", str(args.seed)]
    if clock is None:
        args.work.mkdir(parents=True, exist_ok=True)
        reexec_under_faketime(args.work.resolve() / "clock")
    print(f"clockstep: {args.minutes:g} min at {args.rate:g} changes/s, steps of {args.step_hours:g} h, "
          f"seed {args.seed}", flush=True)
    return asyncio.run(run(args, Path(str(clock))))


if __name__ == "__main__":
    sys.exit(main())
