"""What capture costs the app: time per write with and without syncd's triggers.

Usage: python bench/trigger_overhead.py [--rows 20000] [--journal wal|delete]

Measures inserts, updates and deletes of ~1 KB rows in an app-shaped table, one
transaction per write (how a web app writes), and in batches of 100 per
transaction, on a fresh SQLite file, then prints microseconds per write.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from syncd.stores.sqlite import capture
from syncd.stores.sqlite.schema import describe

SCHEMA = """CREATE TABLE documents (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, title VARCHAR(200),
content TEXT, metadata JSON, size REAL, created_at DATETIME)"""


def workload(conn: sqlite3.Connection, rows: int, per_tx: int) -> dict[str, float]:
    body = "x" * 1000
    out: dict[str, float] = {}
    for op in ("insert", "update", "delete"):
        start = time.perf_counter()
        for first in range(1, rows + 1, per_tx):
            conn.execute("BEGIN")
            for i in range(first, min(first + per_tx, rows + 1)):
                if op == "insert":
                    conn.execute("INSERT INTO documents VALUES (?, 'u1', 'title', ?, '{\"k\": 1}', 1.5, "
                                 "'2024-01-01 00:00:00')", (i, body))
                elif op == "update":
                    conn.execute("UPDATE documents SET title = 'edited', size = 2.5 WHERE id = ?", (i,))
                else:
                    conn.execute("DELETE FROM documents WHERE id = ?", (i,))
            conn.execute("COMMIT")
        out[op] = (time.perf_counter() - start) / rows * 1e6
    return out


def measure(rows: int, journal: str, per_tx: int, with_capture: bool, runs: int = 3) -> dict[str, float]:
    results: list[dict[str, float]] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            conn = sqlite3.connect(Path(tmp) / "app.sqlite", isolation_level=None)
            conn.execute(f"PRAGMA journal_mode={journal}")
            conn.execute("PRAGMA synchronous=NORMAL" if journal == "wal" else "PRAGMA synchronous=FULL")
            conn.execute(SCHEMA)
            if with_capture:
                capture.install(conn, [describe(conn, "documents", no_primary_key="rowid")])
            results.append(workload(conn, rows, per_tx))
            conn.close()
    return {op: statistics.median(r[op] for r in results) for op in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--journal", default="wal", choices=["wal", "delete"])
    args = ap.parse_args()
    report = {}
    for per_tx in (1, 100):
        base = measure(args.rows, args.journal, per_tx, with_capture=False)
        cap = measure(args.rows, args.journal, per_tx, with_capture=True)
        report[per_tx] = {op: {"without_us": round(base[op], 1), "with_us": round(cap[op], 1),
                               "overhead_us": round(cap[op] - base[op], 1),
                               "ratio": round(cap[op] / base[op], 2)} for op in base}
    print(json.dumps({"rows": args.rows, "journal": args.journal, "sqlite": sqlite3.sqlite_version,
                      "writes_per_transaction": report}, indent=2))


if __name__ == "__main__":
    main()
