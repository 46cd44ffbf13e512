"""An app-shaped SQLite database, a randomized writer for it, and the tools to watch syncd.

The schema looks like a small web app's: users, their documents, tags with a
composite key, an ``"order"`` table (an SQL keyword, with a ``"select"``
column), an audit log without a primary key (keyed by rowid), settings in a
WITHOUT ROWID table, sessions keyed by a UUID text, an insert-only ``events``
table and a ``counters`` table. Foreign keys are enforced (``PRAGMA
foreign_keys = ON``), with ON DELETE / ON UPDATE CASCADE as an ORM declares them.

:class:`Writer` runs random transactions (inserts, updates, deletes, primary-key
changes, now and then a rollback) from a seed. :func:`differences` reads both
stores and compares them row by row with its own normalisation, independent of
syncd's converters. :class:`Daemon` runs ``syncd run`` as a real process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import REPO, syncd_cmd

# --- schema --------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT,
    score      REAL,
    active     BOOLEAN NOT NULL DEFAULT 1,
    created_at DATETIME
);
CREATE TABLE documents (
    id       INTEGER PRIMARY KEY,
    owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE ON UPDATE CASCADE,
    title    TEXT NOT NULL,
    body     TEXT,
    meta     JSON,
    payload  BLOB,
    version  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX documents_owner ON documents (owner_id);
CREATE TABLE tags (
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE ON UPDATE CASCADE,
    tag         TEXT NOT NULL,
    weight      REAL,
    PRIMARY KEY (document_id, tag)
);
CREATE TABLE "order" (
    id       INTEGER PRIMARY KEY,
    "select" TEXT,
    "from"   INTEGER,
    user_id  INTEGER REFERENCES users(id) ON DELETE SET NULL ON UPDATE CASCADE
);
CREATE TABLE audit_log (
    actor  INTEGER,
    action TEXT NOT NULL,
    detail TEXT,
    at     REAL
);
CREATE TABLE settings (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE TABLE sessions (
    token      UUID PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE ON UPDATE CASCADE,
    expires_at DATETIME,
    data       BLOB
);
CREATE TABLE events (
    seq  INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at   REAL
);
CREATE TABLE counters (
    id INTEGER PRIMARY KEY,
    n  INTEGER NOT NULL
);
"""

ARCHIVE = "CREATE TABLE archive (id INTEGER PRIMARY KEY, body TEXT, n REAL)"
"""A big table nobody writes to while syncd copies it: the snapshot's exact accounting."""

ROWID = "rowid"
"""Key marker for tables without a primary key (the target column is ``_syncd_rowid``)."""


@dataclass(frozen=True)
class Spec:
    """How to compare one table: columns with a value kind, and the key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]


SPECS: tuple[Spec, ...] = (
    Spec("users", (("id", "int"), ("email", "text"), ("name", "text"), ("score", "real"),
                   ("active", "bool"), ("created_at", "datetime")), ("id",)),
    Spec("documents", (("id", "int"), ("owner_id", "int"), ("title", "text"), ("body", "text"),
                       ("meta", "json"), ("payload", "blob"), ("version", "int")), ("id",)),
    Spec("tags", (("document_id", "int"), ("tag", "text"), ("weight", "real")),
         ("document_id", "tag")),
    Spec("order", (("id", "int"), ("select", "text"), ("from", "int"), ("user_id", "int")), ("id",)),
    Spec("audit_log", (("actor", "int"), ("action", "text"), ("detail", "text"), ("at", "real")),
         (ROWID,)),
    Spec("settings", (("scope", "text"), ("key", "text"), ("value", "text")), ("scope", "key")),
    Spec("sessions", (("token", "uuid"), ("user_id", "int"), ("expires_at", "datetime"),
                      ("data", "blob")), ("token",)),
    Spec("events", (("seq", "int"), ("kind", "text"), ("at", "real")), (ROWID,)),
    Spec("counters", (("id", "int"), ("n", "int")), ("id",)),
)
ARCHIVE_SPEC = Spec("archive", (("id", "int"), ("body", "text"), ("n", "real")), ("id",))

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon")
TEXTS = ("", "plain", "ünïcödé ✓", "quote ' and \" and \\", "line\nbreak\ttab", "日本語のテキスト",
         "emoji 🚀", "x" * 300)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(path: Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """An app connection: autocommit mode (explicit BEGIN), foreign keys enforced."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create_database(path: Path, *, journal_mode: str = "wal", archive_rows: int = 0) -> None:
    conn = connect(path)
    try:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO counters (id, n) VALUES (?, 0)", [(i,) for i in range(1, 11)])
        if archive_rows:
            conn.execute(ARCHIVE)
            rng = random.Random(7)
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO archive VALUES (?, ?, ?)",
                             [(i, rng.choice(TEXTS) + str(i), rng.random() * 1e6)
                              for i in range(1, archive_rows + 1)])
            conn.execute("COMMIT")
    finally:
        conn.close()


