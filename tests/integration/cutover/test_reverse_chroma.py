"""pgvector → Chroma (after the cutover): real PostgreSQL + pgvector, real Chroma.

The forward side is set up by syncd itself (`syncd init`, `syncd run --until-caught-up`);
the app then writes to PostgreSQL, and the reverse streams must bring every write into
Chroma exactly (float32 bits, documents, metadata with lifted columns folded back),
survive a SIGKILL between the Chroma write and the checkpoint, pass the Chroma fence
that stops the app, and never bounce a write back into PostgreSQL through the forward
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from syncd.config import Config, load
from syncd.model import Position
from syncd.pg import capture as pg_capture
from syncd.pg import changelog
from syncd.stores.chroma import fence as chroma_fence
from syncd.stores.pgvector.source import parse_vector
from syncd.streams.pgvector_to_chroma import (
    install_reverse_capture,
    open_reverse_chroma_streams,
    reverse_pending,
    reverse_stream_name,
    set_reverse_checkpoints,
)
from tests.conftest import REPO, run_syncd
from tests.integration.chroma_support import (
    ChromaServer,
    chroma_items,
    collection,
    run_chroma,
    start_daemon,
    stop_daemon,
    wait_until,
    write_config,
)

DIM = 4
MAPPED = """
[[target.collections]]
name = "notes"
table = "notes_vec"
columns = { user_id = "metadata.userId", content = "document" }
"""


def vecs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype(np.float32)


async def app_conn(dsn: str) -> asyncpg.Connection:
    """The app's own connection to PostgreSQL (not tagged as syncd's: its writes are captured)."""
    conn = await asyncpg.connect(dsn)
    await register_vector(conn)
    return conn


async def forward(tmp_path: Path, pg_dsn: str, *, path: Path, url: str | None, extra: str = "") -> Config:
    """Copy Chroma into pgvector with syncd, then prepare the reverse streams as the cutover does."""
    cfg = write_config(tmp_path, pg_dsn, path=path, url=url, extra=extra)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up", timeout=120)
    config = load(cfg)
    assert await install_reverse_capture(config, pg_dsn)
    names = await set_reverse_checkpoints(config, pg_dsn, 0)
    assert names and all(n.startswith("pgvector→chroma:") for n in names)
    return config


async def changelog_head(pg: asyncpg.Connection) -> int:
    return int(await pg.fetchval("SELECT coalesce(max(id), 0) FROM syncd.changelog"))


@contextlib.asynccontextmanager
async def reverse_running(config: Config, dsn: str, **kw: Any) -> AsyncIterator[list[Any]]:
    streams = await open_reverse_chroma_streams(config, dsn, **kw)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in streams]
    try:
        yield tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await streams.close()


async def drained(config: Config, pg: asyncpg.Connection) -> None:
    """Every reverse stream checkpointed the changelog's head."""
    head = await changelog_head(pg)
    rows = await pg.fetch(
        "SELECT stream, position FROM syncd.checkpoints WHERE stream LIKE 'pgvector→chroma:%'")
    assert rows and all(r["position"] >= head for r in rows), (head, [dict(r) for r in rows])
    assert await reverse_pending(config, pg) == []


async def pg_items(pg: asyncpg.Connection, table: str, *, doc: str = "document",
                   lifted: dict[str, str] | None = None) -> dict[str, tuple[np.ndarray, str | None, Any]]:
    """Rows as (float32 vector, document, metadata with lifted columns folded back)."""
    lifted = lifted or {}
    cols = "".join(f', "{c}"' for c in lifted)
    out = {}
    for r in await pg.fetch(f'SELECT id, embedding, "{doc}", metadata::text{cols} FROM "{table}"'):
        meta = json.loads(r[3]) if r[3] else {}
        for col, key in lifted.items():
            if r[col] is not None:
                meta[key] = r[col]
        out[r["id"]] = (r["embedding"].to_numpy(), r[doc], meta or None)
    return out


def assert_exact(pg: dict[str, Any], chroma: dict[str, Any]) -> None:
    assert sorted(pg) == sorted(chroma), (sorted(set(pg) ^ set(chroma)))
    for item_id, (vec, doc, meta) in pg.items():
        c_vec, c_doc, c_meta = chroma[item_id]
        assert c_doc == doc, (item_id, c_doc, doc)
        assert (c_meta or None) == meta, (item_id, c_meta, meta)
        assert np.array_equal(c_vec.view(np.int32), vec.view(np.int32)), (item_id, c_vec, vec)


