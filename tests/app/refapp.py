"""The reference app: writes like the seed NestJS app at a steady rate, to whichever stores
its ``.env`` names, and logs every write.

    python -m tests.app.refapp --env PATH --log PATH --rate 200 [--vector-dim 8]
                               [--init-schema] [--seed N] [--retry-seconds 10] [--keep-clients]

- ``--init-schema`` creates the SQLite tables and the Chroma collection, then exits.
- SIGHUP: re-read the ``.env``; the next write goes to the stores it names, the old
  connections are closed. SIGTERM: finish the write in progress, exit 0.
- A refused write (a fence trigger's error, "database is locked", a lost connection) is
  retried every 20 ms for up to ``--retry-seconds``, re-reading which store is current
  before each attempt — what a well-behaved app does during a cutover.
- Every key comes from ``--seed``: user ids ``seed * 10**7 + k``, document ids
  ``d<seed>-<k>``. Two runs against the same stores need different seeds.
- One JSON line per write in ``--log`` (see :mod:`tests.app.records`).
- ``--keep-clients``: a reload reuses the Chroma client made before for the same URL or
  directory instead of building a new one (~75 ms for a ``chromadb.HttpClient`` here).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from tests.app.stores import ChromaStore, Settings, SqliteStore, Store, Write, open_stores

RETRY_INTERVAL = 0.02


def now_text() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class Workload:
    """The deterministic sequence of writes for one seed (timestamps aside)."""

    def __init__(self, seed: int, dim: int, collection: str | None) -> None:
        self.rng = random.Random(seed)
        self.seed, self.dim, self.collection = seed, dim, collection
        self.users: list[int] = []
        self.documents: dict[str, dict[str, Any]] = {}
        self.embedded: set[str] = set()
        self.pending: deque[tuple[str, str, Any, dict[str, Any] | None]] = deque()
        self.k = 0

    def _next_key(self) -> int:
        self.k += 1
        return self.k

    def _step(self) -> tuple[str, str, Any, dict[str, Any] | None]:
        if self.pending:
            return self.pending.popleft()
        r = self.rng.random()
        if not self.users or r < 0.15:
            uid = self.seed * 10**7 + self._next_key()
            self.users.append(uid)
            return "insert", "users", uid, {"id": uid, "email": f"user{uid}@example.com",
                                            "name": f"User {self.rng.randrange(10**6)}",
                                            "created_at": now_text()}
        if not self.documents or r < 0.45:
            did = f"d{self.seed}-{self._next_key()}"
            row = {"id": did, "user_id": self.rng.choice(self.users),
                   "title": f"title {self.rng.randrange(10**6)}",
                   "body": f"body {self.rng.randrange(10**9)} " * self.rng.randint(1, 4),
                   "updated_at": now_text()}
            self.documents[did] = row
            return "insert", "documents", did, dict(row)
        did = self.rng.choice(list(self.documents))
        if r < 0.70:
            row = self.documents[did]
            row.update(title=f"title {self.rng.randrange(10**6)}", updated_at=now_text())
            return "update", "documents", did, dict(row)
        if r < 0.92 and self.collection is not None:
            row = self.documents[did]
            self.embedded.add(did)
            vec = np.asarray([self.rng.uniform(-1, 1) for _ in range(self.dim)], dtype=np.float32)
            return "upsert", self.collection, did, {
                "id": did, "embedding": [float(x) for x in vec], "document": row["body"],
                "metadata": {"userId": row["user_id"], "documentId": did}}
        if r < 0.92:
            return self._step()
        del self.documents[did]
        if did in self.embedded and self.collection is not None:
            self.embedded.discard(did)
            self.pending.append(("delete", self.collection, did, None))
        return "delete", "documents", did, None

    def __iter__(self) -> Iterator[Write]:
        n = 0
        while True:
            n += 1
            op, obj, key, row = self._step()
            yield Write(n, op, obj, key, row)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = Path(args.env)
        self.settings = Settings.load(self.env, args.vector_dim)
        self.relational, self.vector = open_stores(self.settings, keep_clients=args.keep_clients)
        self.reload_requested = False
        self.stopping = False

    async def reload_if_asked(self) -> None:
        if not self.reload_requested:
            return
        self.reload_requested = False
        try:
            settings = Settings.load(self.env, self.args.vector_dim)
        except (SystemExit, OSError, ValueError) as exc:
            print(f"refapp: reload of {self.env} failed, keeping the current stores: {exc}", file=sys.stderr)
            return
        old = [self.relational, self.vector]
        self.settings = settings
        self.relational, self.vector = open_stores(settings, keep_clients=self.args.keep_clients)
        for store in old:
            if store is not None:
                await store.close()

    def store_for(self, write: Write) -> Store | None:
        return self.relational if write.object in ("users", "documents") else self.vector

    async def perform(self, write: Write) -> dict[str, Any]:
        t0 = time.time()
        deadline = time.monotonic() + self.args.retry_seconds
        attempts, error, store_name = 0, None, ""
        while True:
            await self.reload_if_asked()
            store = self.store_for(write)
            store_name = store.name if store is not None else "none"
            attempts += 1
            try:
                if store is not None:
                    await store.apply(write)
                error = None
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(RETRY_INTERVAL)
        return {"n": write.n, "op": write.op, "object": write.object, "key": write.key, "row": write.row,
                "store": store_name, "ok": error is None, "attempts": attempts, "t0": t0, "t1": time.time(),
                "error": error}

    async def run(self, log: IO[str]) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)
        collection = self.settings.collection if self.settings.vector != "none" else None
        interval = 1.0 / self.args.rate
        due = time.monotonic()
        try:
            for write in Workload(self.args.seed, self.args.vector_dim, collection):
                if self.stopping:
                    break
                record = await self.perform(write)
                log.write(json.dumps(record) + "\n")
                log.flush()
                due += interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    due = time.monotonic()  # after a long pause: resume the rate, do not burst
        finally:
            for store in (self.relational, self.vector):
                if store is not None:
                    await store.close()

    def _on_hup(self) -> None:
        self.reload_requested = True

    def _on_term(self) -> None:
        self.stopping = True


def init_schema(args: argparse.Namespace) -> None:
    settings = Settings.load(Path(args.env), args.vector_dim)
    if settings.sqlite_path is not None:
        SqliteStore(settings.sqlite_path).init_schema()
    if settings.vector == "chromadb":
        ChromaStore(settings.chroma_path, settings.chroma_url, settings.collection).init_schema()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.app.refapp", description=__doc__.split("\n")[0])
    p.add_argument("--env", required=True, help="the app's .env file")
    p.add_argument("--log", help="write log (JSON lines); required unless --init-schema")
    p.add_argument("--rate", type=float, default=200.0, help="writes per second")
    p.add_argument("--vector-dim", type=int, default=8)
    p.add_argument("--init-schema", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--retry-seconds", type=float, default=10.0)
    p.add_argument("--keep-clients", action="store_true",
                   help="reuse a Chroma client across reloads (same URL or directory)")
    args = p.parse_args(argv)
    if not args.init_schema and not args.log:
        p.error("--log is required")
    if args.rate <= 0:
        p.error("--rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.init_schema:
        init_schema(args)
        return 0
    app = App(args)
    with open(args.log, "a", encoding="utf-8") as log:
        asyncio.run(app.run(log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
