"""Writing to a Chroma server for the reverse stream: chromadb's ``HttpClient`` on a thread of
its own, and which of its errors mean the server is unavailable (retried) rather than a
refused item."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from syncd.errors import FatalError, SourceUnavailable
from syncd.model import Change
from syncd.stores.chroma.server import ServerAddress

T = TypeVar("T")


@dataclass(slots=True)
class Write:
    """One upsert: the metadata sets the row's keys and removes (None) the ones it lost."""

    id: str
    vector: np.ndarray
    document: str | None
    metadata: dict[str, Any] | None
    change: Change
    digest: str = ""


class ChromaWriter:
    """Writes through chromadb's ``HttpClient`` (as :class:`~syncd.stores.chroma.server.ChromaServer`
    reads), blocking calls on one thread of its own."""

    def __init__(self, url: str, tenant: str, database: str) -> None:
        self.address = ServerAddress.parse(url)
        self.tenant = tenant
        self.database = database
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-chroma-write")
        self._client: Any = None
        self._collections: dict[str, Any] = {}

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _connect(self) -> None:
        import chromadb
        from chromadb.config import Settings

        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._client = chromadb.HttpClient(
            host=self.address.host, port=self.address.port, ssl=self.address.ssl, tenant=self.tenant,
            database=self.database, settings=Settings(anonymized_telemetry=False))
        self._client.heartbeat()

    async def connect(self) -> None:
        try:
            await self.call(self._connect)
        except Exception as exc:
            raise SourceUnavailable(f"connecting to the Chroma server {self.address}: {exc}") from exc

    async def close(self) -> None:
        self._executor.shutdown(wait=False)

    def heartbeat(self) -> None:
        self._client.heartbeat()

    def collection(self, collection_id: str) -> Any:
        col = self._collections.get(collection_id)
        if col is None:
            self._collections = {str(c.id): c for c in self._client.list_collections()}
            col = self._collections.get(collection_id)
            if col is None:
                raise FatalError(f"Chroma collection {collection_id} no longer exists on {self.address}; "
                                 "its reverse stream cannot go on")
        return col

    def delete(self, collection_id: str, ids: list[str]) -> None:
        self.collection(collection_id).delete(ids=ids)

    def upsert(self, collection_id: str, writes: list[Write]) -> None:
        kw: dict[str, Any] = {"ids": [w.id for w in writes],
                              "embeddings": np.stack([w.vector for w in writes])}
        if writes[0].metadata is not None:
            kw["metadatas"] = [w.metadata for w in writes]
        if writes[0].document is not None:
            kw["documents"] = [w.document for w in writes]
        self.collection(collection_id).upsert(**kw)


def is_unavailable(exc: BaseException) -> bool:
    module = type(exc).__module__
    if module.startswith(("httpx", "httpcore")) or isinstance(exc, OSError | TimeoutError):
        return True
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    return isinstance(status, int) and status >= 500
