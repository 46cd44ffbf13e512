"""The reference app's stores, chosen by its ``.env``: SQLite or PostgreSQL for the tables,
Chroma or pgvector (or none) for the embeddings.

Each store applies one :class:`Write` as one transaction and raises on refusal; the app
decides whether to retry. Blocking clients (sqlite3, chromadb) run in a worker thread so
that signals are handled while a write waits on a lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg

from syncd.cutover.appconfig import read_text_values

ENV_KEYS = (
    "RELATIONAL_DB_PROVIDER", "RELATIONAL_DB_DATABASE", "RELATIONAL_DB_URL", "RELATIONAL_DB_HOST",
    "RELATIONAL_DB_PORT", "RELATIONAL_DB_USERNAME", "RELATIONAL_DB_PASSWORD", "VECTOR_DB_PROVIDER",
    "VECTOR_DB_CHROMA_PATH", "VECTOR_DB_CHROMA_URL", "VECTOR_DB_DIMENSIONS", "VECTOR_DB_COLLECTION",
    "VECTOR_DB_TABLE",
)

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,
                                  created_at DATETIME);
CREATE TABLE IF NOT EXISTS documents (id TEXT PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                                      title TEXT, body TEXT, updated_at DATETIME);
"""
TABLE_COLUMNS = {"users": ("id", "email", "name", "created_at"),
                 "documents": ("id", "user_id", "title", "body", "updated_at")}


@dataclass(frozen=True)
class Write:
    """One application write: the full intended row image (None for deletes)."""

    n: int
    op: str  # insert | update | delete (tables); upsert | delete (collection)
    object: str
    key: Any
    row: dict[str, Any] | None


@dataclass(frozen=True)
class Settings:
    relational: str
    sqlite_path: Path | None
    pg_dsn: str | None
    vector: str
    chroma_path: Path | None
    chroma_url: str | None
    dimensions: int
    collection: str
    vector_table: str

    @classmethod
    def load(cls, env_file: Path, default_dim: int) -> Settings:
        values = read_text_values(env_file.read_text(), "env", ENV_KEYS, where=str(env_file))
        get: Mapping[str, str | None] = values
        relational = (get["RELATIONAL_DB_PROVIDER"] or "sqlite").lower()
        if relational not in ("sqlite", "postgres"):
            raise SystemExit(f"{env_file}: RELATIONAL_DB_PROVIDER={relational!r}: expected sqlite or "
                             "postgres")
        vector = (get["VECTOR_DB_PROVIDER"] or "none").lower()
        if vector not in ("chromadb", "pgvector", "none"):
            raise SystemExit(f"{env_file}: VECTOR_DB_PROVIDER={vector!r}: expected chromadb, pgvector "
                             "or none")
        database = get["RELATIONAL_DB_DATABASE"]
        sqlite_path = None
        if relational == "sqlite":
            if not database:
                raise SystemExit(f"{env_file}: RELATIONAL_DB_DATABASE (the SQLite file) is not set")
            sqlite_path = (env_file.parent / database).resolve()
        dsn = get["RELATIONAL_DB_URL"]
        if dsn is None and get["RELATIONAL_DB_HOST"]:
            user = get["RELATIONAL_DB_USERNAME"] or "postgres"
            password = f":{get['RELATIONAL_DB_PASSWORD']}" if get["RELATIONAL_DB_PASSWORD"] else ""
            dsn = (f"postgresql://{user}{password}@{get['RELATIONAL_DB_HOST']}:"
                   f"{get['RELATIONAL_DB_PORT'] or 5432}/{database or 'postgres'}")
        if dsn is None and (relational == "postgres" or vector == "pgvector"):
            raise SystemExit(f"{env_file}: set RELATIONAL_DB_URL or RELATIONAL_DB_HOST for PostgreSQL")
        chroma_path = get["VECTOR_DB_CHROMA_PATH"]
        collection = get["VECTOR_DB_COLLECTION"] or "embeddings"
        return cls(relational=relational, sqlite_path=sqlite_path, pg_dsn=dsn, vector=vector,
                   chroma_path=(env_file.parent / chroma_path).resolve() if chroma_path else None,
                   chroma_url=get["VECTOR_DB_CHROMA_URL"],
                   dimensions=int(get["VECTOR_DB_DIMENSIONS"] or default_dim), collection=collection,
                   vector_table=get["VECTOR_DB_TABLE"] or collection)