# --- the writer ----------------------------------------------------------------------------

@dataclass
class Tally:
    """What the writer committed (rolled-back transactions are not counted)."""

    transactions: int = 0
    rollbacks: int = 0
    ops: dict[str, int] = field(default_factory=dict)


class Writer:
    """Random app transactions against one SQLite file, reproducible from *seed*.

    ``parent_key_changes``: also change the primary key of rows that others reference
    (users, documents), which SQLite cascades to the children (ON UPDATE CASCADE).
    ``full_precision_reals``: REAL values use all 17 significant digits a double can
    need; otherwise at most 13.
    """

    def __init__(self, path: Path, seed: int, *, parent_key_changes: bool = True,
                 full_precision_reals: bool = True, rollback_rate: float = 0.05) -> None:
        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.full_precision_reals = full_precision_reals
        self.conn = connect(path)
        self.rollback_rate = rollback_rate
        self.tally = Tally()
        self._seq = 0
        ops: list[tuple[Callable[[], None], int]] = [
            (self.user_insert, 6), (self.user_update, 6), (self.user_delete, 1),
            (self.doc_insert, 10), (self.doc_update, 10), (self.doc_delete, 3),
            (self.tag_insert, 6), (self.tag_update, 3), (self.tag_rename, 2), (self.tag_delete, 3),
            (self.order_insert, 4), (self.order_update, 4), (self.order_key_change, 2),
            (self.order_delete, 2),
            (self.audit_insert, 5), (self.audit_update, 2), (self.audit_rowid_change, 1),
            (self.audit_delete, 2),
            (self.setting_upsert, 4), (self.setting_key_change, 1), (self.setting_delete, 1),
            (self.session_insert, 4), (self.session_update, 3), (self.session_token_change, 2),
            (self.session_delete, 2),
        ]
        if parent_key_changes:
            ops += [(self.user_key_change, 2), (self.doc_key_change, 2)]
        self._ops = [op for op, _ in ops]
        self._weights = [w for _, w in ops]

    def close(self) -> None:
        self.conn.close()

    # one transaction ---------------------------------------------------------------------

    def transaction(self) -> None:
        rng, conn = self.rng, self.conn
        done: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        seq = self._seq
        try:
            for op in rng.choices(self._ops, self._weights, k=rng.randint(1, 5)):
                op()
                done.append(op.__name__)
            self._seq += 1
            conn.execute("INSERT INTO events (seq, kind, at) VALUES (?, ?, ?)",
                         (self._seq, done[0], self._now()))
            conn.execute("UPDATE counters SET n = n + 1 WHERE id = ?", (rng.randint(1, 10),))
            if rng.random() < self.rollback_rate:
                conn.execute("ROLLBACK")
                self._seq = seq
                self.tally.rollbacks += 1
                return
            conn.execute("COMMIT")
        except BaseException:
            # a failed statement or COMMIT (SQLITE_FULL, an I/O error) may already have
            # rolled the transaction back
            self._seq = seq
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.tally.transactions += 1
        for name in done:
            self.tally.ops[name] = self.tally.ops.get(name, 0) + 1

    def populate(self, *, users: int, documents: int, tags: int, orders: int, audit: int,
                 settings: int, sessions: int, per_transaction: int = 500) -> None:
        """Bulk initial rows through the same operations, in large transactions."""
        plan = ([self.user_insert] * users + [self.doc_insert] * documents
                + [self.tag_insert] * tags + [self.order_insert] * orders
                + [self.audit_insert] * audit + [self.setting_upsert] * settings
                + [self.session_insert] * sessions)
        for i in range(0, len(plan), per_transaction):
            self.conn.execute("BEGIN")
            for op in plan[i:i + per_transaction]:
                op()
            self.conn.execute("COMMIT")

    # picking rows ------------------------------------------------------------------------

    def _pick(self, table: str, cols: str) -> tuple[Any, ...] | None:
        n = self.conn.execute(f"SELECT count(*) FROM {q(table)}").fetchone()[0]
        if not n:
            return None
        row = self.conn.execute(f"SELECT {cols} FROM {q(table)} LIMIT 1 OFFSET ?",
                                (self.rng.randrange(n),)).fetchone()
        return tuple(row)

    def _pick_id(self, table: str, col: str = "id") -> Any:
        row = self._pick(table, q(col))
        return row[0] if row else None

    def _new_id(self, table: str, col: str = "id") -> int:
        top = self.conn.execute(f"SELECT max({q(col)}) FROM {q(table)}").fetchone()[0] or 0
        return int(top) + self.rng.randint(1, 50)

    def _user(self) -> int:
        uid = self._pick_id("users")
        if uid is None:
            self.user_insert()
            uid = self.conn.execute("SELECT max(id) FROM users").fetchone()[0]
        return int(uid)

    def _doc(self) -> int:
        did = self._pick_id("documents")
        if did is None:
            self.doc_insert()
            did = self.conn.execute("SELECT max(id) FROM documents").fetchone()[0]
        return int(did)

    def _text(self) -> str:
        return self.rng.choice(TEXTS) + " " + " ".join(self.rng.choices(WORDS, k=self.rng.randint(0, 6)))

    def _when(self) -> str:
        base = dt.datetime(2020, 1, 1) + dt.timedelta(seconds=self.rng.randint(0, 10**8))
        return base.isoformat(sep=" ")

    def _real(self) -> float | None:
        if self.rng.random() < 0.1:
            return None
        x = self.rng.uniform(-1e6, 1e6)
        return x if self.full_precision_reals else round(x, 6)

    def _now(self) -> float:
        return time.time() if self.full_precision_reals else round(time.time(), 3)

    # users --------------------------------------------------------------------------------

    def user_insert(self) -> None:
        self.conn.execute(
            "INSERT INTO users (email, name, score, active, created_at) VALUES (?, ?, ?, ?, ?)",
            (f"{self.rng.getrandbits(64):016x}@example.com", self._text(), self._real(),
             self.rng.random() < 0.8, self._when()))

    def user_update(self) -> None:
        self.conn.execute("UPDATE users SET name = ?, score = ?, active = ? WHERE id = ?",
                          (self._text(), self._real(), self.rng.random() < 0.5, self._user()))

    def user_key_change(self) -> None:
        self.conn.execute("UPDATE users SET id = ? WHERE id = ?", (self._new_id("users"), self._user()))

    def user_delete(self) -> None:
        if self.conn.execute("SELECT count(*) FROM users").fetchone()[0] > 20:
            self.conn.execute("DELETE FROM users WHERE id = ?", (self._user(),))

    # documents ----------------------------------------------------------------------------

    def doc_insert(self) -> None:
        meta = None if self.rng.random() < 0.2 else json.dumps(
            {"rev": self.rng.randint(0, 99), "labels": self.rng.sample(WORDS, 2),
             "ratio": self.rng.random(), "nested": {"ok": self.rng.random() < 0.5}})
        payload = None if self.rng.random() < 0.2 else self.rng.randbytes(self.rng.randint(0, 64))
        self.conn.execute(
            "INSERT INTO documents (owner_id, title, body, meta, payload) VALUES (?, ?, ?, ?, ?)",
            (self._user(), self.rng.choice(WORDS), self._text(), meta, payload))

    def doc_update(self) -> None:
        self.conn.execute("UPDATE documents SET body = ?, version = version + 1 WHERE id = ?",
                          (self._text(), self._doc()))

    def doc_key_change(self) -> None:
        self.conn.execute("UPDATE documents SET id = ? WHERE id = ?",
                          (self._new_id("documents"), self._doc()))

    def doc_delete(self) -> None:
        self.conn.execute("DELETE FROM documents WHERE id = ?", (self._doc(),))

    # tags (composite key) ------------------------------------------------------------------

    def tag_insert(self) -> None:
        self.conn.execute("INSERT OR IGNORE INTO tags (document_id, tag, weight) VALUES (?, ?, ?)",
                          (self._doc(), self.rng.choice(WORDS), self._real()))

    def tag_update(self) -> None:
        row = self._pick("tags", "document_id, tag")
        if row:
            self.conn.execute("UPDATE tags SET weight = ? WHERE document_id = ? AND tag = ?",
                              (self._real(), *row))

    def tag_rename(self) -> None:
        row = self._pick("tags", "document_id, tag")
        if row:
            self.conn.execute("UPDATE OR IGNORE tags SET tag = ? WHERE document_id = ? AND tag = ?",
                              (self.rng.choice(WORDS) + "-" + str(self.rng.randint(0, 9)), *row))

    def tag_delete(self) -> None:
        row = self._pick("tags", "document_id, tag")
        if row:
            self.conn.execute("DELETE FROM tags WHERE document_id = ? AND tag = ?", row)

    # "order" (keyword names) ---------------------------------------------------------------

    def order_insert(self) -> None:
        self.conn.execute('INSERT INTO "order" ("select", "from", user_id) VALUES (?, ?, ?)',
                          (self._text(), self.rng.randint(-10**12, 10**12),
                           None if self.rng.random() < 0.2 else self._user()))

    def order_update(self) -> None:
        oid = self._pick_id("order")
        if oid is not None:
            self.conn.execute('UPDATE "order" SET "select" = ?, "from" = "from" + 1 WHERE id = ?',
                              (self._text(), oid))

    def order_key_change(self) -> None:
        oid = self._pick_id("order")
        if oid is not None:
            self.conn.execute('UPDATE "order" SET id = ? WHERE id = ?', (self._new_id("order"), oid))

    def order_delete(self) -> None:
        oid = self._pick_id("order")
        if oid is not None:
            self.conn.execute('DELETE FROM "order" WHERE id = ?', (oid,))

    # audit_log (no primary key: keyed by rowid) -------------------------------------------

    def audit_insert(self) -> None:
        self.conn.execute("INSERT INTO audit_log (actor, action, detail, at) VALUES (?, ?, ?, ?)",
                          (self.rng.randint(1, 1000), self.rng.choice(WORDS), self._text(),
                           self._real()))

    def audit_update(self) -> None:
        rid = self._pick_id("audit_log", "rowid")
        if rid is not None:
            self.conn.execute("UPDATE audit_log SET detail = ? WHERE rowid = ?", (self._text(), rid))

    def audit_rowid_change(self) -> None:
        rid = self._pick_id("audit_log", "rowid")
        if rid is not None:
            self.conn.execute("UPDATE audit_log SET rowid = ? WHERE rowid = ?",
                              (self._new_id("audit_log", "rowid"), rid))

    def audit_delete(self) -> None:
        rid = self._pick_id("audit_log", "rowid")
        if rid is not None:
            self.conn.execute("DELETE FROM audit_log WHERE rowid = ?", (rid,))

    # settings (WITHOUT ROWID, text composite key) -----------------------------------------

    def setting_upsert(self) -> None:
        self.conn.execute(
            "INSERT INTO settings (scope, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
            (self.rng.choice(WORDS[:5]), f"{self.rng.choice(WORDS)}.{self.rng.randint(0, 999)}",
             self._text()))

    def setting_key_change(self) -> None:
        row = self._pick("settings", "scope, key")
        if row:
            self.conn.execute("UPDATE OR IGNORE settings SET key = ? WHERE scope = ? AND key = ?",
                              (f"moved.{self.rng.getrandbits(40):x}", *row))

    def setting_delete(self) -> None:
        row = self._pick("settings", "scope, key")
        if row:
            self.conn.execute("DELETE FROM settings WHERE scope = ? AND key = ?", row)

    # sessions (UUID text key) ---------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def session_insert(self) -> None:
        self.conn.execute("INSERT INTO sessions (token, user_id, expires_at, data) VALUES (?, ?, ?, ?)",
                          (self._uuid(), self._user(), self._when(),
                           self.rng.randbytes(self.rng.randint(1, 32))))

    def session_update(self) -> None:
        token = self._pick_id("sessions", "token")
        if token is not None:
            self.conn.execute("UPDATE sessions SET expires_at = ? WHERE token = ?", (self._when(), token))

    def session_token_change(self) -> None:
        token = self._pick_id("sessions", "token")
        if token is not None:
            self.conn.execute("UPDATE sessions SET token = ? WHERE token = ?", (self._uuid(), token))

    def session_delete(self) -> None:
        token = self._pick_id("sessions", "token")
        if token is not None:
            self.conn.execute("DELETE FROM sessions WHERE token = ?", (token,))


