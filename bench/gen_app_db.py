"""Generate an app-shaped SQLite database: ``users`` and ``documents`` (~1 KB of text each).

Deterministic for a given seed. WAL mode (as the apps use it); the WAL is checkpointed and
truncated at the end so that the main file holds every row.

    python -m bench.gen_app_db --users 200000 --documents 500000 bench/out/app.sqlite
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

SCHEMA = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    name TEXT,
    is_active BOOLEAN NOT NULL DEFAULT 1,
    created_at DATETIME NOT NULL,
    settings JSON
);
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    title VARCHAR(200),
    content TEXT,
    chunk_index INTEGER NOT NULL,
    score REAL,
    metadata JSON,
    created_at DATETIME NOT NULL
);
CREATE INDEX idx_documents_user_id ON documents(user_id);
"""

FIRST = ("ada", "alan", "barbara", "claude", "donald", "edsger", "frances", "grace", "ken",
         "leslie", "linus", "margaret", "niklaus", "radia", "sophie", "tim", "guido", "yukihiro")
LAST = ("lovelace", "turing", "liskov", "shannon", "knuth", "dijkstra", "allen", "hopper",
        "thompson", "lamport", "torvalds", "hamilton", "wirth", "perlman", "wilson", "berners-lee")
DOMAINS = ("example.com", "mail.test", "corp.example", "users.example.org")
WORDS = ("the data stream sqlite postgres change capture row table index query vector "
         "embedding document chunk user model batch commit snapshot replica lag cutover "
         "rollback schema column value json text number system service deploy cluster node "
         "network latency throughput memory disk cache buffer page file log event metric").split()
TAGS = ("invoice", "contract", "report", "note", "email", "manual", "spec", "draft", "faq")
THEMES = ("light", "dark", "system")
LANGS = ("en", "de", "fr", "es", "ja", "pt")
EPOCH = datetime(2022, 1, 1)
SPAN_SECONDS = 3 * 365 * 24 * 3600
BATCH = 10_000


def timestamp(rng: random.Random) -> str:
    """A ``YYYY-MM-DD HH:MM:SS.fff`` text timestamp, as ORMs write DATETIME columns."""
    t = EPOCH + timedelta(seconds=rng.random() * SPAN_SECONDS)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def text_pool(rng: random.Random, size: int = 1 << 22) -> str:
    """A few MB of random words; document bodies are random slices of it."""
    parts: list[str] = []
    n = 0
    while n < size:
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize() + ". "
        parts.append(sentence)
        n += len(sentence)
    return "".join(parts)


def users(rng: random.Random, count: int) -> Iterator[tuple[object, ...]]:
    for i in range(1, count + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        settings = {
            "theme": rng.choice(THEMES),
            "language": rng.choice(LANGS),
            "notifications": {"email": rng.random() < 0.7, "push": rng.random() < 0.3},
            "page_size": rng.choice((10, 25, 50, 100)),
        }
        yield (
            i,
            f"{first}.{last}.{i}@{rng.choice(DOMAINS)}",
            None if rng.random() < 0.05 else f"{first.title()} {last.title()}",
            1 if rng.random() < 0.9 else 0,
            timestamp(rng),
            json.dumps(settings),
        )


def documents(rng: random.Random, count: int, n_users: int) -> Iterator[tuple[object, ...]]:
    pool = text_pool(rng)
    limit = len(pool) - 2000
    for _ in range(count):
        start = rng.randrange(limit)
        body = pool[start:start + rng.randint(800, 1200)]
        meta = {
            "source": rng.choice(("upload", "crawl", "api", "import")),
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
            "page": rng.randint(1, 400),
            "lang": rng.choice(LANGS),
        }
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            rng.randint(1, n_users),
            " ".join(rng.choices(WORDS, k=rng.randint(3, 9))).capitalize(),
            body,
            rng.randint(0, 40),
            rng.random(),
            json.dumps(meta),
            timestamp(rng),
        )


def insert(conn: sqlite3.Connection, sql: str, rows: Iterator[tuple[object, ...]]) -> None:
    batch: list[tuple[object, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            conn.executemany(sql, batch)
            batch.clear()
    if batch:
        conn.executemany(sql, batch)


def generate(path: Path, n_users: int, n_documents: int, seed: int = 42) -> dict[str, float]:
    """Create *path* (replacing it) and return ``{"seconds", "bytes"}``."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MB
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    insert(conn, "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", users(rng, n_users))
    insert(conn, "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
           documents(rng, n_documents, n_users))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"seconds": time.perf_counter() - started, "bytes": float(path.stat().st_size)}


def cached(directory: Path, n_users: int, n_documents: int) -> Path:
    """``directory/app-<users>-<documents>.sqlite``, generated (seed 42) unless it is there."""
    path = directory / f"app-{n_users}-{n_documents}.sqlite"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        generate(path, n_users, n_documents)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path, help="SQLite file to create (replaced if it exists)")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--documents", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if args.users < 1 or args.documents < 0:
        ap.error("--users must be >= 1 and --documents >= 0")
    result = generate(args.output, args.users, args.documents, args.seed)
    print(f"{args.output}: {args.users} users, {args.documents} documents, "
          f"{result['bytes'] / 1e6:.0f} MB in {result['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
