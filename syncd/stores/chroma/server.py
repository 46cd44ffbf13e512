"""Chroma over HTTP, and the rules for touching a persist directory.

:class:`ChromaServer` reads item contents the log no longer holds (vectors of
items written before Chroma purged their log rows), through ``HttpClient``, on
a worker thread of its own. chromadb is imported only here, and only when a
Chroma source is configured.

A persist directory must have exactly one process writing it: two
``PersistentClient`` processes (or a server and a ``PersistentClient``) on one
directory overwrite each other's index. :func:`find_openers` lists the
processes that have ``chroma.sqlite3`` open (Linux ``/proc``);
:class:`PrivateServer` is the ``chroma run`` syncd starts for a directory that
nothing else uses (topology "persist directory only"), so that syncd itself
never opens a ``PersistentClient``: Chroma's bundled SQLite and Python's, in
one process, would break each other's POSIX locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import structlog

from syncd.errors import ConfigError, SourceError, SourceUnavailable, SyncdError
from syncd.ports.collections import Vector
from syncd.stores.chroma.log import SQLITE_FILE

log = structlog.get_logger("syncd.source.chroma")
T = TypeVar("T")
GET_BATCH = 1000


def _translate(exc: BaseException, where: str) -> SyncdError:
    if isinstance(exc, SyncdError):
        return exc
    name = type(exc).__name__
    text = str(exc) or name
    module = type(exc).__module__
    if module.startswith(("httpx", "httpcore")) or isinstance(exc, OSError | TimeoutError):
        return SourceUnavailable(f"{where}: Chroma server unreachable: {text}")
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    if isinstance(status, int) and status >= 500:
        return SourceUnavailable(f"{where}: Chroma server error: {text}")
    if "auth" in name.lower():
        return SourceError(f"{where}: the Chroma server refused syncd: {text}; check its credentials")
    return SourceError(f"{where}: {name}: {text}")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    ssl: bool

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"source.chroma.url: expected http(s)://host:port, got {url!r}")
        ssl = parts.scheme == "https"
        try:
            port = parts.port or (443 if ssl else 8000)
        except ValueError as exc:
            raise ConfigError(f"source.chroma.url: bad port in {url!r}") from exc
        return cls(host=parts.hostname, port=port, ssl=ssl)

    def __str__(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"


class ChromaServer:
    """A Chroma server, for what the log cannot give. Blocking client calls run on one thread."""

    def __init__(self, address: ServerAddress, tenant: str, database: str) -> None:
        self.address = address
        self.tenant = tenant
        self.database = database
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-chroma-http")
        self._client: Any = None
        self._collections: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, tenant: str, database: str) -> ChromaServer:
        server = cls(ServerAddress.parse(url), tenant, database)
        try:
            await server.call(server._connect)
        except BaseException:
            server._executor.shutdown(wait=False)
            raise
        return server

    def _connect(self) -> None:
        import chromadb
        from chromadb.config import Settings

        for name in ("httpx", "httpcore"):  # one line per request at INFO: noise, not events
            logging.getLogger(name).setLevel(logging.WARNING)

        self._client = chromadb.HttpClient(
            host=self.address.host, port=self.address.port, ssl=self.address.ssl, tenant=self.tenant,
            database=self.database, settings=Settings(anonymized_telemetry=False))
        self._client.heartbeat()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            raise _translate(exc, f"Chroma server {self.address}") from exc

    async def close(self) -> None:
        self._executor.shutdown(wait=False)

    def _list(self) -> dict[str, str]:
        cols = self._client.list_collections()
        self._collections = {str(c.id): c for c in cols}
        return {cid: c.name for cid, c in self._collections.items()}

    async def collections(self) -> dict[str, str]:
        """The server's collections in syncd's tenant / database: id -> name."""
        return await self.call(self._list)

    def _get_vectors(self, collection_id: str, ids: Sequence[str]) -> dict[str, Vector | None]:
        col = self._collections.get(collection_id)
        if col is None:
            self._list()
            col = self._collections.get(collection_id)
            if col is None:
                return {}  # the collection is gone
        out: dict[str, Vector | None] = {}
        for i in range(0, len(ids), GET_BATCH):
            got = col.get(ids=list(ids[i:i + GET_BATCH]), include=["embeddings"])
            for item_id, emb in zip(got["ids"], got["embeddings"], strict=True):
                out[item_id] = None if emb is None else as_float32(emb)
        return out

    async def get_vectors(self, collection_id: str, ids: Sequence[str]) -> dict[str, Vector | None]:
        """The vectors Chroma returns for *ids*; an id it does not hold is absent from the result."""
        return await self.call(self._get_vectors, collection_id, list(ids))


def as_float32(values: Any) -> Vector:
    arr = np.asarray(values)
    if arr.dtype == object:  # Chroma returns null for components it cannot represent
        arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float32)
    return arr.astype(np.float32, copy=False)


# --- who uses a persist directory ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Openers:
    pids: list[int]
    names: dict[int, str] = field(default_factory=dict)
    unreadable: int = 0
    """Processes whose open files syncd may not read (other users')."""


def find_openers(directory: Path, exclude: Sequence[int] = ()) -> Openers:
    """Processes, other than *exclude* and this one, that have the directory's ``chroma.sqlite3`` open."""
    target = os.path.realpath(directory / SQLITE_FILE)
    skip = {os.getpid(), *exclude}
    pids: list[int] = []
    names: dict[int, str] = {}
    unreadable = 0
    proc = Path("/proc")
    if not proc.is_dir():
        raise SourceError("cannot tell which processes use the Chroma directory (no /proc): run `chroma run "
                          f"--path {directory}` and set source.chroma.url")
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            fds = os.listdir(entry / "fd")
        except PermissionError:
            unreadable += 1
            continue
        except OSError:
            continue  # exited
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) == target:
                    pid = int(entry.name)
                    pids.append(pid)
                    with contextlib.suppress(OSError):
                        names[pid] = (entry / "comm").read_text().strip()
                    break
            except OSError:
                continue
    return Openers(pids=sorted(pids), names=names, unreadable=unreadable)