# --- to_jsonb keeps the bits -------------------------------------------------------------------

async def test_vectors_survive_the_changelog_bit_for_bit(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """to_jsonb(vector) is its text form; float32 (and halfvec's float16) values come back exactly."""
    await pg.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await register_vector(pg)
    await pg.execute("CREATE TABLE v (id text PRIMARY KEY, embedding vector(16), half halfvec(16))")
    await pg_capture.install(pg, "public", ["v"])
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 2**32, size=(1500, 16), dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3, -0.0,
                        2.0, 1e-7, 123456.789, 7e-40, 1.5, -2.5e-10, 65504.0, 6e-8], dtype=np.float32)
    vectors = np.vstack([raw, special[None, :]])
    vectors[~np.isfinite(vectors)] = 1.0
    with np.errstate(over="ignore"):
        halves = vectors.astype(np.float16)
    halves[~np.isfinite(halves)] = 0.5
    await pg.executemany("INSERT INTO v VALUES ($1, $2, $3)",
                         [(f"k{i}", vectors[i], halves[i].astype(np.float32)) for i in range(len(vectors))])
    texts = await pg.fetch("""SELECT pk->>0 AS id, "row"->>'embedding' AS e, "row"->>'half' AS h,
                                     jsonb_typeof("row"->'embedding') AS kind FROM syncd.changelog""")
    assert {r["kind"] for r in texts} == {"string"} and texts[0]["e"].startswith("[")
    for r in texts:
        i = int(r["id"][1:])
        assert np.array_equal(parse_vector(r["e"]).view(np.int32), vectors[i].view(np.int32)), r["e"]
        assert np.array_equal(parse_vector(r["h"]), halves[i].astype(np.float32)), r["h"]

    async def reader_conn() -> asyncpg.Connection:
        conn = await asyncpg.connect(pg_dsn)
        await register_vector(conn)
        return conn

    reader = changelog.ChangeReader(reader_conn, "public")
    try:
        rows: list[changelog.LogRow] = []
        for _ in range(50):
            rows += await reader.read(Position(rows[-1].position.offset if rows else 0), 5000, ["v"])
            if len(rows) == len(vectors):
                break
            await asyncio.sleep(0.05)
    finally:
        await reader.close()
    assert len(rows) == len(vectors)
    for row in rows:
        i = int(str(row.key[0])[1:])
        assert row.row is not None
        got = parse_vector(row.row["embedding"])
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), vectors[i].view(np.int32))
        assert np.array_equal(parse_vector(row.row["half"]), halves[i].astype(np.float32))


# --- every write reaches Chroma ------------------------------------------------------------------

@pytest.fixture
def chroma(tmp_path: Path) -> Any:
    with run_chroma(tmp_path / "chroma") as server:
        yield server


