"""The connection is lost while syncd re-opens its target after a retry: it retries again.

Found by the network campaign (bench/netchaos.py, docs/reliability.md): a connection cut during
the queries that follow the connect in the forward stream's ``open_sink`` (counting the open
rejects) let the raw driver error out of the stream, and ``syncd run`` exited 1. Here the cut
is made certain: ``syncd.rejects`` becomes a view whose first read after a flag is set ends its
own session (``pg_terminate_backend(pg_backend_pid())``), and the test then ends syncd's
connections, so that the stream re-opens and reads it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.conftest import run_syncd
from tests.workload import Daemon, Writer, create_database, differences, wait_caught_up, write_config

CUT = """
CREATE SEQUENCE syncd.cut_seq;
ALTER TABLE syncd.rejects RENAME TO rejects_t;
CREATE FUNCTION syncd.cut_once() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('syncd.cut_seq') = 1 THEN  -- a sequence: not undone with the session's transaction
        PERFORM pg_terminate_backend(pg_backend_pid());
    END IF;
    RETURN true;
END $$;
CREATE VIEW syncd.rejects AS SELECT * FROM syncd.rejects_t WHERE syncd.cut_once();
INSERT INTO syncd.rejects_t (stream, object, key, error, resolved_at)
    VALUES ('sqlite', 'none', '[]', 'a row for the view to read', NULL);
"""


async def test_connection_cut_while_reopening_the_target(tmp_path: Path, pg_dsn: str,
                                                         pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    create_database(db)
    app = Writer(db, 7, parent_key_changes=False, full_precision_reals=False)
    app.populate(users=20, documents=50, tags=50, orders=20, audit=20, settings=10, sessions=20)
    config = write_config(tmp_path / "syncd.toml", sqlite=db, dsn=pg_dsn, state_dir=tmp_path / "state",
                          retry_max_seconds=1.0)
    run_syncd("--config", str(config), "init")
    daemon = Daemon(config, tmp_path / "daemon.log")
    try:
        await wait_caught_up(pg, db, daemon)
        await pg.execute(CUT)
        await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'syncd' AND pid <> pg_backend_pid()")
        for _ in range(50):
            app.transaction()
        deadline = asyncio.get_running_loop().time() + 60
        while not await pg.fetchval("SELECT is_called FROM syncd.cut_seq"):
            daemon.ensure_alive()
            assert asyncio.get_running_loop().time() < deadline, "the cut never fired"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        daemon.ensure_alive()  # it retried: the stream did not crash
        await wait_caught_up(pg, db, daemon)
        assert await differences(db, pg) == []
        assert await daemon.terminate() == 0, daemon.tail()
    finally:
        app.close()
        if daemon.alive:
            daemon.kill()
