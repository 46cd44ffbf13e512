"""How long ``syncd verify`` takes, against pulling every row over the wire.

    .venv/bin/python -m bench.verify_bench                         # the 700k-row app database
    .venv/bin/python -m bench.verify_bench --users 20000 --documents 50000   # a small one

1. the app database (``bench/out/app.sqlite`` when it exists at the asked size, else
   generated into the work directory) is copied by syncd into a fresh PostgreSQL:
   ``init`` + ``run --until-caught-up``;
2. ``syncd verify --json`` (full: counts, chunk checksums in PostgreSQL) and
   ``syncd verify --counts``, each timed with the peak RSS of the process;
3. the baselines, each in its own process: ``pull`` reads every row of every table over
   the wire and drops it (the floor of any row-pulling comparison); ``compare`` is
   :func:`syncd.verify.compare.compare_all`, a row-by-row comparison that pulls every row;
4. ``verify`` and ``pull`` again through a TCP proxy that counts the bytes each way and,
   with ``--mbit`` (default 1000), paces them like a network link of that speed;
5. one value changed in PostgreSQL behind syncd's back, and ``verify`` again: found?

Results go to ``bench/out/verify-<users>-<documents>.json`` and a summary to stderr.

Side by side with another build of syncd (``--against PATH/TO/syncd --runs N``): after
step 1, ``syncd verify --json`` of this tree and of the other build alternate on the same
copy, N runs each, with the load average before each run; rows/s and the ratio of the
medians go to ``bench/out/verify-side-by-side-<users>-<documents>.json``.

Collections (``--collection-items N``, e.g. 100000 with ``--dim 384``):

    .venv/bin/python -m bench.verify_bench --collection-items 100000 --dim 384

1. N clustered float32 vectors (with documents and metadata) are written straight into a
   Chroma persist directory by a ``PersistentClient`` in a child process, which exits;
   then ``chroma run`` serves the directory and syncd copies it (``init`` +
   ``run --until-caught-up``, HNSW index included);
2. ``syncd verify --json --collection C`` without search parity (``--sample-size 0``),
   with it (``--sample-size 100``), and ``--counts``, each timed with its peak RSS;
3. the baseline: pull every row of the pgvector table (id, vector, document, metadata)
   over the wire with asyncpg and drop it;
4. one float of one vector changed in PostgreSQL; verify again: found?

Results go to ``bench/out/verify-chroma-<N>x<dim>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import gen_app_db, pg, syncd_run
from bench.procs import RssSampler, warm_file

OUT = Path(__file__).resolve().parent / "out"
PYTHON = Path(sys.executable)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measured(argv: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run *argv*; its time, peak RSS of the process tree, exit code and stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RssSampler(proc.pid) as rss:
        out, err = proc.communicate(timeout=timeout)
    return {"seconds": round(time.perf_counter() - started, 3), "peak_rss_mb": round(rss.peak / 1e6, 1),
            "returncode": proc.returncode, "stdout": out, "stderr": err[-2000:]}


# --- a byte-counting, pacing TCP proxy in front of the server's unix socket ---------------------

class Proxy:
    """127.0.0.1:<port> -> the server's unix socket; counts bytes, paces them at *mbit* if set."""

    def __init__(self, socket_path: Path, mbit: float | None) -> None:
        self.socket_path, self.mbit = socket_path, mbit
        self.up = self.down = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, down: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if down:
                    self.down += len(data)
                else:
                    self.up += len(data)
                if self.mbit:
                    await asyncio.sleep(len(data) * 8 / (self.mbit * 1e6))
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        await asyncio.gather(self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True))

    def reset(self) -> None:
        self.up = self.down = 0


def proxied_config(setup: syncd_run.Setup, port: int) -> Path:
    """A copy of the config whose target goes through the proxy."""
    text = setup.config.read_text()
    start = text.index('dsn = "') + len('dsn = "')
    end = text.index('"', start)
    database = urlsplit(text[start:end]).path.lstrip("/")
    path = setup.work / "proxied.toml"
    path.write_text(text[:start] + f"postgresql://postgres@127.0.0.1:{port}/{database}" + text[end:])
    return path