class Store(Protocol):
    name: str

    async def apply(self, write: Write) -> None: ...

    async def close(self) -> None: ...


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
        return self._conn

    def _apply(self, write: Write) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = write.row
            if write.op == "insert" and row is not None:
                cols = TABLE_COLUMNS[write.object]
                conn.execute(f"INSERT INTO {write.object} ({', '.join(cols)}) VALUES "
                             f"({', '.join('?' * len(cols))})", [row[c] for c in cols])
            elif write.op == "update" and row is not None:
                conn.execute("UPDATE documents SET title = ?, updated_at = ? WHERE id = ?",
                             (row["title"], row["updated_at"], write.key))
            elif write.op == "delete":
                conn.execute(f"DELETE FROM {write.object} WHERE id = ?", (write.key,))
            else:
                raise ValueError(f"unknown write {write}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def apply(self, write: Write) -> None:
        await asyncio.to_thread(self._apply, write)

    def init_schema(self) -> None:
        self._connect().executescript(SQLITE_SCHEMA)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)


def _pg_value(value: Any, data_type: str) -> Any:
    """A JSON-safe image value as the column's type wants it."""
    if value is None:
        return None
    if data_type.startswith("timestamp"):
        parsed = dt.datetime.fromisoformat(value)
        if data_type == "timestamp with time zone" and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed
    if data_type == "date":
        return dt.date.fromisoformat(value)
    if data_type in ("bigint", "integer", "smallint"):
        return int(value)
    if data_type in ("double precision", "real", "numeric"):
        return float(value)
    if data_type in ("json", "jsonb"):
        return json.dumps(value)
    return str(value)


class PostgresStore:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._types: dict[str, dict[str, str]] = {}

    async def _connect(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self.dsn, timeout=5)
            rows = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ANY($1::text[])", list(TABLE_COLUMNS))
            self._types = {}
            for r in rows:
                self._types.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
            self._conn = conn
        return self._conn

    async def apply(self, write: Write) -> None:
        try:
            conn = await self._connect()
            types = self._types.get(write.object)
            if types is None:
                raise RuntimeError(f"table {write.object} does not exist in PostgreSQL")
            row, key = write.row, _pg_value(write.key, types["id"])
            if write.op == "insert" and row is not None:
                cols = TABLE_COLUMNS[write.object]
                await conn.execute(f"INSERT INTO {write.object} ({', '.join(cols)}) VALUES "
                                   f"({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                                   *[_pg_value(row[c], types[c]) for c in cols])
            elif write.op == "update" and row is not None:
                await conn.execute("UPDATE documents SET title = $1, updated_at = $2 WHERE id = $3",
                                   row["title"], _pg_value(row["updated_at"], types["updated_at"]), key)
            elif write.op == "delete":
                await conn.execute(f"DELETE FROM {write.object} WHERE id = $1", key)
            else:
                raise ValueError(f"unknown write {write}")
        except (OSError, TimeoutError, asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.ConnectionDoesNotExistError):
            await self.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (OSError, asyncpg.PostgresError, asyncpg.exceptions.InterfaceError, TimeoutError):
                conn.terminate()


def vector_text(embedding: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in embedding) + "]"


class PgvectorStore:
    name = "pgvector"

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn = dsn
        self.table = '"' + table.replace('"', '""') + '"'
        self._conn: asyncpg.Connection | None = None

    async def apply(self, write: Write) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=5)
            row = write.row
            if write.op == "upsert" and row is not None:
                await self._conn.execute(
                    f"INSERT INTO {self.table} (id, embedding, document, metadata) "
                    "VALUES ($1, $2::text::vector, $3, $4::jsonb) ON CONFLICT (id) DO UPDATE SET "
                    "embedding = EXCLUDED.embedding, document = EXCLUDED.document, "
                    "metadata = EXCLUDED.metadata",
                    write.key, vector_text(row["embedding"]), row["document"], json.dumps(row["metadata"]))
            elif write.op == "delete":
                await self._conn.execute(f"DELETE FROM {self.table} WHERE id = $1", write.key)
            else:
                raise ValueError(f"unknown write {write}")
        except (OSError, TimeoutError, asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.ConnectionDoesNotExistError):
            await self.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (OSError, asyncpg.PostgresError, asyncpg.exceptions.InterfaceError, TimeoutError):
                conn.terminate()


