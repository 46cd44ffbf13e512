"""The snapshot's SQLite side alone: every chunk of one table as ``SqliteSource`` reads it, no
conversion, no PostgreSQL — to compare two builds' paging without PostgreSQL's share (and its
noise on a shared machine).

    python -m bench.snapshot_read bench/out/snapshot_ab/app-200000-500000.sqlite documents

Run it once per build (``PYTHONPATH=/path/to/other/tree``), alternating; it prints one JSON
line: rows, chunks, seconds, the load average before. Give it a database that ``syncd init``
has run on (the rowid pager reads the changelog); a copy is made and left untouched otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from syncd.config import SqliteConfig
from syncd.stores.sqlite.source import SqliteSource


async def read_all(path: Path, table: str, rows: int) -> dict[str, float]:
    source = await SqliteSource.open(SqliteConfig(path=path), check_capture=False)
    try:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        n = chunks = 0
        async for chunk in source.snapshot_chunks(table, None, rows):
            n += len(chunk.rows)
            chunks += 1
        return {"rows": n, "chunks": chunks, "seconds": round(time.perf_counter() - started, 3),
                "load_before": round(load, 2)}
    finally:
        await source.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("database", type=Path)
    ap.add_argument("table")
    ap.add_argument("--chunk-rows", type=int, default=5000)
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(read_all(args.database, args.table, args.chunk_rows))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
