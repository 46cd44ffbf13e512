"""Streaming lag: SQLite commit → visible in PostgreSQL, at fixed change rates.

A writer process commits app-shaped changes to the SQLite file on a fixed schedule
(``commits_per_second`` transactions, ``rate / commits_per_second`` changes each). The
last statement of every transaction inserts a row into ``bench_ticks`` holding the wall
clock read just before ``COMMIT``. An observer polls the target every few milliseconds for
new ticks; a tick's lag is the time the poll that first returned it came back minus its
stamp, so it includes the commit itself and up to one poll interval (both conservative).
Because the tick is the transaction's last change, the whole transaction is visible by then.

Writer mix per app change: 40 % insert a document (~1 KB), 25 % update a document,
25 % update a user, 10 % delete a document. The tick counts as one of the changes.

The writer runs as ``python -m bench.stream_lag writer ...`` and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.gen_app_db import WORDS, text_pool, timestamp
from bench.syncd_run import TICKS

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.005
DRAIN_SECONDS = 60.0
BOUNDED_SLOPE = 0.01
"""Lag may grow by at most 10 ms per second of writing for a rate to count as sustained."""
BOUNDED_MAX_LAG = 2.0
MIN_ACHIEVED = 0.95
"""Below 95 % of the target rate the writer, not syncd, limited the step."""
GOAL_P99 = 0.100


# --- writer (separate process) ------------------------------------------------------------


class Writer:
    def __init__(self, path: Path, seed: int) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.rng = random.Random(seed)
        self.pool = text_pool(self.rng, 1 << 20)
        self.doc_ids: list[str] = [r[0] for r in self.conn.execute("SELECT id FROM documents")]
        self.max_user = self.conn.execute("SELECT max(id) FROM users").fetchone()[0]

    def _text(self) -> str:
        start = self.rng.randrange(len(self.pool) - 1300)
        return self.pool[start:start + self.rng.randint(800, 1200)]

    def _title(self) -> str:
        return " ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 9))).capitalize()

    def change(self) -> None:
        rng, c = self.rng, self.conn
        r = rng.random()
        if r < 0.40 or not self.doc_ids:
            doc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            c.execute(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_id, rng.randint(1, self.max_user), self._title(), self._text(),
                 rng.randint(0, 40), rng.random(), json.dumps({"source": "bench"}),
                 timestamp(rng)))
            self.doc_ids.append(doc_id)
        elif r < 0.65:
            c.execute("UPDATE documents SET score = ?, title = ?, metadata = ? WHERE id = ?",
                      (rng.random(), self._title(), json.dumps({"edited": rng.randint(1, 9)}),
                       rng.choice(self.doc_ids)))
        elif r < 0.90:
            c.execute("UPDATE users SET name = ?, settings = ? WHERE id = ?",
                      (f"User {rng.getrandbits(32):x}", json.dumps({"theme": "dark"}),
                       rng.randint(1, self.max_user)))
        else:
            i = rng.randrange(len(self.doc_ids))
            self.doc_ids[i], self.doc_ids[-1] = self.doc_ids[-1], self.doc_ids[i]
            c.execute("DELETE FROM documents WHERE id = ?", (self.doc_ids.pop(),))

    def run(self, rate: float, seconds: float, commits_per_second: float) -> dict[str, Any]:
        per_commit = max(1, round(rate / commits_per_second))
        interval = per_commit / rate
        commits = changes = 0
        first_tick = last_tick = None
        worst_behind = 0.0
        write_times: list[float] = []
        started = time.monotonic()
        end = started + seconds
        while (due := started + commits * interval) < end:
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            elif now >= end:
                break  # behind schedule: the offered rate is what was reached by the end
            else:
                worst_behind = max(worst_behind, now - due)
            began = time.monotonic()
            self.conn.execute("BEGIN IMMEDIATE")
            for _ in range(per_commit - 1):
                self.change()
            cur = self.conn.execute(f"INSERT INTO {TICKS} (t) VALUES (?)", (time.time(),))
            self.conn.execute("COMMIT")
            write_times.append(time.monotonic() - began)
            last_tick = cur.lastrowid
            first_tick = first_tick or last_tick
            commits += 1
            changes += per_commit
        elapsed = time.monotonic() - started
        return {
            "target_rate": rate,
            "achieved_rate": changes / elapsed,
            "changes": changes,
            "commits": commits,
            "changes_per_commit": per_commit,
            "seconds": elapsed,
            "worst_behind_schedule": worst_behind,
            # each transaction from BEGIN IMMEDIATE (waiting for the write lock) to COMMIT's end
            "write_p50": percentile(write_times, 50) if write_times else None,
            "write_p99": percentile(write_times, 99) if write_times else None,
            "write_max": max(write_times, default=None),
            "first_tick": first_tick,
            "last_tick": last_tick,
        }


def writer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench.stream_lag writer")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--rate", type=float, required=True, help="changes per second")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--commits-per-second", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    writer = Writer(args.db, args.seed)
    result = writer.run(args.rate, args.seconds, args.commits_per_second)
    print(json.dumps(result))
    return 0


# --- observer and analysis (benchmark process) --------------------------------------------


class Observer:
    """Polls the target for new ticks; records ``id -> (stamped, seen)`` for each."""

    def __init__(self, conn: asyncpg.Connection, after: int = 0) -> None:
        self.conn = conn
        self.seen: dict[int, tuple[float, float]] = {}
        self.last_id = after
        self.polls = 0
        self._want = 0
        self._reached = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        query = f'SELECT id, t FROM "{TICKS}" WHERE id > $1 ORDER BY id'
        while not stop.is_set():
            t0 = time.monotonic()
            rows = await self.conn.fetch(query, self.last_id)
            now = time.time()
            self.polls += 1
            for r in rows:
                self.seen[r["id"]] = (r["t"], now)
            if rows:
                self.last_id = rows[-1]["id"]
                if self.last_id >= self._want:
                    self._reached.set()
            await asyncio.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - t0)))

    async def reach(self, tick: int) -> None:
        """Return once tick *tick* has been seen (``run`` must be polling)."""
        self._want = tick
        self._reached.clear()
        if self.last_id < tick:
            await self._reached.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of lag (y) over commit time (x)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def analyse(writer: dict[str, Any], seen: dict[int, tuple[float, float]]) -> dict[str, Any]:
    first, last = writer["first_tick"], writer["last_tick"]
    ticks = [seen[i] for i in range(first, last + 1) if i in seen] if first else []
    missing = (last - first + 1 - len(ticks)) if first else 0
    out: dict[str, Any] = {**writer, "ticks": len(ticks), "ticks_missing": missing}
    if not ticks:
        return {**out, "bounded": False, "offered": False}
    t0 = ticks[0][0]
    points = [(stamp - t0, visible - stamp) for stamp, visible in ticks]
    lags = [p[1] for p in points]
    quarter = max(1, len(lags) // 4)
    out.update({
        "lag_p50": percentile(lags, 50),
        "lag_p90": percentile(lags, 90),
        "lag_p99": percentile(lags, 99),
        "lag_max": max(lags),
        "lag_p50_first_quarter": percentile(lags[:quarter], 50),
        "lag_p50_last_quarter": percentile(lags[-quarter:], 50),
        "lag_slope": slope(points),
    })
    out["offered"] = writer["achieved_rate"] >= MIN_ACHIEVED * writer["target_rate"]
    out["bounded"] = (
        missing == 0
        and out["lag_slope"] <= BOUNDED_SLOPE
        and out["lag_max"] <= BOUNDED_MAX_LAG
    )
    return out


async def run_step(db: Path, dsn: str, rate: float, seconds: float, *,
                   commits_per_second: float = 100.0, seed: int = 7) -> dict[str, Any]:
    """One writer run at *rate*, observed until every tick it wrote is visible (or
    ``DRAIN_SECONDS`` after the writer finished)."""
    conn = await asyncpg.connect(dsn)
    stop = asyncio.Event()
    try:
        after = await conn.fetchval(f'SELECT coalesce(max(id), 0) FROM "{TICKS}"')
        observer = Observer(conn, after)
        polling = asyncio.create_task(observer.run(stop))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.stream_lag", "writer", "--db", str(db),
            "--rate", str(rate), "--seconds", str(seconds),
            "--commits-per-second", str(commits_per_second), "--seed", str(seed),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        stdout, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"writer exited {proc.returncode}")
        writer = json.loads(stdout)
        if writer["last_tick"]:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_SECONDS):
                    await observer.reach(writer["last_tick"])
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await polling
        await conn.close()
    result = analyse(writer, observer.seen)
    result["observer_polls"] = observer.polls
    return result


async def wait_visible(db: Path, dsn: str) -> float:
    """Commit one tick and wait until the target shows it; return how long that took.

    Bound it with ``asyncio.timeout``: the target may not even have the table yet.
    """
    conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
    try:
        tick = conn.execute(f"INSERT INTO {TICKS} (t) VALUES (?)", (time.time(),)).lastrowid
    finally:
        conn.close()
    assert tick is not None
    started = time.monotonic()
    while True:
        try:
            pg = await asyncpg.connect(dsn)
            try:
                if await pg.fetchval(f'SELECT count(*) FROM "{TICKS}" WHERE id = $1', tick):
                    return time.monotonic() - started
            finally:
                await pg.close()
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.2)


async def writer_capacity(db: Path, seconds: float = 5.0, seed: int = 1000) -> dict[str, Any]:
    """How fast the writer alone commits (capture triggers installed, nothing else running):
    the offered rate above which a sweep step measures the writer, not syncd."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.stream_lag", "writer", "--db", str(db),
        "--rate", "1000000", "--seconds", str(seconds), "--commits-per-second", "10000",
        "--seed", str(seed),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    stdout, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"writer exited {proc.returncode}")
    result: dict[str, Any] = json.loads(stdout)
    return result


