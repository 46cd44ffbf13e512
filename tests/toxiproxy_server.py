"""An in-tree server speaking the Toxiproxy HTTP API, with real TCP proxying.

Fault tests drive it with the ``toxiproxy-python`` client exactly as they would
drive Shopify's Toxiproxy; when ``TOXIPROXY_URL`` is set, :func:`toxiproxy_api`
hands out that real server instead. It runs in a thread with its own event
loop, so synchronous and asyncio tests can both use it.

    API        /version, /reset, /populate, /proxies[/{name}[/toxics[/{toxic}]]]
    toxics     latency (latency, jitter ms)       bandwidth (rate KB/s)
               timeout (timeout ms; 0 = forever)  limit_data (bytes)
               reset_peer (timeout ms, then RST)
    each with stream upstream (client -> server) or downstream, and toxicity.

Like Toxiproxy, toxics act on open connections too, in the order they were
added; a timeout toxic drops data and closes the connection when it fires or
is removed; a disabled proxy closes its connections and stops listening.
Unlike Toxiproxy, a timeout's clock starts once, when it first applies to a
connection (Toxiproxy restarts it on every chunk it drops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Any
from urllib.parse import unquote, urlsplit

VERSION = "2.9.0+syncd-in-tree"
DIRECTIONS = ("upstream", "downstream")
TOXIC_DEFAULTS: dict[str, dict[str, int]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "limit_data": {"bytes": 0},
}
_CHUNK = 32 * 1024
_serials = count(1)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, float]
    serial: int = field(default_factory=lambda: next(_serials))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": dict(self.attributes)}

    def ms(self, key: str) -> float:
        return float(self.attributes.get(key, 0)) / 1000.0


_EOF = object()
_WAKE = object()


class Pipe:
    """One direction of one connection: read chunks, run them through the toxics, write."""

    def __init__(self, link: Link, direction: str, src: asyncio.StreamReader,
                 dst: asyncio.StreamWriter) -> None:
        self.link, self.direction, self.src, self.dst = link, direction, src, dst
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=16)
        self.wake = asyncio.Event()
        self.sent: dict[int, int] = {}  # limit_data toxic serial -> bytes let through
        self._get: asyncio.Future[Any] | None = None

    async def read(self) -> None:
        try:
            while data := await self.src.read(_CHUNK):
                await self.queue.put((time.monotonic(), data))
        except (ConnectionError, OSError):
            pass
        await self.queue.put(_EOF)

    async def next(self, within: float | None = None) -> object:
        """The next (timestamp, bytes) chunk, _EOF, or _WAKE when toxics changed / timed out."""
        if self._get is None:
            self._get = asyncio.ensure_future(self.queue.get())
        waker: asyncio.Future[Any] = asyncio.ensure_future(self.wake.wait())
        try:
            done, _ = await asyncio.wait({self._get, waker}, timeout=within,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
        if self._get in done:
            item, self._get = self._get.result(), None
            return item
        return _WAKE

    async def run(self) -> None:
        try:
            await self._run()
        except (ConnectionError, OSError):
            self.link.close()
        finally:
            if self._get is not None:
                self._get.cancel()

    async def _run(self) -> None:
        while True:
            self.wake.clear()
            toxics = self.link.toxics(self.direction)
            timeout = next((t for t in toxics if t.type == "timeout"), None)
            if timeout is not None:
                await self._timeout(timeout)
                return
            item = await self.next()
            if item is _WAKE:
                continue
            if item is _EOF:
                self.link.half_close(self)
                return
            assert isinstance(item, tuple)
            received, data = item
            if not await self._forward(toxics, received, data):
                return

    async def _forward(self, toxics: list[Toxic], received: float, data: bytes) -> bool:
        """Apply *toxics* to one chunk and write it; False once the connection is gone."""
        reset = next((t for t in toxics if t.type == "reset_peer"), None)
        if reset is not None:
            await asyncio.sleep(reset.ms("timeout"))
            self.link.close(reset=True)
            return False
        limit_hit = False
        rate = 0.0
        for toxic in toxics:
            if toxic.type == "latency":
                jitter = toxic.ms("jitter")
                delay = toxic.ms("latency") + random.uniform(-jitter, jitter)
                await asyncio.sleep(max(0.0, received + delay - time.monotonic()))
            elif toxic.type == "limit_data":
                left = int(toxic.attributes["bytes"]) - self.sent.get(toxic.serial, 0)
                data = data[:max(0, left)]
                self.sent[toxic.serial] = self.sent.get(toxic.serial, 0) + len(data)
                limit_hit = limit_hit or len(data) >= left
            elif toxic.type == "bandwidth":
                rate = float(toxic.attributes["rate"]) * 1000.0
        await self._write(data, rate)
        if limit_hit:
            self.link.close()
            return False
        return True

    async def _write(self, data: bytes, rate: float) -> None:
        step = max(1, int(rate / 10)) if rate > 0 else len(data) or 1
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            if rate > 0:
                await asyncio.sleep(len(piece) / rate)
            self.dst.write(piece)
            await self.dst.drain()

    async def _timeout(self, toxic: Toxic) -> None:
        """Drop everything; close when the timeout fires or the toxic goes away."""
        deadline = time.monotonic() + toxic.ms("timeout") if toxic.ms("timeout") > 0 else None
        while any(t is toxic for t in self.link.toxics(self.direction)):
            self.wake.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            item = await self.next(within=left)
            if item is _EOF:
                break
        self.link.close()


class Link:
    """One proxied connection: a client socket, an upstream socket, two pipes."""

    def __init__(self, proxy: Proxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.writers = (client[1], upstream[1])
        self.pipes = {"upstream": Pipe(self, "upstream", client[0], upstream[1]),
                      "downstream": Pipe(self, "downstream", upstream[0], client[1])}
        self.tasks: set[asyncio.Task[None]] = set()
        self.applies: dict[int, bool] = {}  # toxic serial -> drawn against its toxicity
        self.done: set[str] = set()
        self.closed = False

    async def run(self) -> None:
        for pipe in self.pipes.values():
            self.tasks.add(asyncio.create_task(pipe.read()))
            self.tasks.add(asyncio.create_task(pipe.run()))
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    def toxics(self, direction: str) -> list[Toxic]:
        out = []
        for toxic in self.proxy.toxics.values():
            if toxic.stream != direction:
                continue
            if toxic.serial not in self.applies:
                self.applies[toxic.serial] = random.random() < toxic.toxicity
            if self.applies[toxic.serial]:
                out.append(toxic)
        return out

    def wake(self) -> None:
        for pipe in self.pipes.values():
            pipe.wake.set()

    def half_close(self, pipe: Pipe) -> None:
        self.done.add(pipe.direction)
        if len(self.done) == 2:
            self.close()
        elif pipe.dst.can_write_eof():
            with contextlib.suppress(OSError):
                pipe.dst.write_eof()

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        for writer in self.writers:
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str) -> None:
        self.name, self.listen, self.upstream = name, listen, upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self._server: asyncio.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.to_json() for t in self.toxics.values()]}

    async def start(self) -> None:
        if self._server is not None:
            return
        host, port = _split(self.listen)
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError as exc:
            raise ApiError(500, f"listen {self.listen}: {exc.strerror}") from exc
        bound = self._server.sockets[0].getsockname()
        self.listen = f"{host}:{bound[1]}"  # port 0 becomes the real port, kept on re-enable
        self.enabled = True

    async def stop(self) -> None:
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for link in list(self.links):
            link.close()

    def changed(self) -> None:
        for link in list(self.links):
            link.wake()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port = _split(self.upstream)
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
        except (OSError, TimeoutError):
            writer.close()
            return
        link = Link(self, (reader, writer), upstream)
        self.links.add(link)
        await link.run()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"bad request body: attribute {name} must be a number")
    return value


class ToxiproxyServer:
    """The API and the proxies; every method runs on the server's own event loop."""

    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self._api: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._api = await asyncio.start_server(self._http, host, port)
        return int(self._api.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._api is not None:
            self._api.close()
        for proxy in list(self.proxies.values()):
            await proxy.stop()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            try:
                status, payload = await self.handle(method, urlsplit(target).path, body)
            except ApiError as exc:
                status, payload = exc.status, {"error": str(exc), "status": exc.status}
            data = b"" if payload is None else json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise ApiError(400, f"bad request body: {exc}") from exc
        match method, parts:
            case "GET", ["version"]:
                return 200, {"version": VERSION}
            case "POST", ["reset"]:
                for proxy in self.proxies.values():
                    proxy.toxics.clear()
                    proxy.changed()
                    await proxy.start()
                return 204, None
            case "POST", ["populate"]:
                return 201, {"proxies": [await self._populate(p) for p in _list(data)]}
            case "GET", ["proxies"]:
                return 200, {name: p.to_json() for name, p in self.proxies.items()}
            case "POST", ["proxies"]:
                return 201, (await self._create(_object(data))).to_json()
            case "GET", ["proxies", name]:
                return 200, self._proxy(name).to_json()
            case "POST" | "PATCH", ["proxies", name]:
                return 200, (await self._update(self._proxy(name), _object(data))).to_json()
            case "DELETE", ["proxies", name]:
                await self._proxy(name).stop()
                del self.proxies[name]
                return 204, None
            case "GET", ["proxies", name, "toxics"]:
                return 200, [t.to_json() for t in self._proxy(name).toxics.values()]
            case "POST", ["proxies", name, "toxics"]:
                return 200, self._add_toxic(self._proxy(name), _object(data)).to_json()
            case "GET", ["proxies", name, "toxics", toxic]:
                return 200, self._toxic(name, toxic).to_json()
            case "POST" | "PATCH", ["proxies", name, "toxics", toxic]:
                return 200, self._update_toxic(name, toxic, _object(data)).to_json()
            case "DELETE", ["proxies", name, "toxics", toxic]:
                self._toxic(name, toxic)
                del self.proxies[name].toxics[toxic]
                self.proxies[name].changed()
                return 204, None
        raise ApiError(404, f"no route for {method} {path}")

    def _proxy(self, name: str) -> Proxy:
        if name not in self.proxies:
            raise ApiError(404, "proxy not found")
        return self.proxies[name]

    def _toxic(self, proxy: str, name: str) -> Toxic:
        toxics = self._proxy(proxy).toxics
        if name not in toxics:
            raise ApiError(404, "toxic not found")
        return toxics[name]

    async def _create(self, data: Mapping[str, Any]) -> Proxy:
        for key in ("name", "upstream"):
            if not data.get(key):
                raise ApiError(400, f"missing required field: {key}")
        if data["name"] in self.proxies:
            raise ApiError(409, "proxy already exists")
        proxy = Proxy(str(data["name"]), str(data.get("listen") or "127.0.0.1:0"),
                      str(data["upstream"]))
        if data.get("enabled", True):
            await proxy.start()
        self.proxies[proxy.name] = proxy
        return proxy

    async def _update(self, proxy: Proxy, data: Mapping[str, Any]) -> Proxy:
        listen, upstream = data.get("listen", proxy.listen), data.get("upstream", proxy.upstream)
        enabled = data.get("enabled", proxy.enabled)
        if (listen, upstream) != (proxy.listen, proxy.upstream) or not enabled:
            await proxy.stop()
            proxy.listen, proxy.upstream = str(listen), str(upstream)
        if enabled:
            await proxy.start()
        return proxy

    async def _populate(self, data: Mapping[str, Any]) -> dict[str, Any]:
        old = self.proxies.get(str(data.get("name")))
        if old is not None and (old.listen, old.upstream) == (data.get("listen"),
                                                              data.get("upstream")):
            return old.to_json()
        if old is not None:
            await old.stop()
            del self.proxies[old.name]
        return (await self._create({**data, "enabled": True})).to_json()

    def _add_toxic(self, proxy: Proxy, data: Mapping[str, Any]) -> Toxic:
        kind = data.get("type")
        if kind not in TOXIC_DEFAULTS:
            raise ApiError(400, f"invalid toxic type: {kind}")
        stream = data.get("stream") or "downstream"
        if stream not in DIRECTIONS:
            raise ApiError(400, "stream was invalid, can be either upstream or downstream")
        name = str(data.get("name") or f"{kind}_{stream}")
        if name in proxy.toxics:
            raise ApiError(409, "toxic already exists")
        attributes = {k: _number(k, v) for k, v in
                      {**TOXIC_DEFAULTS[kind], **_object(data.get("attributes") or {})}.items()}
        toxic = Toxic(name, kind, stream, _number("toxicity", data.get("toxicity", 1.0)),
                      attributes)
        proxy.toxics[name] = toxic
        proxy.changed()
        return toxic

    def _update_toxic(self, proxy: str, name: str, data: Mapping[str, Any]) -> Toxic:
        toxic = self._toxic(proxy, name)
        for key, value in _object(data.get("attributes") or {}).items():
            toxic.attributes[key] = _number(key, value)
        if "toxicity" in data:
            toxic.toxicity = _number("toxicity", data["toxicity"])
        self.proxies[proxy].changed()
        return toxic


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, "bad request body: expected a JSON object")
    return value


