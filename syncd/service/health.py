"""The health HTTP server: liveness, readiness, status JSON and Prometheus metrics.

    GET /healthz   200 while every registered duty beats (Liveness); 503 names the stuck one
    GET /readyz    200 when every stream is ready for cutover; 503 names each stream and why
    GET /status    every stream's StreamStatus as JSON, with version, uptime and the daemon's
                   identity (which config it serves: :mod:`syncd.service.identity`)
    GET /metrics   Prometheus text format, read from the StreamStatus list at scrape time

Served by aiohttp's web server (request parsing, header limits, concurrent connections,
graceful close); this module only answers paths. Streams and the event-loop ticker call
:meth:`Liveness.beat`; the server only reads. A stuck event loop cannot answer at all:
a probe must use a timeout and count it as a failure (systemd's watchdog covers the same case from inside).
Every string that leaves here goes through :func:`syncd.errors.redact` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from syncd import __version__
from syncd.errors import ConfigError, redact
from syncd.model import Phase
from syncd.status import StreamStatus

log = structlog.get_logger(__name__)

Statuses = Callable[[], Sequence[StreamStatus]]

LOOP = "event-loop"
"""The Liveness name the loop ticker beats under."""

_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus version scrapes."""
_MAX_LINE_BYTES = 8 * 1024
_MAX_HEADER_BYTES = 16 * 1024
_KEEPALIVE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Busy:
    doing: str
    since: float
    limit: float | None


class Liveness:
    """Heartbeats of the daemon's long-running duties (one per stream, plus the loop).

    A duty is registered by its first :meth:`beat` and is *stuck* once it has not
    beaten for ``stale_after`` seconds. A duty that ends on purpose calls
    :meth:`forget`; one that dies without doing so stops beating and so is caught.
    An operation that legitimately cannot beat for long (an HNSW index build)
    runs inside :meth:`busy`.
    """

    def __init__(self, stale_after: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if stale_after <= 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after}")
        self.stale_after = stale_after
        self._clock = clock
        self._beats: dict[str, float] = {}
        self._busy: dict[str, _Busy] = {}
        self.loop_lag: float = 0.0
        """How late the loop ticker last woke up, in seconds."""

    def beat(self, name: str) -> None:
        self._beats[name] = self._clock()

    def forget(self, name: str) -> None:
        """*name* ended on purpose: stop expecting beats from it."""
        self._beats.pop(name, None)
        self._busy.pop(name, None)

    def observe(self, status: StreamStatus) -> None:
        """Use as a stream's ``on_progress``: every published status is a beat.

        Streams publish after every chunk, batch, idle poll and retry, so a live
        stream beats at least every poll interval. A stopped or failed stream is
        forgotten: it is not stuck (/readyz reports a failure).
        """
        if status.phase in (Phase.STOPPED, Phase.FAILED):
            self.forget(status.name)
        else:
            self.beat(status.name)

    @contextlib.contextmanager
    def busy(self, name: str, doing: str, limit: float | None = None) -> Iterator[None]:
        """Within this block *name* is stuck only after *limit* seconds (never if None)."""
        self._busy[name] = _Busy(doing, self._clock(), limit)
        try:
            yield
        finally:
            self._busy.pop(name, None)
            self.beat(name)

    def ages(self) -> dict[str, float]:
        """Seconds since each duty last beat."""
        now = self._clock()
        return {name: now - at for name, at in sorted(self._beats.items())}

    def stuck(self) -> dict[str, str]:
        """Each stuck duty, with why, e.g. ``no heartbeat for 75.2 s (limit 60 s)``."""
        now, out = self._clock(), {}
        for name, age in self.ages().items():
            busy = self._busy.get(name)
            if busy is not None:
                took = now - busy.since
                if busy.limit is not None and took > busy.limit:
                    out[name] = f"{busy.doing} for {took:.1f} s (limit {busy.limit:g} s)"
            elif age > self.stale_after:
                out[name] = f"no heartbeat for {age:.1f} s (limit {self.stale_after:g} s)"
        return out

    def healthy(self) -> bool:
        return not self.stuck()

    def report(self) -> dict[str, Any]:
        """The /healthz body."""
        now, stuck = self._clock(), self.stuck()
        body: dict[str, Any] = {
            "alive": not stuck,
            "heartbeats": {name: round(age, 3) for name, age in self.ages().items()},
            "stale_after_seconds": self.stale_after,
        }
        if self._busy:
            body["busy"] = {name: {"doing": b.doing, "for_seconds": round(now - b.since, 3)}
                            for name, b in sorted(self._busy.items())}
        if stuck:
            body["stuck"] = stuck
        return body


