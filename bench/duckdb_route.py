"""The copy a user would pick instead of syncd: DuckDB's ``sqlite`` and ``postgres``
extensions (``../shared/research/duckdb-anchor.md``), then the same keys, indexes and foreign
key as the ceiling (:data:`bench.schema.CONSTRAINTS`).

    python -m bench.duckdb_route SQLITE DSN     # one copy, timed from process start; JSON out

Needs the ``bench`` extra (``pip install -e '.[bench]'``: ``duckdb`` 1.5.5 and the matching
extension wheels); no network: the extensions are loaded from the wheels' files, under the
names DuckDB looks their entry points up by. Types come out as DuckDB makes them (JSON →
varchar, BOOLEAN → bigint, DATETIME → timestamp): a faster but weaker copy than syncd's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import run_measured, warm_file
from bench.schema import CONSTRAINTS, TABLES


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("duckdb", "duckdb_extension_sqlite", "duckdb_extension_postgres"))


def _extensions(directory: Path) -> list[Path]:
    """The two extension files, copied under the names DuckDB loads them by."""
    import duckdb_extension_postgres
    import duckdb_extension_sqlite

    out = []
    for module, name in ((duckdb_extension_sqlite, "sqlite"), (duckdb_extension_postgres, "postgres")):
        found = next(Path(module.__file__).parent.rglob(f"{name}.duckdb_extension"))
        target = directory / f"{name}_scanner.duckdb_extension"
        shutil.copyfile(found, target)
        out.append(target)
    return out


def copy(sqlite_path: Path, dsn: str) -> dict[str, Any]:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False})
        for ext in _extensions(Path(tmp)):
            con.execute(f"LOAD '{ext}'")
        con.execute(f"ATTACH '{sqlite_path}' AS s (TYPE sqlite, READ_ONLY)")
        con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres)")
        started = time.perf_counter()
        for table in TABLES:
            con.execute(f"CREATE TABLE pg.public.{table} AS SELECT * FROM s.{table}")
        copied = time.perf_counter()
        for sql in CONSTRAINTS:
            con.execute("CALL postgres_execute('pg', ?)", [sql])
        done = time.perf_counter()
        types = con.execute(
            "SELECT * FROM postgres_query('pg', $$SELECT table_name || '.' || column_name, data_type "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1$$)").fetchall()
        con.close()
    return {"copy_seconds": copied - started, "constraints_seconds": done - copied,
            "types": {name: kind for name, kind in types}}


def run(server: pg.Server, sqlite_path: Path, database: str, log: Path) -> dict[str, Any]:
    """One copy into a fresh *database* (dropped after), in its own process: wall time from
    process start to exit and peak RSS, as syncd's snapshot is timed."""
    dsn = pg.recreate_database(server, database)
    warm_file(sqlite_path)
    pg.checkpoint(server)
    measured = run_measured([sys.executable, "-m", "bench.duckdb_route", str(sqlite_path), dsn], log,
                            timeout=3600).check()
    pg.drop_database(server, database)
    inner: dict[str, Any] = json.loads(log.read_text().strip().splitlines()[-1])
    return {"seconds": measured.seconds, "peak_rss": measured.peak_rss, **inner}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.duckdb_route SQLITE DSN", file=sys.stderr)
        return 2
    if not available():
        print("duckdb is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    result = copy(Path(args[0]), args[1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
