"""What capture costs the app: time per write with and without syncd's triggers.

Usage: python -m bench.trigger_overhead [--rows 4000] [--full-rows 400] [--runs 3]
       [--journal wal delete] [--per-tx 1 10] [--autoincrement]

Inserts, then updates, then deletes *rows* ~1 KB rows of an app-shaped table, *per-tx* writes
per transaction (1: how a web app writes), on fresh SQLite files side by side: one without
capture, one with syncd's triggers (``--autoincrement``: a third, whose changelog is
``AUTOINCREMENT`` as installs by older versions have it). They are driven in turns of 20
transactions (which one goes first alternates), so that all see the same load on a shared
machine; each run uses new files and each configuration runs *runs* times. WAL runs with
``synchronous=NORMAL``, the rollback journal (``delete``) with ``synchronous=FULL`` and *full-
rows* rows (each commit waits for an fsync). Prints microseconds per write (wall clock, and the
process's CPU time, which other load on a shared machine disturbs less), the ratio with /
without per run and its median, the median CPU-time ratio, and the load average before and
after each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from syncd.stores.sqlite import capture
from syncd.stores.sqlite.schema import describe

SCHEMA = """CREATE TABLE documents (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, title VARCHAR(200),
content TEXT, metadata JSON, size REAL, created_at DATETIME)"""
OPS = ("insert", "update", "delete")
TURN = 20  # transactions per turn
Installer = Callable[[sqlite3.Connection], None]


def install_capture(conn: sqlite3.Connection) -> None:
    capture.install(conn, [describe(conn, "documents", no_primary_key="rowid")])


def install_autoincrement(conn: sqlite3.Connection) -> None:
    """Capture into a changelog as syncd made it before: ``AUTOINCREMENT`` (every logged row
    also rewrites the changelog's row in ``sqlite_sequence``)."""
    install_capture(conn)  # (an install makes an AUTOINCREMENT changelog plain: swapped after)
    conn.execute(f"DROP TABLE {capture.CHANGELOG}")
    conn.execute(f"CREATE TABLE {capture.CHANGELOG} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, row TEXT, ts REAL NOT NULL)")


def open_db(path: Path, journal: str, install: Installer | None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("PRAGMA synchronous=NORMAL" if journal == "wal" else "PRAGMA synchronous=FULL")
    conn.execute(SCHEMA)
    if install is not None:
        install(conn)
    return conn


def write(conn: sqlite3.Connection, op: str, ids: range, per_tx: int) -> tuple[float, float]:
    """Seconds to write *ids* with *op*, *per_tx* writes per transaction: wall clock and the
    process's CPU time."""
    body = "x" * 1000
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(ids.start, ids.stop, per_tx):
        conn.execute("BEGIN")
        for i in range(first, min(first + per_tx, ids.stop)):
            if op == "insert":
                conn.execute("INSERT INTO documents VALUES (?, 'u1', 'title', ?, '{\"k\": 1}', 1.5, "
                             "'2024-01-01 00:00:00')", (i, body))
            elif op == "update":
                conn.execute("UPDATE documents SET title = 'edited', size = 2.5 WHERE id = ?", (i,))
            else:
                conn.execute("DELETE FROM documents WHERE id = ?", (i,))
        conn.execute("COMMIT")
    return time.perf_counter() - start, time.process_time() - cpu


def run_once(variants: dict[str, Installer | None], journal: str, rows: int, per_tx: int,
             flip: bool) -> dict[str, dict[str, tuple[float, float]]]:
    """µs per write (wall clock, CPU), by variant and op, the variants' files written in turns."""
    spent = {name: {op: [0.0, 0.0] for op in OPS} for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        order = list(variants) if not flip else list(reversed(variants))
        conns = {name: open_db(Path(tmp) / f"{name}.sqlite", journal, variants[name]) for name in order}
        step = TURN * per_tx
        for op in OPS:
            for n, first in enumerate(range(1, rows + 1, step)):
                ids = range(first, min(first + step, rows + 1))
                turn = order if n % 2 == 0 else list(reversed(order))
                for name in turn:
                    wall, cpu = write(conns[name], op, ids, per_tx)
                    spent[name][op][0] += wall
                    spent[name][op][1] += cpu
        for conn in conns.values():
            conn.close()
    return {name: {op: (s[0] / rows * 1e6, s[1] / rows * 1e6) for op, s in ops.items()}
            for name, ops in spent.items()}


def compare(variants: dict[str, Installer | None], journal: str, rows: int, per_tx: int,
            runs: int, base: str = "without") -> dict[str, object]:
    load_before = os.getloadavg()
    results = [run_once(variants, journal, rows, per_tx, flip=bool(r % 2)) for r in range(runs)]
    out: dict[str, object] = {"load_before": [round(x, 2) for x in load_before]}
    for op in OPS:
        entry: dict[str, object] = {}
        for name in variants:
            entry[f"{name}_us"] = round(statistics.median(r[name][op][0] for r in results), 1)
            entry[f"{name}_cpu_us"] = round(statistics.median(r[name][op][1] for r in results), 1)
            if name != base:
                ratios = [r[name][op][0] / r[base][op][0] for r in results]
                entry[f"{name}_ratio"] = round(statistics.median(ratios), 3)
                entry[f"{name}_ratios"] = [round(x, 3) for x in ratios]
                entry[f"{name}_cpu_ratio"] = round(statistics.median(
                    r[name][op][1] / r[base][op][1] for r in results), 3)
        out[op] = entry
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4000, help="rows per run, WAL")
    ap.add_argument("--full-rows", type=int, default=400, help="rows per run, rollback journal")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--journal", nargs="+", default=["wal", "delete"], choices=["wal", "delete"])
    ap.add_argument("--per-tx", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--autoincrement", action="store_true",
                    help="also capture into an AUTOINCREMENT changelog (as older installs have)")
    args = ap.parse_args()
    variants: dict[str, Installer | None] = {"without": None, "with": install_capture}
    if args.autoincrement:
        variants["with_autoincrement"] = install_autoincrement
    report: dict[str, object] = {}
    for journal in args.journal:
        rows = args.rows if journal == "wal" else args.full_rows
        for per_tx in args.per_tx:
            report[f"{journal}, {per_tx} per transaction"] = compare(variants, journal, rows, per_tx,
                                                                      args.runs)
    print(json.dumps({"sqlite": sqlite3.sqlite_version, "rows": args.rows, "full_rows": args.full_rows,
                      "runs": args.runs, "results": report}, indent=1))


if __name__ == "__main__":
    main()
