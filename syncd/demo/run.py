"""`syncd demo`: the whole forward path on a generated app database, in one command.

Builds an app-shaped SQLite database (the seed app's ``users`` and ``documents``)
in a fresh directory, starts the embedded PostgreSQL, initialises capture,
streams while the "app" keeps writing, then prints status and a row-by-row
comparison. Exit 0 only when every table is equal.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from syncd import config
from syncd.demo import chroma as demo_chroma
from syncd.errors import ConfigError
from syncd.model import Phase
from syncd.pg.connect import close_quietly, connect
from syncd.service import logs
from syncd.stores.postgres.sink import PostgresSink
from syncd.streams import commands, supervisor
from syncd.verify import compare

SCHEMA = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email VARCHAR(255) NOT NULL UNIQUE,
    first_name VARCHAR(100),
    is_active BOOLEAN NOT NULL DEFAULT 1,
    created_at DATETIME NOT NULL
);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title VARCHAR(200) NOT NULL,
    content TEXT,
    metadata JSON,
    size REAL,
    created_at DATETIME NOT NULL
);
CREATE INDEX idx_documents_user_id ON documents(user_id);
"""


def _now(rng: random.Random) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1.7e9 + rng.random() * 3e7)) + ".000"


def build_app_db(path: Path, users: int, documents: int, rng: random.Random) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA journal_mode=WAL;" + SCHEMA)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                     [(u, f"user{i}@example.com", f"User {i}", i % 7 != 0, _now(rng))
                      for i, u in enumerate(ids)])
    conn.executemany(
        "INSERT INTO documents (user_id, title, content, metadata, size, created_at) VALUES (?,?,?,?,?,?)",
        [(rng.choice(ids), f"Document {i}", "lorem ipsum " * rng.randint(5, 80),
          f'{{"tags": ["t{i % 5}"], "pages": {rng.randint(1, 40)}}}', rng.random() * 1e4, _now(rng))
         for i in range(documents)])
    conn.commit()
    conn.close()
    return ids


def live_changes(path: Path, ids: list[str], rng: random.Random, seconds: float) -> int:
    """What a running app does: inserts, updates, deletes, a primary-key change."""
    conn = sqlite3.connect(path, timeout=10)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with conn:
            kind = rng.random()
            if kind < 0.3:
                u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                conn.execute("INSERT INTO users VALUES (?, ?, ?, 1, ?)",
                             (u, f"new{n}@example.com", "New", _now(rng)))
                ids.append(u)
            elif kind < 0.6:
                conn.execute("UPDATE documents SET title = ?, size = ? WHERE id = ?",
                             (f"Edited {n}", rng.random(), rng.randint(1, 1000)))
            elif kind < 0.8:
                conn.execute("INSERT INTO documents (user_id, title, content, metadata, size, created_at) "
                             "VALUES (?, ?, ?, '{}', 1.5, ?)",
                             (rng.choice(ids), f"Live {n}", "new", _now(rng)))
            elif kind < 0.95:
                conn.execute("DELETE FROM documents WHERE id = ?", (rng.randint(1, 1200),))
            else:
                conn.execute("UPDATE documents SET id = id + 100000 WHERE id = ?", (rng.randint(1, 1000),))
        n += 1
        time.sleep(0.005)
    conn.close()
    return n


def demo_dir(directory: Path | None) -> Path:
    """The demo's directory, absolute: a new temp dir, or *directory* if it is new or empty."""
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="syncd-demo-"))
    base = Path(directory).expanduser().resolve()
    if base.exists() and not base.is_dir():
        raise ConfigError(f"demo --dir {directory} is a file; name a new or empty directory")
    if base.is_dir() and any(base.iterdir()):
        raise ConfigError(f"demo --dir {directory} is not empty; name a new or empty directory")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"demo --dir {directory}: cannot create it: {exc.strerror}") from exc
    return base


def write_config(base: Path, chroma: demo_chroma.DemoChroma | None, *, with_url: bool) -> Path:
    """The demo's syncd.toml, paths relative to it. Without the url, syncd reads Chroma's persist
    directory itself (and starts its own server when it needs one): the config still works
    once the demo's Chroma server is gone."""
    path = base / "syncd.toml"
    chroma_part = ""
    if chroma is not None:
        url = f'url = "{chroma.url}"\n' if with_url else ""
        chroma_part = f'[source.chroma]\n{url}path = "{chroma.path.relative_to(base)}"\n\n'
    path.write_text('[source.sqlite]\npath = "data/dev.sqlite"\n\n' + chroma_part +
                    '[target]\ndsn = "embedded"\n\n[state]\ndir = "state"\n\n[stream]\npoll_interval = 0.2\n')
    return path