_KEPT: dict[tuple[Path | None, str | None], Any] = {}


def chroma_client(path: Path | None, url: str | None, *, keep: bool = False) -> Any:
    """A Chroma client for *path* or *url*; with *keep*, the one made before for them, if any
    (building a ``chromadb.HttpClient`` takes ~75 ms here: httpx loads the CA bundle twice)."""
    if keep and (path, url) in _KEPT:
        return _KEPT[(path, url)]
    client = _new_chroma_client(path, url)
    if keep:
        _KEPT[(path, url)] = client
    return client


def _new_chroma_client(path: Path | None, url: str | None) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if path is not None:
        return chromadb.PersistentClient(path=str(path), settings=settings)
    if url is None:
        raise SystemExit("VECTOR_DB_PROVIDER=chromadb needs VECTOR_DB_CHROMA_PATH or VECTOR_DB_CHROMA_URL")
    parts = urlsplit(url)
    return chromadb.HttpClient(host=parts.hostname or "localhost", port=parts.port or 8000,
                               ssl=parts.scheme == "https", settings=settings)


class ChromaStore:
    name = "chromadb"

    def __init__(self, path: Path | None, url: str | None, collection: str, *,
                 keep_client: bool = False) -> None:
        self.path, self.url, self.collection_name = path, url, collection
        self.keep_client = keep_client
        self._collection: Any = None

    def _get(self) -> Any:
        if self._collection is None:
            client = chroma_client(self.path, self.url, keep=self.keep_client)
            self._collection = client.get_collection(self.collection_name, embedding_function=None)
        return self._collection

    def _apply(self, write: Write) -> None:
        try:
            collection = self._get()
            row = write.row
            if write.op == "upsert" and row is not None:
                collection.upsert(ids=[write.key], embeddings=[row["embedding"]], documents=[row["document"]],
                                  metadatas=[row["metadata"]])
            elif write.op == "delete":
                collection.delete(ids=[write.key])
            else:
                raise ValueError(f"unknown write {write}")
        except ValueError:
            raise
        except Exception:
            self._collection = None  # reconnect on the next attempt
            raise

    async def apply(self, write: Write) -> None:
        await asyncio.to_thread(self._apply, write)

    def init_schema(self) -> None:
        client = chroma_client(self.path, self.url)
        client.get_or_create_collection(self.collection_name, embedding_function=None,
                                        configuration={"hnsw": {"space": "cosine"}})

    async def close(self) -> None:
        self._collection = None


def open_stores(settings: Settings, *, keep_clients: bool = False) -> tuple[Store, Store | None]:
    """The stores *settings* name; *keep_clients*: reuse a Chroma client made before for the
    same URL or directory (an app that keeps its clients across reloads)."""
    relational: Store
    if settings.relational == "sqlite":
        assert settings.sqlite_path is not None
        relational = SqliteStore(settings.sqlite_path)
    else:
        assert settings.pg_dsn is not None
        relational = PostgresStore(settings.pg_dsn)
    vector: Store | None = None
    if settings.vector == "chromadb":
        vector = ChromaStore(settings.chroma_path, settings.chroma_url, settings.collection,
                             keep_client=keep_clients)
    elif settings.vector == "pgvector":
        assert settings.pg_dsn is not None
        vector = PgvectorStore(settings.pg_dsn, settings.vector_table)
    return relational, vector