class WriterThread:
    """Runs a :class:`Writer` in a thread until stopped; re-raises its error on stop."""

    def __init__(self, writer: Writer, *, pause: float = 0.002) -> None:
        self.writer = writer
        self.pause = pause
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="app-writer", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.writer.transaction()
                if self.pause:
                    self._stop.wait(self.writer.rng.uniform(0, 2 * self.pause))
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def start(self) -> WriterThread:
        self._thread.start()
        return self

    @property
    def transactions(self) -> int:
        return self.writer.tally.transactions

    def stop(self) -> Tally:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the app writer did not stop"
        if self._error is not None:
            raise AssertionError(f"app writer (seed {self.writer.seed}) failed: {self._error!r}") \
                from self._error
        return self.writer.tally

    def halt(self) -> None:
        """Stop without reporting (cleanup after a failure has already been raised)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    async def run_until(self, transactions: int, within: float = 120) -> None:
        """Wait until the writer has committed at least *transactions* in total."""
        deadline = time.monotonic() + within
        while self.transactions < transactions:
            if self._error is not None or not self._thread.is_alive():
                self.stop()
            assert time.monotonic() < deadline, "the app writer made no progress"
            await asyncio.sleep(0.05)


# --- comparing the stores ------------------------------------------------------------------

def _norm(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "bool":
        return bool(value)
    if kind == "real":
        return float(value)
    if kind == "json":
        return json.loads(value) if isinstance(value, str) else value
    if kind == "blob":
        return bytes(value)
    if kind == "uuid":
        return uuid.UUID(str(value))
    if kind == "datetime":
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def sqlite_rows(path: Path, spec: Spec) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        cols = ", ".join(q(c) for c, _ in spec.columns)
        key = "rowid" if spec.key == (ROWID,) else ", ".join(q(k) for k in spec.key)
        out = {}
        for row in conn.execute(f"SELECT {key}, {cols} FROM {q(spec.name)}"):
            nkey = len(spec.key)
            values = tuple(_norm(kind, v) for (_, kind), v in zip(spec.columns, row[nkey:], strict=True))
            kinds = dict(spec.columns)
            out[tuple(_norm(kinds.get(k, "int"), v) for k, v in zip(spec.key, row[:nkey], strict=True))] \
                = values
        return out
    finally:
        conn.close()


async def pg_rows(pg: asyncpg.Connection, spec: Spec) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    cols = ", ".join(q(c) for c, _ in spec.columns)
    key = "_syncd_rowid" if spec.key == (ROWID,) else ", ".join(q(k) for k in spec.key)
    kinds = dict(spec.columns)
    out = {}
    for rec in await pg.fetch(f"SELECT {key}, {cols} FROM public.{q(spec.name)}"):
        row = tuple(rec)
        nkey = len(spec.key)
        values = tuple(_norm(kind, v) for (_, kind), v in zip(spec.columns, row[nkey:], strict=True))
        out[tuple(_norm(kinds.get(k, "int"), v) for k, v in zip(spec.key, row[:nkey], strict=True))] \
            = values
    return out


async def differences(path: Path, pg: asyncpg.Connection, specs: Sequence[Spec] = SPECS,
                      limit: int = 20) -> list[str]:
    """Every row that differs between SQLite and PostgreSQL (up to *limit* per table)."""
    out: list[str] = []
    for spec in specs:
        src = await asyncio.to_thread(sqlite_rows, path, spec)
        dst = await pg_rows(pg, spec)
        diffs: list[str] = []
        for k in sorted(src.keys() - dst.keys(), key=repr):
            diffs.append(f"{spec.name} {k}: missing in PostgreSQL")
        for k in sorted(dst.keys() - src.keys(), key=repr):
            diffs.append(f"{spec.name} {k}: extra in PostgreSQL")
        for k in sorted(src.keys() & dst.keys(), key=repr):
            if src[k] != dst[k]:
                cols = [f"{c}: SQLite {_short(a)} != PostgreSQL {_short(b)}"
                        for (c, _), a, b in zip(spec.columns, src[k], dst[k], strict=True) if a != b]
                diffs.append(f"{spec.name} {k}: {'; '.join(cols)}")
        out += diffs[:limit]
        if len(diffs) > limit:
            out.append(f"{spec.name}: ... {len(diffs) - limit} more")
    return out


def table_counts(path: Path, specs: Sequence[Spec] = SPECS) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {s.name: conn.execute(f"SELECT count(*) FROM {q(s.name)}").fetchone()[0] for s in specs}
    finally:
        conn.close()


async def open_rejects(pg: asyncpg.Connection) -> list[str]:
    if not await pg.fetchval("SELECT to_regclass('syncd.rejects') IS NOT NULL"):
        return []
    rows = await pg.fetch("SELECT object, key::text, error FROM syncd.rejects "
                          "WHERE resolved_at IS NULL ORDER BY id LIMIT 20")
    return [f"{r['object']} {r['key']}: {r['error']}" for r in rows]


# --- watching syncd ------------------------------------------------------------------------

def write_config(path: Path, *, sqlite: Path, dsn: str, state_dir: Path, extra: str = "",
                 target: Mapping[str, Any] | None = None, **stream: Any) -> Path:
    """A syncd.toml like the ``make_config`` fixture's, with any [target] and [stream] keys."""
    options = {"poll_interval": 0.2, "prune_interval": 0.5, **stream}
    lines = ["[source.sqlite]", f'path = "{sqlite}"', "", "[target]", f'dsn = "{dsn}"']
    lines += [f"{k} = {v!r}" for k, v in (target or {}).items()]
    lines += ["", "[state]", f'dir = "{state_dir}"', "", "[health]", 'listen = "127.0.0.1:0"', "",
              "[stream]"]
    lines += [f"{k} = {v!r}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class Daemon:
    """``syncd --config FILE run`` as a real process, its output in a log file."""

    def __init__(self, config: Path, log: Path, *, kill_at: str | None = None,
                 args: Sequence[str] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SYNCD_KILL_AT"}
        if kill_at:
            env["SYNCD_KILL_AT"] = kill_at
        self.log = log
        with log.open("ab") as out:
            out.write(f"--- syncd run {' '.join(args)} kill_at={kill_at}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(syncd_cmd("--config", str(config), "run", *args),
                                         stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait(self, within: float = 60) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"syncd did not exit within {within} s:\n{self.tail()}") from None

    async def terminate(self, within: float = 60) -> int:
        """SIGTERM, then the exit code (a hang past *within* fails the test)."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(within)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def ensure_alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"syncd exited with {code}:\n{self.tail()}"


async def stored_checkpoint(pg: asyncpg.Connection) -> tuple[int, dict[str, Any] | None] | None:
    """(position, snapshot state) as syncd committed them, or None before the first."""
    if not await pg.fetchval("SELECT to_regclass('syncd.checkpoints') IS NOT NULL"):
        return None
    row = await pg.fetchrow("SELECT position, snapshot::text FROM syncd.checkpoints WHERE stream = 'sqlite'")
    if row is None:
        return None
    return int(row["position"]), json.loads(row["snapshot"]) if row["snapshot"] else None


def changelog_after(path: Path, position: int) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM _syncd_changelog WHERE id > ?",
                                (position,)).fetchone()[0])
    finally:
        conn.close()


async def wait_caught_up(pg: asyncpg.Connection, path: Path, daemon: Daemon | None = None,
                         within: float = 120) -> int:
    """Wait until the snapshot is complete and no change is pending; return the checkpoint."""
    deadline = time.monotonic() + within
    while True:
        if daemon is not None:
            daemon.ensure_alive()
        cp = await stored_checkpoint(pg)
        if cp is not None and (cp[1] is None or cp[1].get("complete")):
            if await asyncio.to_thread(changelog_after, path, cp[0]) == 0:
                return cp[0]
        assert time.monotonic() < deadline, \
            f"not caught up after {within} s (checkpoint {cp})" + (f":\n{daemon.tail()}" if daemon else "")
        await asyncio.sleep(0.2)


async def status_json(config: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd("--config", str(config), "status", "--json"), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"syncd status exited {proc.returncode}: {err.decode()}"
    data: dict[str, Any] = json.loads(out)
    return data


def sqlite_scalar(path: Path, sql: str, params: Sequence[Any] = ()) -> Any:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def describe(diffs: Sequence[str], *extra: str) -> str:
    return "\n".join([*diffs[:60], *extra])
