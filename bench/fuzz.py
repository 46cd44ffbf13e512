"""Differential fuzzing campaign: random schemas, values and operations through the real
daemon, checked by an oracle that shares nothing with syncd (``tests/fuzz``).

    python -m bench.fuzz --cases 500 [--seed S] [--kills | --no-kills] [--dsn DSN]
                         [--batch 20] [--jobs 2] [--shrink-budget 25] [--out bench/out/fuzz.json]

Case *i* runs seed ``S + i``; ``--seed`` with ``--cases 1`` re-runs one case. ``--batch N``
runs N consecutive seeds through one SQLite file, one database and one daemon life
(``tests/fuzz/batch.py``); each divergence stays its own case's seed. Without
``--dsn`` (or ``SYNCD_TEST_PG_DSN``) an embedded PostgreSQL is started for the run; each
case gets a database of its own on it. Prints each failing case, then the divergences
grouped by class with a reproduction of each (shrunk when the replay without timing still
fails), and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.fuzz.batch import run_batch
from tests.fuzz.case import CaseResult, Options, run_case
from tests.fuzz.report import Summary
from tests.fuzz.repro import render
from tests.fuzz.shrink import shrink

OUT = Path(__file__).resolve().parent / "out" / "fuzz.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=None, help="first seed (default: random, printed)")
    p.add_argument("--kills", action=argparse.BooleanOptionalAction, default=True,
                   help="background daemons SIGKILLed at random moments (default on)")
    p.add_argument("--dsn", default=os.environ.get("SYNCD_TEST_PG_DSN"),
                   help="PostgreSQL server to create one database per case on (default: embedded)")
    p.add_argument("--jobs", type=int, default=1, help="cases (or batches) run at once")
    p.add_argument("--batch", type=int, default=1,
                   help="cases sharing one SQLite file, database and daemon life (default 1: alone)")
    p.add_argument("--shrink-budget", type=int, default=25,
                   help="replays spent shrinking the first case of each class (0: no shrinking)")
    p.add_argument("--no-verify", action="store_true", help="do not run syncd verify after each case")
    p.add_argument("--keep", action="store_true", help="keep each case's files and database")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--work", type=Path, default=None, help="directory for the cases' files")
    return p.parse_args(argv)


def start_server(root: Path) -> str:
    from bench import pg
    server = pg.start(root / "pg")
    return server.dsn()


def progress(r: CaseResult, done: int, total: int) -> None:
    status = f"{len(r.divergences)} divergences" if r.divergences else "ok"
    where = f" (batch {r.batch[0]}..{r.batch[-1]}, tables {r.prefix}*)" if r.batch and r.divergences else ""
    print(f"[{done}/{total}] seed {r.seed}{where}: {len(r.steps)} steps, {r.seconds:.1f} s, {status}",
          flush=True)
    for d in r.divergences[:5]:
        print(f"    {d.line()[:300]}", flush=True)
    if len(r.divergences) > 5:
        print(f"    … {len(r.divergences) - 5} more", flush=True)


async def campaign(args: argparse.Namespace, dsn: str, root: Path) -> Summary:
    first = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"seeds {first}..{first + args.cases - 1}, kills {'on' if args.kills else 'off'}", flush=True)
    summary = Summary(first_seed=first)
    opts = Options(kills=args.kills, verify=not args.no_verify, keep=args.keep)
    results: dict[str, CaseResult] = {}
    sem = asyncio.Semaphore(max(1, args.jobs))
    done = 0

    async def one(seeds: list[int]) -> None:
        nonlocal done
        async with sem:
            try:
                rs = (await run_batch(seeds, dsn, root, opts) if args.batch > 1
                      else [await run_case(seeds[0], dsn, root, opts)])
            except Exception:  # a fault of the harness, not a divergence: show it, go on
                done += len(seeds)
                summary.harness_errors += seeds
                print(f"[{done}/{args.cases}] seeds {seeds[0]}..{seeds[-1]}: the harness failed:\n"
                      f"{traceback.format_exc()}", flush=True)
                return
        for r in rs:
            done += 1
            if r.harness_error:
                summary.harness_errors.append(r.seed)
                print(f"[{done}/{args.cases}] seed {r.seed}: the harness failed:\n{r.harness_error}",
                      flush=True)
                continue
            progress(r, done, args.cases)
            summary.add(r)
            for d in r.divergences:
                results.setdefault(d.tag, r)
        write_summary(args, summary, t0)  # a partial run still says how far it got
        if args.batch > 1:
            print(f"batch {seeds[0]}..{seeds[-1]} done: {done}/{args.cases} cases, "
                  f"{summary.failing_cases} with divergences, {time.monotonic() - t0:.0f} s", flush=True)

    t0 = time.monotonic()
    size = max(1, args.batch)
    seeds = [first + i for i in range(args.cases)]
    await asyncio.gather(*(one(seeds[i:i + size]) for i in range(0, len(seeds), size)))
    if args.shrink_budget > 0:
        for tag, r in results.items():
            print(f"shrinking {tag} (seed {r.seed}) …", flush=True)
            s = await shrink(r, tag, dsn, root, budget=args.shrink_budget)
            if s.result is not None:
                summary.groups[tag].shrunk = render(r.schema, r.journal, r.settings, s.steps)
                example = next(d for d in s.result.divergences if d.tag == tag)
                summary.groups[tag].example, summary.groups[tag].example_seed = example, r.seed
            print(f"  {'reproducible' if s.reproducible else 'not reproducible without timing'}, "
                  f"{len(s.steps)} steps after {s.runs} replays", flush=True)
    return summary


def write_summary(args: argparse.Namespace, summary: Summary, started: float) -> None:
    doc = summary.json() | {"wall_seconds": round(time.monotonic() - started, 1), "kills": args.kills,
                            "batch": args.batch}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # the embedded server is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="syncd-fuzz-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        dsn = args.dsn or start_server(Path(tmp))
        try:
            summary = asyncio.run(campaign(args, dsn, root))
        finally:  # before the directory goes: the exit-time stop would find no data dir
            if not args.dsn:
                from bench import pg
                pg.stop_dir(Path(tmp) / "pg")
    print()
    print(summary.text())
    write_summary(args, summary, started)
    print(f"\nsummary written to {args.out}")
    return 1 if summary.groups else 0


if __name__ == "__main__":
    sys.exit(main())
