"""Chroma's catalog changes while PostgreSQL is unreachable: a collection renamed, one deleted,
one created. syncd notices each at its next poll but cannot touch PostgreSQL then; once the
target is back it must do each (rename the table, retire the deleted one's, copy the new
one) and every Chroma stream must stream again.

Found by the kill campaign with side collections (``python -m bench.chaos --chroma-lifecycle``):
a catalog change met a PostgreSQL crash, the catalog follower's connection error ended the
task that runs every Chroma stream, and the daemon went on with all of them stopped — alive,
the SQLite stream current, nothing more copied from Chroma until it was restarted.

Through the real command line (syncd reaches PostgreSQL through the Toxiproxy proxy of the
fault tests); PostgreSQL and Chroma are read back directly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.conftest import run_syncd
from tests.faults.conftest import Net, until
from tests.faults.test_network import app_database, ready, seed
from tests.integration.chroma_support import ChromaServer, collection, run_chroma

DIM = 8


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


def add(col: Any, prefix: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [f"{prefix}{i}" for i in range(n)]
    col.add(ids=ids, embeddings=vectors, documents=[f"doc {i}" for i in ids])
    return dict(zip(ids, vectors, strict=True))


async def test_catalog_changes_while_postgresql_is_away_are_done_once_it_is_back(
        net: Net, chroma: ChromaServer) -> None:
    rng = np.random.default_rng(7)
    app_database(net.db, seed())
    client = chroma.client()
    keep, renamed, deleted = (collection(client, n) for n in ("keep_me", "rename_me", "delete_me"))
    want = {"keep_me": add(keep, "k", 20, rng), "rename_me": add(renamed, "r", 20, rng)}
    add(deleted, "d", 20, rng)
    text = net.config.read_text()
    net.config.write_text(f'[source.chroma]\nurl = "{chroma.url}"\npath = "{chroma.path}"\n\n{text}')
    run_syncd("--config", str(net.config), "init")
    daemon = net.start_daemon()
    await ready(net, daemon)

    net.proxy.disable()
    renamed.modify(name="renamed_now")
    want["renamed_now"] = want.pop("rename_me")
    client.delete_collection("delete_me")
    born = collection(client, "born_in_outage")
    want["born_in_outage"] = add(born, "b", 20, rng)
    want["keep_me"] |= add(keep, "k2-", 10, rng)
    await asyncio.sleep(3.0)  # several polls of the catalog while PostgreSQL is away
    daemon.ensure_alive()
    net.proxy.enable()

    async def streaming() -> bool:
        code, body = await net.health.get("/status")
        phases = {s["name"]: s["phase"] for s in body.get("streams", [])} if code == 200 else {}
        chroma_streams = [p for n, p in phases.items() if n.startswith("chroma:")]
        return len(chroma_streams) == 3 and all(p == "streaming" for p in chroma_streams)

    await until(streaming, within=60, what="the three Chroma streams streaming again", daemon=daemon)
    await ready(net, daemon, within=60)

    async def tables() -> dict[str, int]:
        rows = await net.pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        out = {}
        for n in {r[0] for r in rows}:
            if n in want or n.startswith(("rename_me", "delete_me")):
                try:
                    out[n] = int(await net.pg.fetchval(f'SELECT count(*) FROM "{n}"'))
                except asyncpg.UndefinedTableError:
                    pass  # renamed or retired by syncd since the listing: the next look sees it
        return out

    async def done() -> dict[str, int] | None:
        have = await tables()
        return have if all(have.get(n) == len(items) for n, items in want.items()) else None

    await until(done, within=60, what="every collection's items in its table", daemon=daemon)
    have = await tables()
    assert "rename_me" not in have, have  # renamed with its collection, not left under the old name
    assert "delete_me" not in have and any(n.startswith("delete_me__deleted_") for n in have), have
    for name, items in want.items():
        rows = await net.pg.fetch(f'SELECT id, embedding::text AS v FROM "{name}"')
        got = {r["id"]: np.array([np.float32(x) for x in r["v"][1:-1].split(",")], dtype=np.float32)
               for r in rows}
        assert set(got) == set(items), name
        assert all(np.array_equal(got[i].view(np.int32), v.view(np.int32)) for i, v in items.items()), name
    assert await daemon.terminate() == 0, daemon.tail()
