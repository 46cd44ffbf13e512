"""Where a fuzz case's time goes: wall time per kind of step, summed over cases.

    python -m tests.fuzz.timing CASES FIRST_SEED [BATCH]

Runs the cases (alone, or in batches of BATCH) on an embedded PostgreSQL with timers around
the ``syncd`` commands, the background daemon's starts and kills, the app's SQLite steps, the
live phases' sleeps, the database's creation and drop, and the final check.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.fuzz import batch as batch_mod
from tests.fuzz import case as case_mod
from tests.fuzz import daemon

SECONDS: defaultdict[str, float] = defaultdict(float)
CALLS: defaultdict[str, int] = defaultdict(int)


def _timed(owner: Any, name: str, label: Callable[[tuple[Any, ...]], str] | None = None) -> None:
    f = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return f(*args, **kwargs)
        finally:
            key = label(args) if label else name
            SECONDS[key] += time.monotonic() - started
            CALLS[key] += 1
    setattr(owner, name, wrapper)


def _atimed(owner: Any, name: str, key: str) -> None:
    f: Callable[..., Awaitable[Any]] = getattr(owner, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await f(*args, **kwargs)
        finally:
            SECONDS[key] += time.monotonic() - started
            CALLS[key] += 1
    setattr(owner, name, wrapper)


def _sleep(seconds: float, real: Callable[[float], None] = time.sleep) -> None:
    SECONDS["sleeps of the live phases"] += seconds
    CALLS["sleeps of the live phases"] += 1
    real(seconds)


def instrument() -> None:
    _timed(daemon.Syncd, "run", lambda a: "syncd " + " ".join(a[1:]))
    _timed(daemon.Syncd, "verify", lambda a: "syncd verify")
    _timed(daemon.Syncd, "start", lambda a: "background run: start")
    _timed(daemon.Syncd, "kill", lambda a: "background run: SIGKILL")
    _timed(case_mod, "apply", lambda a: "app steps on SQLite")
    for owner in (case_mod.Runner, batch_mod.Batch):
        _atimed(owner, "_create_db", "CREATE DATABASE")
        _atimed(owner, "_drop_db", "DROP DATABASE")
    _atimed(batch_mod.Batch, "check", "check (reads, verify, oracle)")
    _atimed(case_mod.Runner, "check", "check (reads, verify, oracle)")
    case_mod.time.sleep = _sleep  # type: ignore[attr-defined]


async def main(cases: int, first: int, size: int) -> None:
    from bench import pg
    instrument()
    with tempfile.TemporaryDirectory(prefix="syncd-fuzz-timing-") as tmp:
        dsn = pg.start(Path(tmp) / "pg").dsn()
        started = time.monotonic()
        try:
            for s in range(first, first + cases, size):
                if size == 1:
                    await case_mod.run_case(s, dsn, Path(tmp))
                else:
                    await batch_mod.run_batch(list(range(s, min(s + size, first + cases))), dsn, Path(tmp))
        finally:
            pg.stop_dir(Path(tmp) / "pg")
        total = time.monotonic() - started
    print(f"{cases} cases{f' in batches of {size}' if size > 1 else ' alone'}: {total:.1f} s, "
          f"{total / cases:.2f} s per case")
    for key in sorted(SECONDS, key=lambda k: -SECONDS[k]):
        print(f"  {key:34s} {SECONDS[key]:7.1f} s  x{CALLS[key]:<4d} {SECONDS[key] / total * 100:3.0f} %")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1))