# --- baselines (run in a child process: python -m bench.verify_bench --baseline KIND CONFIG) --

async def _pull(dsn: str, tables: list[str]) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    rows = 0
    try:
        async with conn.transaction():
            for t in tables:
                async for _ in conn.cursor(f'SELECT * FROM "{t}"', prefetch=5000):
                    rows += 1
    finally:
        await conn.close()
    return rows


async def _compare(config: Path) -> int:
    from syncd import config as config_mod
    from syncd.pg.connect import connect
    from syncd.stores.postgres.sink import PostgresSink
    from syncd.stores.postgres.tables import plan_table
    from syncd.verify.compare import compare_all
    from syncd.verify.run import discover_tables

    cfg = config_mod.load(config)
    assert cfg.sqlite is not None
    conn = await connect(cfg.target, cfg.target.dsn)
    try:
        mapping = [plan_table(t, cfg.target, await PostgresSink.existing_columns(conn, "public", t.name))
                   for t in discover_tables(cfg)]
        found = await compare_all(str(cfg.sqlite.path), conn, mapping)
    finally:
        await conn.close()
    return sum(len(v) for v in found.values())


def baseline(kind: str, config: Path) -> None:
    from syncd import config as config_mod

    cfg = config_mod.load(config)
    if kind == "pull":
        print(json.dumps({"rows": asyncio.run(_pull(cfg.target.dsn, ["users", "documents"]))}))
    else:
        print(json.dumps({"differences": asyncio.run(_compare(config))}))


# --- the run ---------------------------------------------------------------------------------

def source_db(users: int, documents: int, work: Path) -> Path:
    shipped = OUT / "app.sqlite"
    meta = OUT / "app.json"
    if shipped.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("users") == users and info.get("documents") == documents:
            return shipped
    path = work / "source.sqlite"
    log(f"generating {users:,} users + {documents:,} documents into {path}")
    gen_app_db.generate(path, users, documents)
    return path


def verify_run(config: Path, *args: str) -> dict[str, Any]:
    m = measured([str(syncd_run.SYNCD), "--config", str(config), "verify", "--json", *args])
    if not m["stdout"]:
        raise RuntimeError(f"syncd verify exited {m['returncode']}: {m['stderr']}")
    report = json.loads(m.pop("stdout"))
    m["ok"] = report["ok"]
    m["checks"] = {c["name"]: {k: c[k] for k in ("status", "source_rows", "target_rows", "seconds")}
                   | {"differences": c["differences"][:5]} for c in report["checks"]}
    return m


def baseline_run(kind: str, config: Path) -> dict[str, Any]:
    m = measured([str(PYTHON), "-m", "bench.verify_bench", "--baseline", kind, str(config)])
    m.update(json.loads(m.pop("stdout") or "{}"))
    return m


def over_the_wire(setup: syncd_run.Setup, socket_path: Path, mbit: float | None) -> dict[str, Any]:
    """verify and pull through the proxy: bytes each way, and time at *mbit* (None: unpaced)."""
    proxy = Proxy(socket_path, mbit)
    config = proxied_config(setup, proxy.port)
    out: dict[str, Any] = {"mbit": mbit}
    for name in ("verify_full", "pull"):
        proxy.reset()
        m = verify_run(config) if name == "verify_full" else baseline_run("pull", config)
        out[name] = {"seconds": m["seconds"], "bytes_to_client": proxy.down, "bytes_to_server": proxy.up,
                     "ok": m.get("ok", m["returncode"] == 0)}
    return out


