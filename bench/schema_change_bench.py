"""What an app migration mid-stream costs: ``ALTER TABLE documents ADD COLUMN`` on the
benchmark database while syncd streams and the app writes.

    python -m bench.schema_change_bench                       # 200k users + 500k documents
    python -m bench.schema_change_bench --users 20000 --documents 50000

Measured: the first snapshot (for scale); the time the app's writers waited for syncd's
re-capture (``write_lock_ms`` in syncd's log: the write lock held to describe the table and
rebuild its triggers); the time from the end of the app's ALTER to syncd's re-capture and to
its "caught up" after the copy (the table copied again, then the changes meanwhile replayed;
times from syncd's log); app write latency around
the migration, the app's own ALTER excluded; and whether every row of the table holds the
new column's value in PostgreSQL afterwards. Results: ``bench/out/schema-change.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import gen_app_db, pg, syncd_run
from bench.chroma_bench import events

OUT = Path(__file__).resolve().parent / "out"
ALTER = "ALTER TABLE documents ADD COLUMN summary TEXT NOT NULL DEFAULT 'none'"


class App(threading.Thread):
    """Updates random users at *rate* transactions/s; records each write's start and duration."""

    def __init__(self, db: Path, rate: float, n_users: int) -> None:
        super().__init__(daemon=True)
        self.db, self.rate, self.n_users = db, rate, n_users
        self.stop = threading.Event()
        self.writes: list[tuple[float, float]] = []

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=30)
        rng = random.Random(7)
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        while not self.stop.is_set():
            began = time.perf_counter()
            conn.execute("UPDATE users SET name = ? WHERE id = ?",
                         (f"renamed {rng.random():.6f}", rng.randrange(1, self.n_users + 1)))
            self.writes.append((began, time.perf_counter() - began))
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        conn.close()


def caught_up(setup: syncd_run.Setup, server: pg.Server) -> bool:
    rows = pg.query(server, setup.database,
                    "SELECT position, coalesce((snapshot->>'complete')::boolean, true) "
                    "FROM syncd.checkpoints WHERE stream = 'sqlite'")
    if not rows or rows[0][1] != "t":
        return False
    conn = sqlite3.connect(f"file:{setup.sqlite}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM _syncd_changelog WHERE id > ?",
                                (int(rows[0][0]),)).fetchone()[0]) == 0
    finally:
        conn.close()


def log_events(path: Path) -> list[dict[str, Any]]:
    return events(path.read_text(errors="replace"))


def wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def again_caught_up(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stream's "caught up" after the copy that followed the migration."""
    copied = False
    for e in events:
        copied = copied or e.get("event") == "snapshot done"
        if copied and e.get("event") == "caught up":
            return e
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--rate", type=float, default=200.0, help="app writes/s during the migration")
    ap.add_argument("--work", type=Path, default=OUT / "schema-change")
    args = ap.parse_args()

    source = gen_app_db.cached(args.work, args.users, args.documents)
    server = pg.start(args.work / "pgdata")  # stopped when this process exits
    setup, snap = syncd_run.snapshot(server, source, args.work / "run", "schema_change")
    print(f"first snapshot: {snap['seconds']:.1f} s", flush=True)
    with syncd_run.Daemon(setup) as daemon:
        deadline = time.monotonic() + 120
        while not caught_up(setup, server):
            assert daemon.alive() and time.monotonic() < deadline, "daemon not streaming"
            time.sleep(0.2)
        app = App(setup.sqlite, args.rate, args.users)
        app.start()
        time.sleep(2.0)
        conn = sqlite3.connect(setup.sqlite, isolation_level=None, timeout=60)
        alter_began = time.perf_counter()
        conn.execute(ALTER)
        alter_ended = time.perf_counter()
        conn.close()
        alter_wall = time.time()
        deadline = time.monotonic() + 1800
        while not again_caught_up(log_events(daemon.log)):
            assert daemon.alive() and time.monotonic() < deadline, "the table was not copied again"
            time.sleep(0.2)
        time.sleep(2.0)
        app.stop.set()
        app.join()
    after = [d for t, d in app.writes if t >= alter_ended - 0.001]
    before = [d for t, d in app.writes if t < alter_began]
    copy_began = next((e for e in log_events(daemon.log) if e.get("event") == "snapshot resume"), None)
    slow = sorted(((d, t - alter_ended) for t, d in app.writes if t >= alter_ended - 0.001), reverse=True)[:5]
    events = log_events(daemon.log)
    recaptures = [e for e in events if "capture re-installed" in str(e.get("event"))]
    lock = [e.get("write_lock_ms") for e in recaptures]
    copies = [e for e in events if e.get("event") == "snapshot done"]
    back = again_caught_up(events)
    assert back is not None and recaptures
    filled = pg.query(server, setup.database,
                      "SELECT count(*) FILTER (WHERE summary = 'none'), count(*) FROM documents")[0]
    result = {
        "users": args.users, "documents": args.documents, "app_rate": args.rate,
        "first_snapshot_seconds": snap["seconds"],
        "app_alter_seconds": alter_ended - alter_began,
        "recapture_write_lock_ms": lock,
        "alter_to_recapture_seconds": wall(recaptures[0]) - alter_wall,
        "alter_to_caught_up_seconds": wall(back) - alter_wall,
        "copy_again": copies[-1] if copies else None,
        "slowest_app_write_after_alter_ms": max(after) * 1000 if after else None,
        "app_write_ms_after_alter_p50_p99": (
            [statistics.median(after) * 1000, statistics.quantiles(after, n=100)[98] * 1000]
            if len(after) > 1 else None),
        "slowest_app_write_before_alter_ms": max(before) * 1000 if before else None,
        "slowest_writes_ms_at_seconds_after_alter": [(round(d * 1000, 1), round(t, 2)) for d, t in slow],
        "copy_again_began": copy_began.get("timestamp") if copy_began else None,
        "app_writes_after_alter": len(after),
        "documents_with_the_new_value": f"{filled[0]} of {filled[1]}",
        "daemon": daemon.summary(),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "schema-change.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