async def test_writes_in_pgvector_reach_chroma_exactly(tmp_path: Path, chroma: ChromaServer, pg_dsn: str,
                                                       pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(11)
    client = chroma.client()
    docs, notes = collection(client, "docs"), collection(client, "notes")
    docs.add(ids=[f"d{i}" for i in range(6)], embeddings=vecs(rng, 6),
             documents=[f"doc {i}" for i in range(6)],
             metadatas=[{"n": i, "tag": "x", "f": 0.5} for i in range(6)])
    notes.add(ids=[f"n{i}" for i in range(4)], embeddings=vecs(rng, 4),
              documents=[f"note {i}" for i in range(4)],
              metadatas=[{"userId": f"u{i}", "k": i} for i in range(4)])
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url, extra=MAPPED)
    app = await app_conn(pg_dsn)
    try:
        v = vecs(rng, 8)
        await app.execute("INSERT INTO docs (id, embedding, document, metadata) VALUES ($1, $2, $3, $4)",
                          "d100", v[0], "new doc", json.dumps({"n": 100, "arr": [1, 2], "ok": True}))
        await app.execute("UPDATE docs SET embedding = $1 WHERE id = 'd0'", v[1])
        await app.execute("UPDATE docs SET document = 'changed' WHERE id = 'd1'")
        await app.execute(
            """UPDATE docs SET metadata = '{"n": 2, "added": "yes", "f": 2.0}' WHERE id = 'd2'""")
        await app.execute("UPDATE docs SET document = NULL, metadata = NULL WHERE id = 'd3'")
        await app.execute("DELETE FROM docs WHERE id = 'd4'")
        await app.execute("UPDATE docs SET embedding = $1 WHERE id = 'd5'", v[2])
        await app.execute("UPDATE docs SET embedding = $1, document = 'twice' WHERE id = 'd5'", v[3])
        # a value Chroma cannot store: rejected with the raw row, the stream goes on
        await app.execute("INSERT INTO docs (id, embedding, metadata) VALUES ('bad', $1, $2)", v[4],
                          json.dumps({"nested": {"a": 1}}))
        await app.execute("UPDATE notes_vec SET user_id = 'u9', content = 'moved' WHERE id = 'n0'")
        await app.execute("UPDATE notes_vec SET user_id = NULL WHERE id = 'n1'")
        await app.execute("""INSERT INTO notes_vec (id, embedding, content, metadata, user_id)
                             VALUES ('n100', $1, 'fresh', '{"k": 5}', 'u100')""", v[5])
        await app.execute("DELETE FROM notes_vec WHERE id = 'n2'")
    finally:
        await app.close()
    async with reverse_running(config, pg_dsn):
        await wait_until(lambda: drained(config, pg), 90)
    await register_vector(pg)
    want_docs = {k: x for k, x in (await pg_items(pg, "docs")).items() if k != "bad"}
    assert_exact(want_docs, chroma_items(docs))
    assert_exact(await pg_items(pg, "notes_vec", doc="content", lifted={"user_id": "userId"}),
                 chroma_items(notes))
    got = chroma_items(docs)
    assert got["d1"][1] == "changed" and got["d3"][1] is None and got["d3"][2] is None
    assert got["d2"][2] == {"n": 2, "added": "yes", "f": 2.0} and isinstance(got["d2"][2]["f"], float)
    assert chroma_items(notes)["n1"][2] == {"k": 1}
    reject = await pg.fetchrow("SELECT stream, key::text, row_image::text, error FROM syncd.rejects")
    assert reject["stream"] == reverse_stream_name(str(docs.id))
    assert "nested" in reject["error"] and '"bad"' in reject["key"] and "nested" in reject["row_image"]


# --- crash between the Chroma write and the checkpoint --------------------------------------------

KILLER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from syncd.config import load
    from syncd.streams.pgvector_to_chroma import open_reverse_chroma_streams

    async def main() -> None:
        async def die(batch) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        streams = await open_reverse_chroma_streams(load(Path(sys.argv[1])), sys.argv[2], after_write=die)
        stop = asyncio.Event()
        await asyncio.gather(*(s.run(stop) for s in streams))

    asyncio.run(main())
