"""The write pause the app sees during `syncd cutover` and `syncd rollback`, and each step's time.

    python -m bench.cutover_bench [--rates 200 1000] [--cycles 10] [--out bench/out/cutover]
    python -m bench.cutover_bench --chroma --rates 30 --cycles 10     # the app writes embeddings too

For each rate: a fresh SQLite app database and PostgreSQL database, the daemon, and the
reference app (tests/app) writing users and documents at that rate; then *cycles* times
cutover → 1.5 s of writes on PostgreSQL → rollback → 1.5 s on SQLite. syncd reports the pause
it caused (SQLite's write lock held, or PostgreSQL fenced, until the reload); the app's own log
gives what it saw: the slowest write (first attempt → acknowledged, retries included) and the
longest gap between two acknowledgements around each switch. At the end the app is stopped and
every acknowledged write is checked present in both stores (lost writes are counted, not
assumed zero). With --chroma the app also writes embeddings to a collection on a `chroma run`
server (about a third of its writes): the pause it sees then includes Chroma's fence and the
vector streams' drain, and the collection is checked too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pg
from bench.chroma_bench import start_chroma
from tests.app import records
from tests.integration.cutover_support import Migration, free_port

TABLES = ("users", "documents")
COLLECTION = "embeddings"  # the reference app's collection (VECTOR_DB_COLLECTION), and its table


def seen_by_app(recs: list[records.Record], start: float, end: float) -> dict[str, float]:
    """Slowest write begun in [start, end] and the longest gap between acknowledgements there."""
    inside = [r for r in recs if r.ok and start - 1.0 <= r.t0 <= end]
    worst = max(inside, key=lambda r: r.t1 - r.t0, default=None)
    acks = sorted(r.t1 for r in recs if r.ok and start - 1.0 <= r.t1 <= end + 2.0)
    gap = max((b - a for a, b in itertools.pairwise(acks)), default=0.0)
    if worst is None:
        return {"slowest_write": 0.0, "longest_gap": gap}
    return {"slowest_write": worst.t1 - worst.t0, "longest_gap": gap,
            "slowest": {"object": worst.object, "op": worst.op, "store": worst.store,
                        "attempts": worst.attempts, "began_after_switch_start": worst.t0 - start,
                        "acked_after_switch_end": worst.t1 - end}}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "max": max(values), "n": len(values)} if values else {}


async def lost(m: Migration) -> int:
    everything = records.expected(m.records())
    want = {t: everything.get(t, {}) for t in TABLES}
    deadline = time.monotonic() + 60
    while True:
        problems = records.diff(want, records.read_sqlite(m.db, TABLES)) + \
            records.diff(want, await records.read_postgres(m.pg_dsn, TABLES))
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    missing = 0
    for store in (records.read_sqlite(m.db, TABLES), await records.read_postgres(m.pg_dsn, TABLES)):
        for t in TABLES:
            missing += sum(1 for k in want[t] if k not in store.get(t, {}))
    if m.vectors:  # the collection: every acknowledged embedding in Chroma and in pgvector
        vectors = everything.get(COLLECTION, {})
        chroma = records.read_chroma(chroma_client(m.chroma_url), COLLECTION).get(COLLECTION, {})
        table = (await records.read_pgvector(m.pg_dsn, COLLECTION, COLLECTION)).get(COLLECTION, {})
        missing += sum(1 for k in vectors if k not in chroma) + sum(1 for k in vectors if k not in table)
    return missing


def chroma_client(url: str | None) -> Any:
    import chromadb
    from chromadb.config import Settings

    assert url is not None
    host, port = url.removeprefix("http://").split(":")
    return chromadb.HttpClient(host=host, port=int(port), settings=Settings(anonymized_telemetry=False))


def run_rate(server: pg.Server, rate: float, cycles: int, work: Path, chroma: bool,
             keep_clients: bool = False) -> dict[str, Any]:
    dsn = pg.recreate_database(server, f"cutover_{int(rate)}")
    server_proc = None
    url = None
    if chroma:
        port = free_port()
        server_proc = start_chroma(work / "chroma", port)
        url = f"http://127.0.0.1:{port}"
    m = Migration(work, dsn, chroma_url=url, chroma_dir=work / "chroma")
    if keep_clients:
        m.app_args = ("--keep-clients",)
    switches: list[dict[str, Any]] = []
    try:
        m.init()
        m.start_daemon()
        m.wait_ready()
        m.start_app(rate=rate)
        time.sleep(2.0)
        for i in range(cycles):
            for op in ("cutover", "rollback"):
                m.wait_streaming("postgres→sqlite" if op == "rollback" else "sqlite")
                if m.vectors:
                    m.wait_streaming("pgvector→chroma" if op == "rollback" else "chroma")
                started = time.time()
                out = m.switch(op)
                ended = time.time()
                time.sleep(1.5)
                switches.append({"cycle": i, "op": op, "started": started, "ended": ended,
                                 "syncd_pause": out["pause_seconds"],
                                 "steps": {s["step"]: s["seconds"] for s in out["steps"]}})
        m.stop_app()
        recs = m.records()
        for s in switches:
            s.update(seen_by_app(recs, s["started"], s["ended"]))
        m.wait_streaming("sqlite")
        missing = asyncio.run(lost(m))
        acked = sum(1 for r in recs if r.ok)
        failed = sum(1 for r in recs if not r.ok)
        elapsed = max(r.t1 for r in recs) - min(r.t0 for r in recs)
    finally:
        m.close()
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=60)
    result: dict[str, Any] = {"rate": rate, "chroma": chroma, "app_keeps_clients": keep_clients,
                              "reached": acked / elapsed,
                              "acknowledged": acked, "failed_writes": failed, "lost": missing,
                              "switches": switches}
    for op in ("cutover", "rollback"):
        mine = [s for s in switches if s["op"] == op]
        result[op] = {
            "syncd_pause": summary([s["syncd_pause"] for s in mine]),
            "slowest_write": summary([s["slowest_write"] for s in mine]),
            "longest_gap": summary([s["longest_gap"] for s in mine]),
            "steps": {k: summary([s["steps"][k] for s in mine]) for k in mine[0]["steps"]},
        }
    return result


def table(results: list[dict[str, Any]]) -> str:
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    lines = ["| rate offered → reached | op | syncd pause p50 / max (ms) | app: slowest write p50 / max | "
             "app: longest gap between acks p50 / max | lost | steps p50 (ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for op in ("cutover", "rollback"):
            o = r[op]
            steps = ", ".join(f"{k} {ms(v['p50'])}" for k, v in o["steps"].items())
            lines.append(
                f"| {r['rate']:.0f} → {r['reached']:.0f}/s | {op} | {ms(o['syncd_pause']['p50'])} / "
                f"{ms(o['syncd_pause']['max'])} | {ms(o['slowest_write']['p50'])} / "
                f"{ms(o['slowest_write']['max'])} | "
                f"{ms(o['longest_gap']['p50'])} / {ms(o['longest_gap']['max'])} | {r['lost']} | {steps} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[200.0, 1000.0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/out/cutover"))
    ap.add_argument("--chroma", action="store_true", help="the app writes embeddings to Chroma too")
    ap.add_argument("--app-keeps-clients", action="store_true",
                    help="the reference app reuses its Chroma client across reloads (refapp --keep-clients)")
    ap.add_argument("--burn", type=int, default=0,
                    help="a loaded machine: N processes spinning on the CPU (nice 0) throughout")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)]
    try:
        results = measure(args)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "load_average_at_end": os.getloadavg(),
                          "burners": args.burn},
              "results": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(table(results))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="syncd-cutover-") as tmp:
        server = pg.start(Path(tmp) / "pg")
        for rate in args.rates:
            work = Path(tmp) / f"rate-{int(rate)}"
            work.mkdir()
            results.append(run_rate(server, rate, args.cycles, work, args.chroma, args.app_keeps_clients))
            print(f"rate {rate:.0f}: done; load average {os.getloadavg()[0]:.1f}", flush=True)
    return results


if __name__ == "__main__":
    main()