def _list(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise ApiError(400, "bad request body: expected a JSON array")
    return [_object(v) for v in value]


class ToxiproxyHandle:
    """A server running in a background thread; ``stop()`` ends it."""

    def __init__(self, host: str, port: int) -> None:
        self.server = ToxiproxyServer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="toxiproxy",
                                        daemon=True)
        self._thread.start()
        self.host = host
        self.port = self._call(self.server.start(host, port))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def stop(self) -> None:
        if not self._loop.is_closed():
            self._call(self.server.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> ToxiproxyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_toxiproxy_server(port: int = 0, host: str = "127.0.0.1") -> ToxiproxyHandle:
    """Start the in-tree server on *host*:*port* (0: a free port) in its own thread."""
    return ToxiproxyHandle(host, port)


@contextlib.contextmanager
def toxiproxy_api(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The URL of a Toxiproxy API: ``TOXIPROXY_URL`` if set, else an in-tree server's.

    A real server is shared: its proxies are not removed here. Use as a session
    fixture: ``with toxiproxy_api() as url: yield url``.
    """
    url = (os.environ if env is None else env).get("TOXIPROXY_URL")
    if url:
        yield url.rstrip("/")
        return
    with start_toxiproxy_server() as handle:
        yield handle.url


def use_client(url: str) -> Any:
    """Point the ``toxiproxy-python`` client (global host/port) at *url*; return a client."""
    from toxiproxy import Toxiproxy

    parts = urlsplit(url)
    client = Toxiproxy()
    client.update_api_consumer(parts.hostname or "127.0.0.1", parts.port or 8474)
    return client
