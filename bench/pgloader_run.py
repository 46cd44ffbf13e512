"""Time pgloader (the Debian package) loading the SQLite file into an empty database.

Two variants:

* ``default``: ``pgloader sqlite:///path postgresql://...``, what an operator would type.
  pgloader then chooses its own types (json, timestamptz, real, text instead of varchar).
* ``typed``: a load file whose CAST rules produce the same types as the COPY ceiling and
  syncd (jsonb, timestamp, double precision, varchar(n)), so the server does the same work.

The embedded server listens on a unix socket only; pgloader reaches it with its
``postgresql://user@unix:/socket/dir:port/db`` syntax.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import run_measured, warm_file
from bench.schema import TABLES

TYPED_LOAD = """LOAD DATABASE
  FROM sqlite://{sqlite}
  INTO {target}
 WITH include drop, create tables, create indexes, reset sequences
 CAST type datetime to timestamp drop typemod,
      type json to jsonb drop typemod,
      type real to "double precision" drop typemod using float-to-string,
      type varchar to varchar keep typemod
;
"""

# SBCL's default 1 GB heap is exhausted on the 700k-row database ("Heap exhausted, game
# over"); the Debian binary accepts the runtime option as its first argument.
HEAP_MB = 4096

_ERRORS = re.compile(r"Total import time\s+(\S+)\s+(\d+)")


def installed() -> str | None:
    return shutil.which("pgloader")


def run(server: pg.Server, sqlite_path: Path, out_dir: Path, *, variant: str = "default",
        heap_mb: int = HEAP_MB, time_limit: float = 900.0) -> dict[str, Any]:
    """Load *sqlite_path* (absolute) into a fresh database; time, peak RSS, what it created."""
    exe = installed()
    if exe is None:
        return {"error": "pgloader is not installed (apt-get install -y pgloader)"}
    database = f"bench_pgloader_{variant}"
    pg.recreate_database(server, database)
    target = server.pgloader_url(database)
    work = (out_dir / f"pgloader-{variant}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    argv = [exe, "--dynamic-space-size", str(heap_mb), "--root-dir", str(work)]
    if variant == "default":
        argv += [f"sqlite://{sqlite_path}", target]
    else:
        load_file = work / "load.pgl"
        load_file.write_text(TYPED_LOAD.format(sqlite=sqlite_path, target=target))
        argv += [str(load_file)]
    warm_file(sqlite_path)
    pg.checkpoint(server)
    result = run_measured(argv, out_dir / f"pgloader-{variant}.log", timeout=time_limit).check()
    summary = _ERRORS.search(result.log.read_text(errors="replace"))
    described = pg.describe(server, database, TABLES)
    pg.drop_database(server, database)
    return {
        "variant": variant,
        "argv": argv,
        "seconds": result.seconds,
        "peak_rss": result.peak_rss,
        "errors": summary.group(1) if summary else None,
        **described,
    }