""")


def queue_head(path: Path) -> int:
    db = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT max(seq_id) FROM embeddings_queue").fetchone()[0])
    finally:
        db.close()


def queue_rows(path: Path, ids: list[str]) -> dict[str, int]:
    db = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, count(*) FROM embeddings_queue "
                          "WHERE id IN (SELECT value FROM json_each(?)) GROUP BY id",
                          (json.dumps(ids),)).fetchall()
    finally:
        db.close()
    return {r[0]: r[1] for r in rows}


async def test_sigkill_between_chroma_write_and_checkpoint_converges(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(5)
    docs = collection(chroma.client(), "docs")
    docs.add(ids=["a", "b"], embeddings=vecs(rng, 2), documents=["a", "b"])
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    app = await app_conn(pg_dsn)
    v = vecs(rng, 3)
    await app.execute("INSERT INTO docs (id, embedding, document) VALUES ('c', $1, 'c')", v[0])
    await app.execute("UPDATE docs SET embedding = $1, metadata = '{\"m\": 1}' WHERE id = 'a'", v[1])
    await app.execute("DELETE FROM docs WHERE id = 'b'")
    await app.close()
    before = queue_rows(chroma.path, ["a", "b", "c"])
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script), str(config.path), pg_dsn], cwd=REPO, timeout=60,
        capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    after_kill = queue_rows(chroma.path, ["a", "b", "c"])
    assert after_kill == {"a": before["a"] + 1, "b": before["b"] + 1, "c": 1}  # Chroma has the batch...
    stream = (await pg.fetch(
        "SELECT stream, position FROM syncd.checkpoints WHERE stream LIKE 'pgvector%'"))[0]
    assert stream["position"] == 0  # ...and the checkpoint does not
    async with reverse_running(config, pg_dsn):
        await wait_until(lambda: drained(config, pg), 90)
    assert queue_rows(chroma.path, ["a", "b", "c"]) == after_kill  # the replay wrote nothing twice
    await register_vector(pg)
    assert_exact(await pg_items(pg, "docs"), chroma_items(docs))
    echoes = await pg.fetchval("SELECT count(*) FROM syncd.chroma_echo")
    assert echoes == 3  # one per write, not doubled (the forward stream would consume them)


# --- the fence ---------------------------------------------------------------------------------------

APP = textwrap.dedent("""
    import json, sys
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
    col = client.get_or_create_collection("fenced", embedding_function=None)
    try:
        if sys.argv[2] == "seed":
            col.add(ids=["a", "b", "c"], embeddings=[[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.0, 1.0],
                    [9.0, 8.0, 7.0, 6.0]], documents=["a", "b", "c"], metadatas=[{"n": 1}, {"n": 2}, None])
        elif sys.argv[2] == "write":
            col.upsert(ids=["a", "z"], embeddings=[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
        elif sys.argv[2] == "get":
            got = col.get(include=["embeddings", "documents", "metadatas"])
            print(json.dumps({i: [[float(x) for x in e], d, m] for i, e, d, m in
                              zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"])}))
            sys.exit(0)
        print("OK")
    except Exception as exc:
        print("ERR", type(exc).__module__ + "." + type(exc).__name__, exc)
""")


def app_chroma(tmp_path: Path, path: Path, what: str) -> str:
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = subprocess.run([sys.executable, str(script), str(path), what], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def counts(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        return (db.execute("SELECT count(*) FROM embeddings_queue").fetchone()[0],
                db.execute("SELECT count(*) FROM embeddings").fetchone()[0])
    finally:
        db.close()


async def test_fence_stops_the_app_and_lets_the_reverse_stream_write(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    path = tmp_path / "chroma"
    assert app_chroma(tmp_path, path, "seed") == "OK"
    config = await forward(tmp_path, pg_dsn, path=path, url=None)  # persist directory only
    assert chroma_fence.unfenceable_reason(config) is None
    chroma_fence.install_fence(path)
    assert chroma_fence.fence_installed(path)
    before = counts(path)
    out = app_chroma(tmp_path, path, "write")
    assert out.startswith("ERR chromadb.errors.InternalError"), out
    assert "syncd: this Chroma store is fenced" in out and "syncd rollback" in out
    assert counts(path) == before  # nothing half-written

    app = await app_conn(pg_dsn)
    await app.execute("UPDATE fenced SET embedding = $1, metadata = '{\"n\": 10}' WHERE id = 'a'",
                      np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    await app.execute("INSERT INTO fenced (id, embedding, document) VALUES ('d', $1, 'dd')",
                      np.array([1e-40, -0.0, 3e38, 1 / 3], dtype=np.float32))
    await app.execute("DELETE FROM fenced WHERE id = 'b'")
    await app.close()
    async with reverse_running(config, pg_dsn):  # starts (and stops) its private Chroma server
        await wait_until(lambda: drained(config, pg), 60)
    gate = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True)
    assert gate.execute(f"SELECT count(*) FROM {chroma_fence.GATE_TABLE}").fetchone()[0] == 0
    gate.close()
    assert app_chroma(tmp_path, path, "write").startswith("ERR")  # still fenced for the app
    got = json.loads(app_chroma(tmp_path, path, "get"))
    await register_vector(pg)
    want = await pg_items(pg, "fenced")
    assert_exact(want, {i: (np.array(e, dtype=np.float32), d, m) for i, (e, d, m) in got.items()})
    chroma_fence.remove_fence(path)
    assert not chroma_fence.fence_installed(path)
    assert app_chroma(tmp_path, path, "write") == "OK"


def test_http_only_chroma_cannot_be_fenced(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[source.chroma]\nurl = "http://127.0.0.1:8000"\n[target]\ndsn = "postgresql://x@h/db"\n'
                   f'[state]\ndir = "{tmp_path}"\n')
    reason = chroma_fence.unfenceable_reason(load(cfg))
    assert reason is not None and "must stop writing" in reason


# --- no echo -------------------------------------------------------------------------------------------

ECHO_LOG = """
CREATE TABLE syncd_writes (id text, op text);
CREATE FUNCTION log_syncd_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('syncd.origin', true) = 'syncd' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO syncd_writes VALUES (OLD.id, TG_OP);
        ELSE
            INSERT INTO syncd_writes VALUES (NEW.id, TG_OP);
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER log_syncd_writes AFTER INSERT OR UPDATE OR DELETE ON docs
    FOR EACH ROW EXECUTE FUNCTION log_syncd_writes();
ALTER TABLE docs ENABLE ALWAYS TRIGGER log_syncd_writes;
"""


async def test_forward_and_reverse_together_nothing_bounces_back(
        tmp_path: Path, chroma: ChromaServer, pg_dsn: str, pg: asyncpg.Connection) -> None:
    rng = np.random.default_rng(9)
    docs = collection(chroma.client(), "docs")
    docs.add(ids=[f"s{i}" for i in range(4)], embeddings=vecs(rng, 4), documents=["s"] * 4)
    config = await forward(tmp_path, pg_dsn, path=chroma.path, url=chroma.url)
    await pg.execute(ECHO_LOG)
    assert config.path is not None
    daemon = start_daemon(config.path)  # chroma -> pgvector
    try:
        async with reverse_running(config, pg_dsn):  # pgvector -> chroma
            app = await app_conn(pg_dsn)
            same = vecs(rng, 2)
            try:
                for round_ in range(3):
                    v = vecs(rng, 6)
                    # the app on PostgreSQL...
                    await app.execute("INSERT INTO docs (id, embedding, document) VALUES ($1, $2, 'p') "
                                      "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, "
                                      "metadata = $3", f"p{round_}", v[0], json.dumps({"round": round_}))
                    await app.execute("UPDATE docs SET embedding = $1, document = $2 WHERE id = 's0'", v[1],
                                      f"pg round {round_}")
                    if round_ == 1:
                        await app.execute("DELETE FROM docs WHERE id = 's1'")
                    # the same image twice (rounds 0 and 2): two writes, two echoes, both skipped
                    await app.execute("INSERT INTO docs (id, embedding) VALUES ('q', $1) ON CONFLICT (id) "
                                      "DO UPDATE SET embedding = EXCLUDED.embedding", same[round_ % 2])
                    # ...and something else on Chroma (the forward stream's legitimate writes)
                    docs.upsert(ids=[f"c{round_}", "s2"], embeddings=v[2:4],
                                documents=["c", f"c round {round_}"])
                    await asyncio.sleep(0.3)
            finally:
                await app.close()

            async def converged() -> None:
                await drained(config, pg)
                assert_exact(await pg_items(pg, "docs"), chroma_items(docs))
                forward_at = await pg.fetchval("SELECT position FROM syncd.checkpoints WHERE stream = $1",
                                               f"chroma:{docs.id}")
                assert forward_at == queue_head(chroma.path)

            async def consumed() -> None:
                assert await pg.fetchval("SELECT count(*) FROM syncd.chroma_echo") == 0

            await register_vector(pg)
            await wait_until(converged, 60)
            written = await pg.fetch("SELECT DISTINCT id FROM syncd_writes ORDER BY id")
            ids = [r["id"] for r in written]
            assert ids and set(ids) <= {"c0", "c1", "c2", "s2"}, ids  # only Chroma-side writes came forward
            await wait_until(consumed, 10)  # every echo record met its log row
            # q written va, vb, va: each write that reached Chroma left one log row; on a loaded machine the
            # reverse stream may read two rounds in one batch and write only the last image of q (coalesced)
            assert 2 <= queue_rows(chroma.path, ["q"])["q"] <= 3
    finally:
        stop_daemon(daemon)

