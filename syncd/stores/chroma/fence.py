"""The Chroma fence: after `syncd cutover`, Chroma refuses the app's writes until `syncd rollback`.

Chroma logs every item write (add / update / upsert / delete) as rows of
``embeddings_queue`` in ``chroma.sqlite3`` before applying it, in the same
transaction. A ``BEFORE INSERT`` trigger on that table that raises makes the whole
write fail and roll back: the app's ``PersistentClient`` gets
``chromadb.errors.InternalError`` carrying the fence's message (over HTTP, a
server answers 500 with it), and nothing of the write is kept. Reads keep working.
Collection create / rename / delete are fenced the same way (triggers on
``collections`` and ``collection_metadata``). Chroma purges the queue with
``DELETE``, which is not fenced.

The reverse stream (pgvector → Chroma) must still write while the fence is up. It
does so with *tickets*: before each write it inserts into ``syncd_fence_gate`` one
row per log row it is about to cause — (topic, item id, operation, float32 vector
bytes) — and the trigger lets through an insert that matches a ticket; an
``AFTER INSERT`` trigger consumes the ticket, and the stream deletes what is left
of its tickets after the write. The residual race: while a ticket is open (the
duration of one Chroma call), an app write of *the same id, same operation and
bit-identical vector* would pass. Nothing else does.

A Chroma reached only over HTTP (no ``source.chroma.path``) cannot be fenced:
:func:`unfenceable_reason` says so, and the app must stop writing itself.

Everything here runs in syncd's process with Python's ``sqlite3``, never next to a
``PersistentClient`` in the same process (their POSIX locks would not see each
other); each call is one short transaction with a 5 s busy timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncd.config import Config
from syncd.errors import SourceBusy, SourceError, SyncdError
from syncd.stores.chroma.log import SQLITE_FILE

FENCE_TRIGGER = "syncd_fence"
TICKET_TRIGGER = "syncd_fence_ticket"
COLLECTION_TRIGGERS = ("syncd_fence_collections_insert", "syncd_fence_collections_delete",
                       "syncd_fence_collections_rename", "syncd_fence_collection_metadata_insert",
                       "syncd_fence_collection_metadata_delete")
GATE_TABLE = "syncd_fence_gate"
DEFAULT_MESSAGE = ("syncd: this Chroma store is fenced: the app was cut over to pgvector; "
                   "run `syncd rollback` to return")
BUSY_TIMEOUT = 5.0

_MATCH = (f"SELECT rowid FROM {GATE_TABLE} g WHERE g.topic = NEW.topic AND g.id = NEW.id "
          "AND g.operation = NEW.operation AND g.vector IS NEW.vector")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One log row the reverse stream is about to make Chroma write."""

    topic: str
    id: str
    operation: int
    vector: bytes | None


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fence_sql(message: str) -> list[str]:
    raise_ = f"SELECT RAISE(ABORT, {_sql_text(message)});"
    collections = [
        ("syncd_fence_collections_insert", "BEFORE INSERT ON collections"),
        ("syncd_fence_collections_delete", "BEFORE DELETE ON collections"),
        ("syncd_fence_collections_rename", "BEFORE UPDATE OF name ON collections"),
        ("syncd_fence_collection_metadata_insert", "BEFORE INSERT ON collection_metadata"),
        ("syncd_fence_collection_metadata_delete", "BEFORE DELETE ON collection_metadata"),
    ]
    return [
        f"""CREATE TABLE IF NOT EXISTS {GATE_TABLE} (
                token     TEXT NOT NULL,
                topic     TEXT NOT NULL,
                id        TEXT NOT NULL,
                operation INTEGER NOT NULL,
                vector    BLOB)""",
        f"CREATE INDEX IF NOT EXISTS {GATE_TABLE}_item ON {GATE_TABLE} (topic, id)",
        f"""CREATE TRIGGER {FENCE_TRIGGER} BEFORE INSERT ON embeddings_queue
            WHEN NOT EXISTS ({_MATCH})
            BEGIN {raise_} END""",
        f"""CREATE TRIGGER {TICKET_TRIGGER} AFTER INSERT ON embeddings_queue
            BEGIN DELETE FROM {GATE_TABLE} WHERE rowid = ({_MATCH} LIMIT 1); END""",
        *(f"CREATE TRIGGER {name} {when} BEGIN {raise_} END" for name, when in collections),
    ]


@contextlib.contextmanager
def _connect(persist_dir: Path) -> Iterator[sqlite3.Connection]:
    db = Path(persist_dir) / SQLITE_FILE
    if not db.is_file():
        raise SourceError(f"{db} does not exist: source.chroma.path must be Chroma's persist directory")
    try:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open {db}: {exc}") from exc
    try:
        yield conn
    except SyncdError:
        raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise SourceBusy(f"{db}: {exc}") from exc
        raise SourceError(f"{db}: {exc}") from exc
    except sqlite3.Error as exc:
        raise SourceError(f"{db}: {exc}") from exc
    finally:
        conn.close()


def _triggers(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def install_fence(persist_dir: Path, message: str = DEFAULT_MESSAGE) -> None:
    """Fence the Chroma store in *persist_dir* (idempotent: an existing fence is rebuilt with
    *message*). Takes effect at once for running Chroma processes, without a restart."""
    with _connect(persist_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = _triggers(conn)
            for name in (FENCE_TRIGGER, TICKET_TRIGGER, *COLLECTION_TRIGGERS):
                if name in have:
                    conn.execute(f"DROP TRIGGER {name}")
            for sql in _fence_sql(message):
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def remove_fence(persist_dir: Path) -> None:
    """Drop the fence (idempotent); Chroma accepts writes again at once."""
    with _connect(persist_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name in (FENCE_TRIGGER, TICKET_TRIGGER, *COLLECTION_TRIGGERS):
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            conn.execute(f"DROP TABLE IF EXISTS {GATE_TABLE}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def fence_installed(persist_dir: Path) -> bool:
    with _connect(persist_dir) as conn:
        return FENCE_TRIGGER in _triggers(conn)


def unfenceable_reason(config: Config) -> str | None:
    """Why the configured Chroma cannot be fenced (None when it can)."""
    c = config.chroma
    if c is None or c.path is not None:
        return None
    return (f"Chroma is reached only over HTTP ({c.url}); syncd fences Chroma through its persist "
            "directory (source.chroma.path), so it cannot fence this one: the app must stop writing to "
            "Chroma itself before the cutover")


def open_gate(persist_dir: Path, tickets: Sequence[Ticket]) -> str | None:
    """Let the log rows of *tickets* through the fence; return the token for :func:`close_gate`
    (None when no fence is installed: nothing to open)."""
    if not tickets:
        return None
    token = uuid.uuid4().hex
    with _connect(persist_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if FENCE_TRIGGER not in _triggers(conn):
                conn.execute("ROLLBACK")
                return None
            conn.executemany(
                f"INSERT INTO {GATE_TABLE} (token, topic, id, operation, vector) VALUES (?, ?, ?, ?, ?)",
                [(token, t.topic, t.id, t.operation, t.vector) for t in tickets])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return token


def close_gate(persist_dir: Path, token: str | None) -> None:
    """Withdraw the tickets of *token* that no write consumed."""
    if token is None:
        return
    with _connect(persist_dir) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (GATE_TABLE,)).fetchone():
            conn.execute(f"DELETE FROM {GATE_TABLE} WHERE token = ?", (token,))
