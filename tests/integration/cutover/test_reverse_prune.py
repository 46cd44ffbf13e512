"""A reverse stream's prune runs beside its reads without breaking them.

The changelog in PostgreSQL is pruned as a task beside the stream (:mod:`syncd.pruning`),
through the same reader (:mod:`syncd.pg.changelog`). One asyncpg connection serves one
operation at a time: a prune and a read on it at once fail ("another operation is in
progress", or the protocol loses its place), and the stream logs "PostgreSQL unreachable"
and waits its retry delay — a false alarm for the operator and a pause of up to a second
in a rollback's drain.

Real SQLite file, real PostgreSQL, the real daemon and commands as subprocesses, and the
reference app writing to PostgreSQL after the cutover, with the changelog pruned every
half second.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from tests.app import records
from tests.conftest import log_events
from tests.integration.cutover_support import Migration

TABLES = ("users", "documents")


def retries(log: Path, stream: str) -> list[str]:
    return [str(e.get("error")) for e in log_events(log.read_text(errors="replace"), "retrying")
            if e.get("stream") == stream]


def test_the_reverse_stream_reads_and_prunes_without_an_error(tmp_path: Path, pg_dsn: str) -> None:
    m = Migration(tmp_path, pg_dsn)
    try:
        m.start(rate=200)
        time.sleep(0.5)
        assert m.switch("cutover")["ok"]
        time.sleep(6.0)  # the app writes to PostgreSQL; a dozen prunes beside the reverse reads
        m.stop_app()
        m.wait_streaming("postgres→sqlite")
        errors = retries(m.daemon_log, "postgres→sqlite")
        assert not errors, f"the reverse stream failed {len(errors)} times beside its prunes: {errors[:3]}"
        assert _pruned(pg_dsn), "nothing was pruned: the test did not run a prune beside the reads"
        want = records.expected(m.records())
        got = records.read_sqlite(m.db, TABLES)
        problems = records.diff({t: want.get(t, {}) for t in TABLES}, got)
        assert not problems, problems[:5]
    finally:
        m.close()


def _pruned(pg_dsn: str) -> bool:
    """The changelog holds fewer rows than ids were given out: some were pruned."""

    async def look() -> bool:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return bool(await conn.fetchval(
                "SELECT count(*) < (SELECT last_value FROM syncd.changelog_id_seq) FROM syncd.changelog"))
        finally:
            await conn.close()

    return asyncio.run(look())
