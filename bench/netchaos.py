"""Network campaign: random Toxiproxy toxics on syncd's PostgreSQL connection, in a loop.

    python -m bench.netchaos --minutes 30 [--rate 200] [--seed S] [--work DIR]

syncd reaches its target through a Toxiproxy proxy (the real one when ``TOXIPROXY_URL`` is
set, else the in-tree server of the fault tests, tests/toxiproxy_server.py); the harness reads
PostgreSQL directly, so a fault never hides what syncd committed. PostgreSQL listens on TCP
(tests/pg_tcp.py). The app (the crash tests' randomized writer) writes all along.

Until the time is up: one or two random toxics, each on a random direction, stay for 1-8 s —
``latency`` (50-1,000 ms, jitter), ``bandwidth`` (2-200 KB/s), ``slicer`` (a real Toxiproxy
only: the in-tree server has none), ``limit_data`` (the connection is cut after 1-64 KB),
``reset_peer`` (RST after 0-2 s), ``timeout`` (data swallowed; closed after 0.5-5 s, or
never while the toxic stays) — then they go, and the harness waits for the daemon to
apply every change logged before they went, and records how long that took. syncd runs
with ``connect_timeout`` 3 s, ``command_timeout`` 5 s and a 2 s backoff cap, as in the
fault tests.

At the end: the daemon never exited by itself, every round recovered, and lost 0 / doubled 0
(audit triggers) / rows equal / ``syncd verify`` equal (bench.campaign.final_checks).
One line per check; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from bench import campaign, chroma_app
from bench.campaign import Check
from bench.chroma_app import Chroma
from tests.pg_tcp import TcpPostgres, free_port
from tests.toxiproxy_server import VERSION, toxiproxy_api, use_client

STREAM = {"batch_size": 200, "poll_interval": 0.2, "prune_interval": 1.0, "retry_max_seconds": 2.0}
TARGET = {"connect_timeout": 3.0, "command_timeout": 5.0}
PROXY = "syncd-netchaos-pg"
CHROMA_PROXY = "syncd-netchaos-chroma"
RECOVERY_BOUND = 60.0
"""Seconds after the toxics go within which the daemon must have caught up."""


def draw_toxic(rng: random.Random, real: bool, i: int) -> dict[str, Any]:
    kinds = ["latency", "bandwidth", "limit_data", "reset_peer", "timeout"] + (["slicer"] if real else [])
    kind = rng.choice(kinds)
    attrs: dict[str, Any] = {
        "latency": lambda: {"latency": rng.randint(50, 1000), "jitter": rng.randint(0, 100)},
        "bandwidth": lambda: {"rate": rng.randint(2, 200)},
        "slicer": lambda: {"average_size": rng.randint(1, 64), "size_variation": 8,
                           "delay": rng.randint(0, 2000)},
        "limit_data": lambda: {"bytes": rng.randint(1024, 65536)},
        "reset_peer": lambda: {"timeout": rng.randint(0, 2000)},
        "timeout": lambda: {"timeout": rng.choice([0, rng.randint(500, 5000)])},
    }[kind]()
    return {"type": kind, "name": f"{kind}-{i}", "stream": rng.choice(["upstream", "downstream"]),
            "attributes": attrs}


async def run(args: argparse.Namespace) -> int:
    work: Path = args.work
    rng = random.Random(args.seed)
    with TcpPostgres.started(work / "pg") as server, toxiproxy_api() as url:
        client = use_client(url)
        real = VERSION not in str(client.version())
        stale = client.get_proxy(PROXY)
        if stale is not None:
            stale.destroy()
        listen = f"127.0.0.1:{free_port()}"
        proxy = client.create(upstream=server.address, name=PROXY, listen=listen)
        proxies = {"pg": proxy}
        chroma: Chroma | None = None
        try:
            chroma_target = None
            if args.chroma_share > 0:
                chroma = Chroma.start(work / "chroma", args.seed + 2, args.rate * args.chroma_share,
                                      populate=args.scale)
                stale = client.get_proxy(CHROMA_PROXY)
                if stale is not None:
                    stale.destroy()
                chroma_listen = f"127.0.0.1:{free_port()}"
                proxies["chroma"] = client.create(
                    upstream=chroma.store.url.removeprefix("http://"), name=CHROMA_PROXY,
                    listen=chroma_listen)
                chroma_target = (f"http://{chroma_listen}", chroma.store.path)
            admin = await asyncpg.connect(server.dsn)
            try:
                await admin.execute('DROP DATABASE IF EXISTS "netchaos" WITH (FORCE)')
                await admin.execute('CREATE DATABASE "netchaos"')
            finally:
                await admin.close()
            setup = campaign.prepare(None, work / "run", database="netchaos", seed=args.seed,
                                     scale=args.scale, stream=STREAM, target_options=TARGET,
                                     target=(server.dsn_for("netchaos"),
                                             f"postgresql://postgres@{listen}/netchaos"),
                                     chroma=chroma_target)
            init = campaign.run_cli(setup, "init")
            if init.returncode != 0:
                print(f"FAIL  syncd init: exit {init.returncode}: {init.stderr.strip()[-300:]}")
                return 1
            print(f"netchaos: toxics from {'a real Toxiproxy' if real else 'the in-tree server'} "
                  f"at {url}", flush=True)
            conn = await asyncpg.connect(setup.dsn)
            try:
                checks = await drive(conn, setup, proxies, rng, real, args, chroma)
            finally:
                await conn.close()
        finally:
            for p in proxies.values():
                p.destroy()
            if chroma:
                chroma.writer.halt()
                chroma.store.stop()
    print(f"work dir: {work}")
    return campaign.report(checks)


async def drive(conn: asyncpg.Connection, setup: campaign.Setup, proxies: dict[str, Any],
                rng: random.Random, real: bool, args: argparse.Namespace,
                chroma: Chroma | None) -> list[Check]:
    writer = campaign.PacedWriter(setup.sqlite, args.seed + 1, args.rate)
    also = (chroma_app.caught_up(conn, chroma.store, chroma.writer.collection_id)
            if chroma else None)
    daemon = campaign.Daemon(setup)
    exits: list[str] = []
    applied: Counter[str] = Counter()
    recovery: dict[str, list[float]] = {}
    late: list[str] = []
    rounds = 0
    try:
        writer.pause()  # the snapshot first, then the audit on a still app
        await campaign.wait_caught_up(conn, setup, daemon, within=600, also=also)
        await conn.execute(campaign.AUDIT)
        base = (campaign.sqlite_value(setup.sqlite, "SELECT count(*) FROM events"),
                campaign.sqlite_value(setup.sqlite, "SELECT sum(n) FROM counters"))
        writer.pause(False)
        if chroma:
            chroma.writer.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            rounds += 1
            toxics = [draw_toxic(rng, real, rounds * 10 + k) for k in range(rng.choice([1, 1, 2]))]
            for t in toxics:
                t["proxy"] = rng.choice(sorted(proxies))
                proxies[t["proxy"]].add_toxic(**{k: v for k, v in t.items() if k != "proxy"})
                applied[f"{t['proxy']} {t['type']}"] += 1
            await asyncio.sleep(rng.uniform(1.0, 8.0))
            for t in toxics:
                proxies[t["proxy"]].destroy_toxic(t["name"])
            gone = time.monotonic()
            upto = campaign.sqlite_value(setup.sqlite, "SELECT coalesce(max(id), 0) FROM _syncd_changelog")
            chroma_upto = (await asyncio.to_thread(chroma.store.newest, chroma.writer.collection_id)
                           if chroma else None)
            if not daemon.alive:
                exits.append(f"round {rounds}: exit {daemon.proc.returncode}")
                daemon = campaign.Daemon(setup)
            try:
                await applied_up_to(conn, daemon, upto, within=RECOVERY_BOUND,
                                    chroma=(chroma.writer.collection_id, chroma_upto)
                                    if chroma and chroma_upto is not None else None)
            except RuntimeError as exc:
                late.append(f"round {rounds} ({'+'.join(t['type'] for t in toxics)}): {exc}"[:300])
                if not daemon.alive:
                    exits.append(f"round {rounds}: exit {daemon.proc.returncode}")
                    daemon = campaign.Daemon(setup)
            took = time.monotonic() - gone
            for t in toxics:
                recovery.setdefault(f"{t['proxy']} {t['type']}", []).append(took)
            print(f"round {rounds:3d}: {' + '.join(describe(t) for t in toxics)}; applied "
                  f"up to then {took:.1f} s after", flush=True)
            await asyncio.sleep(rng.uniform(0.0, 2.0))
        await campaign.wait_caught_up(conn, setup, daemon, also=also)
        tally = writer.stop()
        record = await asyncio.to_thread(chroma.writer.stop) if chroma else None
        await campaign.wait_caught_up(conn, setup, daemon, also=also)
        checks = await campaign.final_checks(conn, setup, tally, base)
        if record is not None:
            checks += await chroma_app.chroma_checks(conn, record)
        code = await asyncio.to_thread(daemon.terminate)
    finally:
        writer.halt()
        if daemon.alive:
            daemon.kill()
    log = daemon.log.read_text(errors="replace")
    checks[:0] = [
        Check("toxic rounds", rounds > 0, f"{rounds} rounds: "
              + ", ".join(f"{k} {n}" for k, n in sorted(applied.items()))),
        Check("daemon never exited by itself", not exits, f"{len(exits)} {exits[:3]}"),
        Check(f"caught up within {RECOVERY_BOUND:g} s of every round", not late,
              f"{len(late)} late {late[:2]}"),
        Check("catch-up after the toxics went (median / max, s)", True, ", ".join(
            f"{k} {statistics.median(v):.1f}/{max(v):.1f}" for k, v in sorted(recovery.items()))),
    ]
    checks.append(Check("daemon stops on SIGTERM with exit 0", code == 0, f"exit {code}"))
    checks.append(Check("no traceback in the daemon's log", "Traceback" not in log,
                        f"{log.count('Traceback')} tracebacks, {log.count('retrying')} retry lines"))
    return checks


async def applied_up_to(conn: asyncpg.Connection, daemon: campaign.Daemon, upto: int,
                        within: float, chroma: tuple[str, int] | None = None) -> None:
    """Until the committed checkpoint reaches *upto* (every change logged before the toxics
    went is applied; the app writes on meanwhile, so "nothing pending" may never be seen),
    and the Chroma stream's (collection id, newest log row then) too."""
    deadline = time.monotonic() + within
    while True:
        if not daemon.alive:
            raise RuntimeError(f"syncd exited {daemon.proc.returncode}")
        cp = await campaign.stored_position(conn)
        ccp = await chroma_app.chroma_position(conn, chroma[0]) if chroma else None
        if cp is not None and cp[0] >= upto and (chroma is None
                                                 or (ccp is not None and ccp[0] >= chroma[1])):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"checkpoint {cp} short of {upto} (chroma {ccp} of "
                               f"{chroma[1] if chroma else '-'}) after {within:g} s")
        await asyncio.sleep(0.1)


def describe(t: dict[str, Any]) -> str:
    attrs = ",".join(f"{k}={v}" for k, v in t["attributes"].items())
    return f"{t['proxy']} {t['type']}({attrs}) {t['stream']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.netchaos", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="app row changes per second")
    ap.add_argument("--scale", type=int, default=50, help="initial rows (x2..x5 per table)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--chroma-share", type=float, default=0.1,
                    help="Chroma writes per second as a share of --rate (0: no Chroma); syncd "
                         "reaches the Chroma server through a second proxy")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(2**31)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="syncd-netchaos-"))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"netchaos: {args.minutes:g} min, seed {args.seed}", flush=True)
    try:
        return asyncio.run(run(args))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"FAIL  campaign aborted: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