def load() -> float:
    """The 1-minute load average (what else runs on the machine)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def side_by_side(setup: syncd_run.Setup, rows: int, other: Path, runs: int) -> dict[str, Any]:
    """verify of this tree and of *other*, alternating, *runs* each; their times and rows/s."""
    builds = {"this": syncd_run.SYNCD, "other": other}
    out: dict[str, Any] = {"rows": rows, "other": str(other), "runs": {k: [] for k in builds}}
    for i in range(runs):
        for name, exe in (builds.items() if i % 2 == 0 else reversed(builds.items())):
            before = load()
            m = measured([str(exe), "--config", str(setup.config), "verify", "--json"])
            report = json.loads(m["stdout"]) if m["stdout"] else {}
            run = {"seconds": m["seconds"], "rows_per_s": round(rows / m["seconds"]),
                   "peak_rss_mb": m["peak_rss_mb"], "ok": report.get("ok"), "load_before": before,
                   "chunks": {c["name"]: [c.get("chunks"), c.get("chunks_by_row")]
                              for c in report.get("checks", [])}}
            out["runs"][name].append(run)
            log(f"{name}: {m['seconds']:.2f} s ({run['rows_per_s']:,} rows/s), ok={run['ok']}, "
                f"load {before:.2f}")
    med = {k: sorted(r["seconds"] for r in v)[len(v) // 2] for k, v in out["runs"].items()}
    out["median_seconds"] = med
    out["speedup"] = round(med["other"] / med["this"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--mbit", type=float, default=1000.0, help="link speed the proxy paces at")
    ap.add_argument("--work", type=Path, default=OUT / "verify")
    ap.add_argument("--baseline", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--against", type=Path, help="another syncd executable to run verify side by side with")
    ap.add_argument("--runs", type=int, default=3, help="runs of each build with --against")
    ap.add_argument("--collection-items", type=int, default=0,
                    help="benchmark a Chroma collection of this many vectors instead of the app database")
    ap.add_argument("--dim", type=int, default=384, help="dimension of the collection's vectors")
    ap.add_argument("--write-chroma", nargs=3, metavar=("DIR", "N", "DIM"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline:
        baseline(args.baseline[0], Path(args.baseline[1]))
        return 0
    if args.write_chroma:
        write_chroma(Path(args.write_chroma[0]), int(args.write_chroma[1]), int(args.write_chroma[2]))
        return 0
    if args.collection_items:
        return collection_bench(args.collection_items, args.dim)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = source_db(args.users, args.documents, work)
    server = pg.start(work / "pgdata")
    log(f"copying {source} with syncd")
    setup, snap = syncd_run.snapshot(server, source, work / "syncd", "bench_verify")
    rows = sum(snap["source_rows"].values())
    warm_file(setup.sqlite)
    if args.against:
        sbs = side_by_side(setup, rows, args.against, args.runs)
        out = OUT / f"verify-side-by-side-{args.users}-{args.documents}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(sbs, indent=2))
        pg.drop_database(server, "bench_verify")
        log(f"median {sbs['median_seconds']}, speedup {sbs['speedup']}x; results in {out}")
        return 0
    r: dict[str, Any] = {"rows": rows, "source_rows": snap["source_rows"],
                         "snapshot_seconds": round(snap["seconds"], 2)}
    log(f"{rows:,} rows copied in {snap['seconds']:.1f} s; verify (full), then --counts")
    r["verify_full"] = verify_run(setup.config)
    r["verify_counts"] = verify_run(setup.config, "--counts")
    for kind in ("pull", "compare"):
        log(f"baseline: {kind}")
        r[f"baseline_{kind}"] = baseline_run(kind, setup.config)
    socket_path = server.socket_dir / f".s.PGSQL.{server.port}"
    log("through a byte-counting proxy, unpaced, then paced")
    r["wire"] = over_the_wire(setup, socket_path, None)
    r["wire_paced"] = over_the_wire(setup, socket_path, args.mbit)
    server.psql("bench_verify", "UPDATE documents SET score = score + 1e-9 "
                                "WHERE id = (SELECT id FROM documents ORDER BY id OFFSET "
                                f"{snap['source_rows']['documents'] // 2} LIMIT 1)")
    log("one value changed in PostgreSQL; verify again")
    r["verify_one_change"] = verify_run(setup.config)
    out = OUT / f"verify-{args.users}-{args.documents}.json"
    out.write_text(json.dumps(r, indent=2, default=str))
    pg.drop_database(server, "bench_verify")
    print_summary(r, args.mbit)
    log(f"results in {out}")
    return 0


def print_summary(r: dict[str, Any], mbit: float) -> None:
    full, counts = r["verify_full"], r["verify_counts"]
    pull, compare = r["baseline_pull"], r["baseline_compare"]
    wire, paced = r["wire"], r["wire_paced"]
    found = r["verify_one_change"]["checks"]["documents"]["differences"]
    lines = [
        f"{r['rows']:,} rows",
        f"verify (full)      {full['seconds']:8.2f} s  peak RSS {full['peak_rss_mb']:7.1f} MB  "
        f"{wire['verify_full']['bytes_to_client'] / 1e6:9.2f} MB from PostgreSQL",
        f"verify --counts    {counts['seconds']:8.2f} s  peak RSS {counts['peak_rss_mb']:7.1f} MB",
        f"pull every row     {pull['seconds']:8.2f} s  peak RSS {pull['peak_rss_mb']:7.1f} MB  "
        f"{wire['pull']['bytes_to_client'] / 1e6:9.2f} MB from PostgreSQL",
        f"compare.py         {compare['seconds']:8.2f} s  peak RSS {compare['peak_rss_mb']:7.1f} MB",
        f"at {mbit:g} Mbit/s:   verify {paced['verify_full']['seconds']:.2f} s, "
        f"pull every row {paced['pull']['seconds']:.2f} s",
        f"one changed value: {found}",
    ]
    print("\n".join(lines), file=sys.stderr)


# --- collections ------------------------------------------------------------------------------

COLLECTION = "bench_vectors"


def write_chroma(path: Path, n: int, dim: int) -> None:
    """Child process: write *n* vectors into a persist directory with a PersistentClient."""
    import chromadb
    from chromadb.config import Settings

    from bench.chroma_bench import dataset

    data = dataset(n, dim, seed=n + dim)
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    col = client.get_or_create_collection(COLLECTION, embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    batch = 5000
    for start in range(0, n, batch):
        end = min(start + batch, n)
        col.add(ids=[f"id{i:07d}" for i in range(start, end)], embeddings=data[start:end],
                documents=[f"document {i} " + "lorem ipsum " * (i % 20) for i in range(start, end)],
                metadatas=[{"i": i, "topic": i % 97, "lang": ["en", "de", "fr"][i % 3]}
                           for i in range(start, end)])


async def _pull_vectors(dsn: str, table: str) -> int:
    """Every row of the pgvector table over the wire, dropped: the floor of any row-pulling check."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    conn = await asyncpg.connect(dsn)
    try:
        await register_vector(conn)
        n = 0
        async with conn.transaction():
            async for _ in conn.cursor(f'SELECT id, embedding, document, metadata FROM "{table}"',
                                       prefetch=5000):
                n += 1
        return n
    finally:
        await conn.close()