async def run_demo(directory: Path | None) -> int:
    logs.configure("warning")
    base = demo_dir(directory)
    db = base / "data" / "dev.sqlite"
    rng = random.Random(7)
    print(f"demo: building an app database in {db}")
    ids = build_app_db(db, users=200, documents=1000, rng=rng)
    chroma = demo_chroma.start(base)  # the app's Chroma server, with one collection
    if chroma is not None:
        print(f"demo: building a Chroma collection ({chroma.url}, persist directory {chroma.path})")
        await asyncio.to_thread(demo_chroma.build, chroma, 2000, rng)
    try:
        code = await _run_demo(base, db, ids, chroma, rng)
    finally:
        if chroma is not None:
            chroma.stop()
    cfg_path = write_config(base, chroma, with_url=False)
    print(f"demo: files in {base}; its config: {cfg_path}")
    print("demo: try next (the embedded PostgreSQL starts again when a command needs it):")
    print(f"  syncd -c {cfg_path} status      # where each stream stands")
    print(f"  syncd -c {cfg_path} verify      # compare SQLite and Chroma with PostgreSQL, row by row")
    print(f"  syncd -c {cfg_path} embedded dsn   # the DSN, and the psql command to look at the tables")
    return code


async def _run_demo(base: Path, db: Path, ids: list[str], chroma: demo_chroma.DemoChroma | None,
                    rng: random.Random) -> int:
    cfg = config.load(write_config(base, chroma, with_url=True))
    print("demo: starting the embedded PostgreSQL and installing capture (syncd init)")
    await commands.init(cfg)

    sup = supervisor.Supervisor(cfg)
    await sup.start()
    started = time.monotonic()
    while not all(s.phase is Phase.STREAMING for s in sup.statuses()):
        if any(s.phase is Phase.FAILED for s in sup.statuses()) or time.monotonic() - started > 120:
            sup.request_stop()
            return await sup.wait() or 1
        await asyncio.sleep(0.05)
    print(f"demo: snapshot copied in {time.monotonic() - started:.2f} s; the app keeps writing...")
    if chroma is not None:
        changes, items = await asyncio.gather(asyncio.to_thread(live_changes, db, ids, rng, 2.0),
                                              asyncio.to_thread(demo_chroma.live_changes, chroma,
                                                                random.Random(8), 2.0))
        print(f"demo: the app made {changes} changes in SQLite and {items} in Chroma while syncd streamed")
    else:
        changes = await asyncio.to_thread(live_changes, db, ids, rng, 2.0)
        print(f"demo: the app made {changes} changes while syncd streamed")
    while True:
        status = await commands.stored_status(cfg)
        if all(s["pending"] == 0 for s in status):
            break
        await asyncio.sleep(0.1)
    sup.request_stop()
    code = await sup.wait()
    for s in await commands.stored_status(cfg):
        print(f"status: stream {s['name']}: {s['phase']}, checkpoint {s['checkpoint']} "
              f"= source {s['source_position']}, pending {s['pending']}, rejects {s['rejects']}")

    conn = await connect(cfg.target, sup.dsn)
    try:
        assert cfg.sqlite is not None
        from syncd.stores.sqlite.source import SqliteSource

        source = await SqliteSource.open(cfg.sqlite)
        try:
            tables = await PostgresSink.prepare(conn, supervisor.SQLITE_STREAM,
                                                list(source.tables.values()), cfg.target)
        finally:
            await source.close()
        diffs = await compare.compare_all(str(db), conn, tables)
        for tt in tables:
            n = await conn.fetchval(f"SELECT count(*) FROM {tt.qualified}")
            found = diffs[tt.name]
            mark = "✓" if not found else "✗"
            print(f"compare: {mark} {tt.name}: {n} rows in PostgreSQL, "
                  f"{'equal row by row' if not found else f'{len(found)} differences'}")
            for d in found[:5]:
                print(f"         {d}")
        chroma_equal = await demo_chroma.compare(chroma, conn) if chroma is not None else True
    finally:
        await close_quietly(conn)
    return 0 if code == 0 and not any(diffs.values()) and chroma_equal else 1