def sweep_rates(headline: float, steps: tuple[float, ...]) -> tuple[float, ...]:
    return (headline, *sorted(r for r in steps if r > headline))


async def sweep(db: Path, dsn: str, *, headline_rate: float = 1000.0,
                headline_seconds: float = 30.0, steps: tuple[float, ...] = (
                    2000.0, 5000.0, 10000.0, 20000.0, 40000.0),
                step_seconds: float = 20.0, refine: bool = True,
                on_step: Callable[[float], None] | None = None) -> dict[str, Any]:
    """The headline rate, then higher rates until lag stops being bounded or the writer
    cannot offer the rate any more; one refinement step between the last bounded and the
    first unbounded rate. The sustained rate is the highest *achieved* rate with bounded lag.
    """
    results: list[dict[str, Any]] = []
    last_ok: float | None = None
    failed: float | None = None

    async def step(rate: float, seconds: float, seed: int) -> dict[str, Any]:
        if on_step:
            on_step(rate)
        result = await run_step(db, dsn, rate, seconds, seed=seed)
        results.append(result)
        await asyncio.sleep(2.0)
        return result

    for i, rate in enumerate(sweep_rates(headline_rate, steps)):
        result = await step(rate, headline_seconds if i == 0 else step_seconds, 7 + i)
        if not result["bounded"]:
            failed = rate
            break
        last_ok = rate
        if not result["offered"]:
            break  # the writer is the limit; a higher target would measure it, not syncd
    if refine and last_ok is not None and failed is not None:
        mid = round((last_ok * failed) ** 0.5, -2)
        if last_ok < mid < failed:
            await step(mid, step_seconds, 99)
    bounded = [r for r in results if r["bounded"]]
    fast = [r for r in bounded if r["lag_p99"] < GOAL_P99]
    best = max(bounded, key=lambda r: r["achieved_rate"], default=None)
    return {
        "steps": results,
        "max_sustained_rate": best["achieved_rate"] if best else None,
        "max_sustained_writer_limited": bool(best and not best["offered"]),
        "max_rate_within_goal": max((r["achieved_rate"] for r in fast), default=None),
        "first_unbounded_rate": failed,
        "rule": (f"bounded = every tick visible, lag slope <= {BOUNDED_SLOPE * 1000:.0f} ms/s "
                 f"and max lag <= {BOUNDED_MAX_LAG:.0f} s over the window; a step whose "
                 f"writer reached < {MIN_ACHIEVED:.0%} of the target is writer-limited"),
        "goal_p99": GOAL_P99,
        "poll_interval": POLL_SECONDS,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        sys.exit(writer_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.stream_lag writer --db PATH --rate N --seconds S")