def ensure_unused(directory: Path, exclude: Sequence[int] = ()) -> None:
    """Refuse (SourceError) when another process may be using the persist directory."""
    found = find_openers(directory, exclude)
    serve = (f"serve the directory with one Chroma server — `chroma run --path {directory} --port 8000` — "
             "point the app at it (chromadb.HttpClient), and set source.chroma.url = "
             "\"http://127.0.0.1:8000\" next to source.chroma.path")
    if found.pids:
        who = ", ".join(f"{pid} ({found.names.get(pid, '?')})" for pid in found.pids)
        raise SourceError(
            f"Chroma directory {directory} is in use by process {who}; syncd does not open a directory that "
            f"another process uses (two processes on one Chroma directory corrupt its index): {serve}")
    if found.unreadable:
        db = directory / SQLITE_FILE
        st = db.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise SourceError(
                f"cannot verify that no other process uses Chroma directory {directory} "
                f"({found.unreadable} processes of other users are not visible to syncd, and {db} is "
                f"writable by others): {serve}")


# --- the private server ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


class PrivateServer:
    """``chroma run`` on a loopback port, started by syncd for a directory no one else uses."""

    def __init__(self, directory: Path, log_file: Path) -> None:
        self.directory = directory
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _start(self, timeout: float) -> str:
        port = _free_port()
        code = ("import sys; from chromadb.cli.cli import app; "
                f"sys.argv = ['chroma', 'run', '--path', {str(self.directory)!r}, '--host', '127.0.0.1', "
                f"'--port', '{port}']; app()")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SourceError(f"`chroma run --path {self.directory}` exited with code "
                                  f"{self.process.returncode}; see {self.log_file}")
            if _heartbeat(self.url):
                return self.url
            time.sleep(0.1)
        self._stop()
        raise SourceError(f"`chroma run --path {self.directory}` did not answer within {timeout:g} s; "
                          f"see {self.log_file}")

    async def start(self, timeout: float = 60.0) -> str:
        return await asyncio.to_thread(self._start, timeout)

    def _stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)
