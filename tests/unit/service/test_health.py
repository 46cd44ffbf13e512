"""The health server, spoken to over real TCP on a free port."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd.errors import ConfigError
from syncd.model import Phase
from syncd.service.health import HealthServer, Liveness, parse_listen, serve, tick
from syncd.status import StreamStatus

SECRET = "hunter2-s3cret"
DSN = f"postgresql://syncd:{SECRET}@db.internal:5432/app"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Streams:
    """What the supervisor would hand the server: a callable over the current statuses."""

    def __init__(self, *statuses: StreamStatus) -> None:
        self.statuses: list[StreamStatus] = list(statuses)

    def __call__(self) -> Sequence[StreamStatus]:
        return list(self.statuses)


def streaming(name: str, lag: float = 0.2, **kw: Any) -> StreamStatus:
    return StreamStatus(name=name, phase=Phase.STREAMING, lag_seconds=lag, pending=3, **kw)


async def request(server: HealthServer, path: str, method: str = "GET",
                  raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    line = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    writer.write(raw or line.encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


async def get_json(server: HealthServer, path: str) -> tuple[int, Any]:
    status, headers, body = await request(server, path)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def streams() -> Streams:
    return Streams()


@pytest.fixture
async def liveness(clock: Clock) -> Liveness:
    return Liveness(stale_after=60, clock=clock)


@pytest.fixture
async def server(streams: Streams, liveness: Liveness, clock: Clock) -> AsyncIterator[HealthServer]:
    srv = await serve("127.0.0.1:0", streams, liveness, max_lag_seconds=5.0, version="9.9.9",
                      clock=clock)
    yield srv
    await srv.close()


# --- Liveness -------------------------------------------------------------------------------

def test_liveness_flags_a_duty_that_stopped_beating(clock: Clock) -> None:
    live = Liveness(stale_after=60, clock=clock)
    live.beat("stream:a")
    live.beat("stream:b")
    clock.now += 30
    live.beat("stream:a")
    clock.now += 45
    assert live.stuck() == {"stream:b": "no heartbeat for 75.0 s (limit 60 s)"}
    assert not live.healthy()
    live.forget("stream:b")
    assert live.healthy()


def test_busy_suspends_the_staleness_limit_until_its_own(clock: Clock) -> None:
    live = Liveness(stale_after=10, clock=clock)
    live.beat("stream:docs")
    with live.busy("stream:docs", "building HNSW index", limit=100):
        clock.now += 50
        assert live.healthy()
        assert live.report()["busy"]["stream:docs"]["doing"] == "building HNSW index"
        clock.now += 60
        assert live.stuck() == {"stream:docs": "building HNSW index for 110.0 s (limit 100 s)"}
    assert live.healthy(), "leaving the block counts as a beat"
    with live.busy("stream:docs", "waiting for lock"):
        clock.now += 10_000
        assert live.healthy()


def test_observe_beats_on_every_status_and_forgets_ended_streams(clock: Clock) -> None:
    live = Liveness(stale_after=10, clock=clock)
    live.observe(streaming("a"))
    live.observe(StreamStatus(name="b", phase=Phase.SNAPSHOT))
    clock.now += 11
    live.observe(streaming("a"))
    assert live.stuck() == {"b": "no heartbeat for 11.0 s (limit 10 s)"}
    live.observe(StreamStatus(name="b", phase=Phase.FAILED, last_error="boom"))
    assert live.healthy()
    assert list(live.ages()) == ["a"]


def test_liveness_rejects_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="stale_after"):
        Liveness(stale_after=0)


async def test_tick_beats_the_event_loop() -> None:
    live = Liveness(stale_after=1)
    task = asyncio.create_task(tick(live, interval=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live.ages()["event-loop"] < 0.5
    assert live.loop_lag >= 0.0


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8085", ("127.0.0.1", 8085)),
    ("[::1]:9000", ("::1", 9000)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8085", ":8085", "127.0.0.1:http", "127.0.0.1:70000"])
def test_parse_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^health\.listen: expected host:port"):
        parse_listen(listen)


async def test_listen_failure_is_a_config_error_naming_the_key(server: HealthServer) -> None:
    with pytest.raises(ConfigError, match=r"^health\.listen: cannot listen"):
        await serve(f"127.0.0.1:{server.port}", Streams(), Liveness())


# --- /healthz -------------------------------------------------------------------------------

async def test_healthz_is_200_while_every_duty_beats(server: HealthServer, liveness: Liveness,
                                                     clock: Clock) -> None:
    liveness.beat("event-loop")
    liveness.beat("stream:sqlite")
    clock.now += 2
    status, body = await get_json(server, "/healthz")
    assert status == 200
    assert body["alive"] is True
    assert body["heartbeats"] == {"event-loop": 2.0, "stream:sqlite": 2.0}


async def test_healthz_is_503_naming_the_stuck_duty(server: HealthServer, liveness: Liveness,
                                                    clock: Clock) -> None:
    liveness.beat("stream:sqlite")
    clock.now += 61
    liveness.beat("event-loop")
    status, body = await get_json(server, "/healthz")
    assert status == 503
    assert body["alive"] is False
    assert body["stuck"] == {"stream:sqlite": "no heartbeat for 61.0 s (limit 60 s)"}


async def test_a_blocked_event_loop_answers_nothing(server: HealthServer) -> None:
    """Documented behaviour: a probe times out; that timeout is the failure signal."""
    outcome: list[str] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=0.3)
            outcome.append("answered")
        except (TimeoutError, urllib.error.URLError):
            outcome.append("timeout")

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop on purpose: nothing can answer
    await asyncio.to_thread(thread.join)
    assert outcome == ["timeout"]


# --- /readyz --------------------------------------------------------------------------------

async def test_readyz_without_streams(server: HealthServer) -> None:
    status, body = await get_json(server, "/readyz")
    assert status == 503
    assert body == {"ready": False, "reason": "no streams running", "streams": {}}


async def test_readyz_200_when_every_stream_is_ready(server: HealthServer,
                                                     streams: Streams) -> None:
    streams.statuses = [streaming("sqlite->postgres"), streaming("chroma->pgvector", lag=4.9)]
    assert await get_json(server, "/readyz") == (200, {"ready": True})


async def test_readyz_503_names_each_stream_and_why(server: HealthServer, streams: Streams) -> None:
    streams.statuses = [
        streaming("ok"),
        StreamStatus(name="slow", phase=Phase.STREAMING, lag_seconds=12.5, pending=1500),
        StreamStatus(name="snap", phase=Phase.SNAPSHOT, snapshot_copied=450, snapshot_total=1000),
        StreamStatus(name="down", phase=Phase.STREAMING, degraded=True,
                     last_error=f"cannot connect to {DSN}"),
    ]
    status, body = await get_json(server, "/readyz")
    assert status == 503
    assert body["ready"] is False
    assert body["streams"] == {
        "slow": "lag 12.5 s over the limit of 5 s (1,500 changes behind)",
        "snap": "snapshot at 45 %",
        "down": "degraded: cannot connect to postgresql://syncd:***@db.internal:5432/app",
    }


# --- /status --------------------------------------------------------------------------------

async def test_status_lists_streams_version_and_uptime(server: HealthServer, streams: Streams,
                                                       clock: Clock) -> None:
    streams.statuses = [streaming("a", applied=10), StreamStatus(name="b", phase=Phase.CATCH_UP)]
    clock.now += 12.5
    status, body = await get_json(server, "/status")
    assert status == 200
    assert body["version"] == "9.9.9"
    assert body["uptime_seconds"] == 12.5
    assert [s["name"] for s in body["streams"]] == ["a", "b"]
    assert body["streams"][0]["phase"] == "streaming"
    assert body["streams"][0]["applied"] == 10
    assert body["streams"][1]["phase"] == "catch-up"


async def test_no_endpoint_leaks_a_password(server: HealthServer, streams: Streams,
                                            liveness: Liveness) -> None:
    streams.statuses = [StreamStatus(name="s", phase=Phase.FAILED,
                                     last_error=f"lost {DSN}; retry with password={SECRET}")]
    liveness.beat("s")
    for path in ("/status", "/readyz", "/healthz", "/metrics"):
        _, _, body = await request(server, path)
        assert SECRET not in body.decode(), path
    _, body_json = await get_json(server, "/status")
    assert body_json["streams"][0]["last_error"] == (
        "lost postgresql://syncd:***@db.internal:5432/app; retry with password=***")


async def test_non_finite_numbers_become_null(server: HealthServer, streams: Streams) -> None:
    streams.statuses = [streaming("a", lag=float("inf"))]
    status, body = await get_json(server, "/status")
    assert status == 200
    assert body["streams"][0]["lag_seconds"] is None


# --- /metrics -------------------------------------------------------------------------------

async def test_metrics_read_the_statuses_at_scrape_time(server: HealthServer, streams: Streams,
                                                        liveness: Liveness) -> None:
    liveness.beat("event-loop")
    streams.statuses = [
        streaming("fwd", lag=1.5, applied=120, rejects=2, retries=3, last_checkpoint_at=1.7e9),
        StreamStatus(name="snap", phase=Phase.SNAPSHOT, snapshot_copied=40, snapshot_total=100,
                     degraded=True),
    ]
    status, headers, body = await request(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("syncd_lag_seconds", stream="fwd") == 1.5
    assert ("syncd_lag_seconds", (("stream", "snap"),)) not in samples
    assert value("syncd_pending_changes", stream="fwd") == 3
    assert value("syncd_changes_applied_total", stream="fwd") == 120
    assert value("syncd_rejects_total", stream="fwd") == 2
    assert value("syncd_retries_total", stream="fwd") == 3
    assert value("syncd_snapshot_rows_copied", stream="snap") == 40
    assert value("syncd_snapshot_rows_expected", stream="snap") == 100
    assert value("syncd_last_checkpoint_timestamp_seconds", stream="fwd") == 1.7e9
    assert value("syncd_degraded", stream="snap") == 1
    assert value("syncd_degraded", stream="fwd") == 0
    assert value("syncd_phase", stream="fwd", phase="streaming") == 1
    assert value("syncd_phase", stream="fwd", phase="snapshot") == 0
    assert value("syncd_phase", stream="snap", phase="snapshot") == 1
    assert value("syncd_build_info", version="9.9.9") == 1
    assert ("syncd_heartbeat_age_seconds", (("duty", "event-loop"),)) in samples

    streams.statuses = [streaming("fwd", applied=121)]
    _, _, body = await request(server, "/metrics")
    assert "syncd_changes_applied_total{stream=\"fwd\"} 121.0" in body.decode()
    assert 'stream="snap"' not in body.decode()


# --- HTTP details ---------------------------------------------------------------------------

async def test_unknown_path_is_404(server: HealthServer) -> None:
    status, body = await get_json(server, "/admin")
    assert status == 404
    assert "/readyz" in body["endpoints"]


async def test_query_strings_are_ignored(server: HealthServer) -> None:
    status, _ = await get_json(server, "/readyz?verbose=1")
    assert status == 503


async def test_only_get_and_head(server: HealthServer) -> None:
    status, headers, _ = await request(server, "/healthz", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


async def test_head_sends_headers_without_body(server: HealthServer) -> None:
    status, headers, body = await request(server, "/status", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


async def test_garbage_is_400(server: HealthServer) -> None:
    status, _, _ = await request(server, "/", raw=b"HELLO\r\n\r\n")
    assert status == 400


async def test_a_failing_status_source_is_500_without_details(liveness: Liveness) -> None:
    def broken() -> Sequence[StreamStatus]:
        raise RuntimeError(f"boom {DSN}")

    srv = await serve("127.0.0.1:0", broken, liveness)
    try:
        status, _, body = await request(srv, "/status")
        assert status == 500
        assert b"boom" not in body and SECRET.encode() not in body
        status, _, _ = await request(srv, "/healthz")
        assert status == 200, "liveness does not depend on the status source"
    finally:
        await srv.close()


async def test_a_standard_client_can_read_it(server: HealthServer, streams: Streams) -> None:
    streams.statuses = [streaming("a")]

    def fetch() -> tuple[int, Any]:
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())

    assert await asyncio.to_thread(fetch) == (200, {"ready": True})


async def test_close_drops_idle_connections(streams: Streams, liveness: Liveness) -> None:
    srv = await serve("127.0.0.1:0", streams, liveness)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes the request
    await writer.drain()
    await asyncio.wait_for(srv.close(), timeout=2)
    assert await asyncio.wait_for(reader.read(), timeout=2) == b""
    writer.close()


async def test_a_slow_client_does_not_hold_up_others(server: HealthServer) -> None:
    """A client that dribbles its request (slowloris) holds its own connection, nobody else's."""
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    try:
        for _ in range(3):
            status, _, _ = await asyncio.wait_for(request(server, "/healthz"), timeout=5)
            assert status == 200
            writer.write(b"a")
            await writer.drain()
    finally:
        writer.close()


@pytest.mark.parametrize("header_bytes", [20_000, 200_000])
async def test_oversized_headers_are_refused_and_the_server_stays_up(server: HealthServer,
                                                                     header_bytes: int) -> None:
    raw = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"
    status, _, body = await request(server, "/status", raw=raw)
    assert 400 <= status < 500
    assert b"streams" not in body
    status, _, _ = await request(server, "/healthz")
    assert status == 200


async def test_many_connections_at_once_are_all_answered(server: HealthServer, streams: Streams) -> None:
    streams.statuses = [streaming("a")]
    answers = await asyncio.wait_for(
        asyncio.gather(*(request(server, "/readyz") for _ in range(200))), timeout=60)
    assert [status for status, _, _ in answers] == [200] * 200
    assert all(json.loads(body) == {"ready": True} for _, _, body in answers)