def collection_verify(config: Path, *args: str) -> dict[str, Any]:
    m = measured([str(syncd_run.SYNCD), "--config", str(config), "verify", "--json", "--collection",
                  COLLECTION, *args])
    if not m["stdout"]:
        raise RuntimeError(f"syncd verify exited {m['returncode']}: {m['stderr']}")
    report = json.loads(m.pop("stdout"))
    m["ok"] = report["ok"]
    m["checks"] = {f"{c['kind']}:{c['name']}": {k: c[k] for k in ("status", "source_rows", "target_rows",
                                                                   "seconds", "search", "detail")}
                   | {"differences": c["differences"][:5]} for c in report["checks"]}
    return m


def collection_bench(n: int, dim: int) -> int:
    import shutil
    import signal

    from bench.chroma_bench import start_chroma

    work = (OUT / f"verify-chroma-{n}x{dim}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    r: dict[str, Any] = {"items": n, "dim": dim, "space": "cosine"}
    log(f"writing {n:,} x {dim} vectors into a Chroma persist directory")
    began = time.perf_counter()
    subprocess.run([str(PYTHON), "-m", "bench.verify_bench", "--write-chroma", str(work / "chroma"), str(n),
                    str(dim)], check=True)
    r["chroma_write_seconds"] = round(time.perf_counter() - began, 1)
    server = pg.start(work / "pgdata")
    database = "bench_verify_chroma"
    server.psql(pg.ADMIN_DB, f"DROP DATABASE IF EXISTS {database}")
    server.psql(pg.ADMIN_DB, f"CREATE DATABASE {database}")
    dsn = server.dsn(database)
    port = syncd_run.free_port()
    chroma = start_chroma(work / "chroma", port)
    try:
        cfg = work / "syncd.toml"
        cfg.write_text(f'[source.chroma]\nurl = "http://127.0.0.1:{port}"\npath = "{work / "chroma"}"\n\n'
                       f'[target]\ndsn = "{dsn}"\ncommand_timeout = 3600\n\n'
                       f'[state]\ndir = "{work / "state"}"\n\n'
                       '[stream]\nbatch_size = 2000\n\n[health]\nlisten = "127.0.0.1:0"\n')
        syncd_cmd = [str(syncd_run.SYNCD), "--config", str(cfg)]
        subprocess.run([*syncd_cmd, "init"], check=True, capture_output=True)
        log("syncd run --until-caught-up (snapshot and HNSW index)")
        began = time.perf_counter()
        subprocess.run([*syncd_cmd, "run", "--until-caught-up"], check=True, capture_output=True)
        r["sync_seconds"] = round(time.perf_counter() - began, 1)
        log("verify without search parity, with it, and --counts")
        r["verify_full_no_search"] = collection_verify(cfg, "--sample-size", "0")
        r["verify_full_search100"] = collection_verify(cfg, "--sample-size", "100")
        r["verify_counts"] = collection_verify(cfg, "--counts")
        log("baseline: pull every row of the table")
        began = time.perf_counter()
        pulled = asyncio.run(_pull_vectors(dsn, COLLECTION))
        r["baseline_pull"] = {"seconds": round(time.perf_counter() - began, 3), "rows": pulled}
        server.psql(database, f"UPDATE {COLLECTION} SET embedding = (SELECT array_agg(CASE WHEN i = 7 "
                              "THEN x + 0.001 ELSE x END ORDER BY i)::real[]::vector "
                              "FROM unnest(embedding::real[]) WITH ORDINALITY u(x, i)) "
                              f"WHERE id = 'id{n // 2:07d}'")
        log("one float of one vector changed in PostgreSQL; verify again")
        r["verify_one_change"] = collection_verify(cfg, "--sample-size", "0")
    finally:
        chroma.send_signal(signal.SIGTERM)
        chroma.wait(timeout=60)
    out = OUT / f"verify-chroma-{n}x{dim}.json"
    out.write_text(json.dumps(r, indent=2, default=str))
    pg.drop_database(server, database)
    search = r["verify_full_search100"]["checks"][f"search:{COLLECTION}"]["search"]
    log(f"verify (no search) {r['verify_full_no_search']['seconds']:.1f} s, "
        f"peak RSS {r['verify_full_no_search']['peak_rss_mb']:.0f} MB; with 100 queries "
        f"{r['verify_full_search100']['seconds']:.1f} s; --counts {r['verify_counts']['seconds']:.2f} s; "
        f"pull every row {r['baseline_pull']['seconds']:.1f} s; search {search}")
    log(f"one change: {r['verify_one_change']['checks'][f'collection:{COLLECTION}']['differences']}")
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