async def tick(liveness: Liveness, interval: float = 1.0, name: str = LOOP) -> None:
    """Beat *name* every *interval* seconds and record how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while True:
        liveness.beat(name)
        due = loop.time() + interval
        await asyncio.sleep(interval)
        liveness.loop_lag = max(0.0, loop.time() - due)


def parse_listen(listen: str, key: str = "health.listen") -> tuple[str, int]:
    """``"127.0.0.1:8085"`` / ``"[::1]:8085"`` -> (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected host:port, got {listen!r}")
    return host, int(port)


def _clean(value: Any) -> Any:
    """Redact every string and turn non-finite floats into null, recursively."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {redact(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    text = json.dumps(_clean(body), indent=2, allow_nan=False) + "\n"
    return status, "application/json", text.encode()


class StatusCollector:
    """Prometheus collector that reads the current StreamStatus list at scrape time."""

    def __init__(self, statuses: Statuses, liveness: Liveness | None = None,
                 version: str = __version__) -> None:
        self._statuses = statuses
        self._liveness = liveness
        self._version = version

    def collect(self) -> Iterable[Metric]:
        statuses = self._statuses()

        def gauge(name: str, doc: str, attr: Callable[[StreamStatus], float | None]) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["stream"])
            for s in statuses:
                value = attr(s)
                if value is not None:
                    family.add_metric([redact(s.name)], float(value))
            return family

        def counter(name: str, doc: str, attr: Callable[[StreamStatus], int]) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["stream"])
            for s in statuses:
                family.add_metric([redact(s.name)], float(attr(s)))
            return family

        info = GaugeMetricFamily("syncd_build_info", "syncd version (value is always 1)",
                                 labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info
        yield gauge("syncd_lag_seconds", "Age of the oldest change not yet applied",
                    lambda s: s.lag_seconds)
        yield gauge("syncd_pending_changes", "Changes in the source not yet applied",
                    lambda s: s.pending)
        yield counter("syncd_changes_applied", "Changes applied to the sink since start",
                      lambda s: s.applied)
        yield counter("syncd_rejects", "Rows sent to the reject table since start",
                      lambda s: s.rejects)
        yield counter("syncd_retries", "Retries after retryable errors since start",
                      lambda s: s.retries)
        yield gauge("syncd_rows_per_second", "Recent apply rate", lambda s: s.rows_per_second)
        yield gauge("syncd_snapshot_rows_copied", "Rows copied by the snapshot so far",
                    lambda s: s.snapshot_copied)
        yield gauge("syncd_snapshot_rows_expected", "Rows the snapshot expects to copy",
                    lambda s: s.snapshot_total)
        yield gauge("syncd_snapshot_eta_seconds", "Estimated time left in the snapshot",
                    lambda s: s.snapshot_eta_seconds)
        yield gauge("syncd_source_position", "Latest position in the source's change log",
                    lambda s: s.source_position)
        yield gauge("syncd_checkpoint_position", "Position the sink has committed",
                    lambda s: s.checkpoint)
        yield gauge("syncd_last_checkpoint_timestamp_seconds",
                    "Unix time of the last committed checkpoint", lambda s: s.last_checkpoint_at)
        yield gauge("syncd_degraded", "1 while a store is unreachable and the stream retries",
                    lambda s: 1.0 if s.degraded else 0.0)
        phase = GaugeMetricFamily("syncd_phase", "1 for the stream's current phase, else 0",
                                  labels=["stream", "phase"])
        for s in statuses:
            for p in Phase:
                phase.add_metric([redact(s.name), p.value], 1.0 if p is s.phase else 0.0)
        yield phase
        if self._liveness is not None:
            beats = GaugeMetricFamily("syncd_heartbeat_age_seconds",
                                      "Seconds since each duty last beat", labels=["duty"])
            for name, age in self._liveness.ages().items():
                beats.add_metric([redact(name)], age)
            yield beats
            yield GaugeMetricFamily("syncd_event_loop_lag_seconds",
                                    "How late the event loop ticker last woke up",
                                    value=self._liveness.loop_lag)


class HealthServer:
    """A running health server (aiohttp's web server); see :func:`serve`."""

    def __init__(self, statuses: Statuses, liveness: Liveness, *, max_lag_seconds: float,
                 version: str, clock: Callable[[], float], identity: Mapping[str, Any] | None = None) -> None:
        self._identity = dict(identity) if identity is not None else None
        self._statuses = statuses
        self._liveness = liveness
        self._max_lag = max_lag_seconds
        self._version = version
        self._clock = clock
        self._started = clock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(statuses, liveness, version))
        ProcessCollector(registry=self.registry)

    @property
    def host(self) -> str:
        return str(self._sockname()[0])

    @property
    def port(self) -> int:
        return int(self._sockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _sockname(self) -> tuple[Any, ...]:
        server = self._site._server if self._site is not None else None
        if not isinstance(server, asyncio.Server) or not server.sockets:
            raise RuntimeError("health server is not listening")
        return tuple(server.sockets[0].getsockname())

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._request)
        # aiohttp bounds the request line and each header (400 beyond), and reads requests
        # concurrently: a slow or stuck client holds its own connection only.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     max_line_size=_MAX_LINE_BYTES, max_field_size=_MAX_HEADER_BYTES,
                                     keepalive_timeout=_KEEPALIVE_SECONDS, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        try:
            await self._site.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            runner, self._runner, self._site = self._runner, None, None
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            status, content_type, body = _json(405, {"error": "only GET and HEAD"})
            return _response(status, content_type, body, {"Allow": "GET, HEAD"})
        try:
            response = self.handle(request.path)
        except Exception:
            log.exception("health request failed", path=request.path)
            response = _json(500, {"error": "internal error, see the daemon's log"})
        return _response(*response)

    def handle(self, path: str) -> tuple[int, str, bytes]:
        """Answer one GET for *path*: (status, content type, body)."""
        if path == "/healthz":
            report = self._liveness.report()
            return _json(200 if report["alive"] else 503, report)
        if path == "/readyz":
            return self._readyz()
        if path == "/status":
            body: dict[str, Any] = {
                "streams": [s.to_json() for s in self._statuses()],
                "version": self._version,
                "uptime_seconds": round(self._clock() - self._started, 3),
            }
            if self._identity is not None:
                body["identity"] = self._identity
            return _json(200, body)
        if path == "/metrics":
            return 200, _METRICS_TYPE, generate_latest(self.registry)
        return _json(404, {"error": f"no such endpoint: {path}",
                           "endpoints": ["/healthz", "/readyz", "/status", "/metrics"]})

    def _readyz(self) -> tuple[int, str, bytes]:
        statuses = self._statuses()
        if not statuses:
            return _json(503, {"ready": False, "reason": "no streams running", "streams": {}})
        reasons = {s.name: r for s in statuses if (r := s.not_ready_reason(self._max_lag))}
        if reasons:
            return _json(503, {"ready": False, "streams": reasons})
        return _json(200, {"ready": True})


def _response(status: int, content_type: str, body: bytes,
              extra: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers={
        "Content-Type": content_type, "Cache-Control": "no-store", **(extra or {})})


async def serve(listen: str, statuses: Statuses, liveness: Liveness, *,
                max_lag_seconds: float = 5.0, version: str = __version__,
                clock: Callable[[], float] = time.monotonic,
                identity: Mapping[str, Any] | None = None) -> HealthServer:
    """Start the health server on *listen* (``host:port``, port 0 for a free one).

    *statuses* is called on every request and scrape; it must be cheap and must
    not block. Close the returned server with ``await server.close()``.
    """
    host, port = parse_listen(listen)
    server = HealthServer(statuses, liveness, max_lag_seconds=max_lag_seconds,
                          version=version, clock=clock, identity=identity)
    try:
        await server.start(host, port)
    except OSError as exc:
        raise ConfigError(f"health.listen: cannot listen on {listen}: {exc.strerror}") from exc
    log.info("health server listening", url=server.url)
    return server
