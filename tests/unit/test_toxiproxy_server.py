"""The in-tree Toxiproxy, driven by the real ``toxiproxy-python`` client over a TCP echo server.

With ``TOXIPROXY_URL`` set, the same tests run against a real Toxiproxy (which
must be able to reach 127.0.0.1 of this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from toxiproxy.exceptions import InvalidToxic, NotFound

from tests.toxiproxy_server import VERSION, start_toxiproxy_server, toxiproxy_api, use_client


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with toxiproxy_api() as url:
        yield url


@pytest.fixture
def client(api_url: str) -> Iterator[Any]:
    tp = use_client(api_url)
    yield tp
    tp.destroy_all()


@pytest.fixture
def proxy(client: Any, echo: str, request: pytest.FixtureRequest) -> Any:
    return client.create(upstream=echo, name=request.node.name[:40], listen="127.0.0.1:0")


def port_of(proxy: Any) -> int:
    return int(proxy.listen.rpartition(":")[2])


def connect(proxy: Any, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def test_version_and_proxy_listing(client: Any, proxy: Any, echo: str) -> None:
    assert client.version(), "a real Toxiproxy answers with its own version"
    listed = client.proxies()
    assert listed[proxy.name].upstream == echo
    assert listed[proxy.name].enabled is True
    assert port_of(proxy) > 0, "listen 127.0.0.1:0 is answered with the real port"


def test_data_passes_through_untouched(proxy: Any) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x" * 200_000) < 2.0


def test_latency_is_added_downstream_and_upstream(proxy: Any) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.15
        proxy.add_toxic(type="latency", attributes={"latency": 300})
        assert 0.29 <= roundtrip(sock) < 1.0, "toxics apply to open connections too"
        proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 200})
        assert 0.49 <= roundtrip(sock) < 1.2
        proxy.destroy_toxic("latency_downstream")
        proxy.destroy_toxic("latency_upstream")
        assert roundtrip(sock) < 0.15


def test_jitter_stays_within_bounds(proxy: Any) -> None:
    proxy.add_toxic(type="latency", attributes={"latency": 200, "jitter": 100})
    with connect(proxy) as sock:
        times = [roundtrip(sock) for _ in range(5)]
    assert all(0.09 <= t < 0.6 for t in times), times


def test_toxicity_zero_never_applies(proxy: Any) -> None:
    proxy.add_toxic(type="latency", toxicity=0.0, attributes={"latency": 1000})
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.5


def test_reset_peer_resets_the_connection(proxy: Any) -> None:
    proxy.add_toxic(type="reset_peer", attributes={"timeout": 200})
    with connect(proxy) as sock:
        start = time.monotonic()
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
            sock.recv(10)  # a FIN would give b"" here; an RST raises
        assert time.monotonic() - start >= 0.19


def test_timeout_hangs_then_closes(proxy: Any) -> None:
    proxy.add_toxic(type="timeout", attributes={"timeout": 600})
    with connect(proxy, timeout=0.3) as sock:
        start = time.monotonic()
        sock.sendall(b"hello")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        sock.settimeout(3)
        assert sock.recv(10) == b"", "closed, and the data was dropped"
        assert time.monotonic() - start >= 0.55


def test_timeout_zero_hangs_until_the_toxic_is_removed(proxy: Any) -> None:
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    with connect(proxy, timeout=0.8) as sock:
        sock.sendall(b"hello")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.destroy_toxic("timeout_downstream")
        sock.settimeout(3)
        assert sock.recv(10) == b""


def test_limit_data_cuts_after_that_many_bytes(proxy: Any) -> None:
    proxy.add_toxic(type="limit_data", attributes={"bytes": 10})
    with connect(proxy) as sock:
        sock.sendall(b"0123456789abcdefghij")
        assert recv_exactly(sock, 20) == b"0123456789"


def test_bandwidth_limits_the_rate(proxy: Any) -> None:
    proxy.add_toxic(type="bandwidth", attributes={"rate": 20})  # 20 KB/s
    with connect(proxy) as sock:
        elapsed = roundtrip(sock, b"z" * 10_000)
    assert 0.4 <= elapsed < 2.0


def test_disable_refuses_connections_and_enable_restores(proxy: Any) -> None:
    with connect(proxy) as sock:
        roundtrip(sock)
        proxy.disable()
        sock.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b"", "open connections are closed"
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.enable()
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.5


def test_down_context(proxy: Any) -> None:
    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
    with connect(proxy) as sock:
        roundtrip(sock)


def test_reset_removes_toxics_and_enables_proxies(client: Any, proxy: Any) -> None:
    proxy.add_toxic(type="latency", attributes={"latency": 1000})
    proxy.disable()
    client.reset()
    assert proxy.toxics() == {}
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.5


def test_toxic_listing_and_update(api_url: str, proxy: Any) -> None:
    proxy.add_toxic(type="latency", name="slow", attributes={"latency": 500})
    toxic = proxy.get_toxic("slow")
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes["latency"] == 500
    resp = requests.post(f"{api_url}/proxies/{proxy.name}/toxics/slow",
                         json={"attributes": {"latency": 50}}, timeout=5)
    assert resp.status_code == 200
    assert resp.json()["attributes"]["latency"] == 50
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.4


def test_api_errors_match_toxiproxy(api_url: str, client: Any, proxy: Any, echo: str) -> None:
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="explode")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="latency", stream="sideways")
    with pytest.raises(NotFound):
        proxy.destroy_toxic("nope")
    resp = requests.post(f"{api_url}/proxies", timeout=5,
                         json={"name": proxy.name, "upstream": echo, "listen": "127.0.0.1:0"})
    assert resp.status_code == 409
    assert resp.json()["error"] == "proxy already exists"
    resp = requests.post(f"{api_url}/proxies", json={"name": "x"}, timeout=5)
    assert resp.status_code == 400
    assert requests.get(f"{api_url}/proxies/ghost", timeout=5).status_code == 404
    proxy.add_toxic(type="latency", name="dup")
    resp = requests.post(f"{api_url}/proxies/{proxy.name}/toxics", timeout=5,
                         json={"name": "dup", "type": "latency"})
    assert resp.status_code == 409


def test_populate_creates_and_keeps(client: Any, echo: str) -> None:
    created = client.populate([{"name": "pop_a", "upstream": echo, "listen": "127.0.0.1:0"},
                               {"name": "pop_b", "upstream": echo, "listen": "127.0.0.1:0"}])
    assert sorted(p.name for p in created) == ["pop_a", "pop_b"]
    with connect(client.get_proxy("pop_b")) as sock:
        roundtrip(sock)


def test_destroy_closes_the_listener(client: Any, proxy: Any) -> None:
    port = port_of(proxy)
    client.destroy(proxy)
    assert client.get_proxy(proxy.name) is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


async def test_usable_from_asyncio(proxy: Any) -> None:
    proxy.add_toxic(type="latency", attributes={"latency": 200})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    start = time.monotonic()
    writer.write(b"async")
    await writer.drain()
    assert await reader.readexactly(5) == b"async"
    assert time.monotonic() - start >= 0.19
    writer.close()
    await writer.wait_closed()


def test_toxiproxy_api_prefers_a_real_server_from_the_environment() -> None:
    with toxiproxy_api({"TOXIPROXY_URL": "http://toxiproxy.example:8474/"}) as url:
        assert url == "http://toxiproxy.example:8474"


def test_start_and_stop_leave_nothing_listening() -> None:
    handle = start_toxiproxy_server()
    assert requests.get(f"{handle.url}/version", timeout=5).json() == {"version": VERSION}
    handle.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{handle.url}/version", timeout=2)
    handle.stop()  # idempotent
