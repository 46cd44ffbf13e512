"""sd_notify against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.model import Phase
from syncd.service.notify import Notifier, summarize, watchdog_interval, watchdog_loop
from syncd.status import StreamStatus

SECRET = "hunter2-s3cret"


class Receiver:
    """The systemd end: a bound datagram socket and what arrived on it."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock, self.address = sock, address

    def next(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    async def collect(self, seconds: float) -> list[str]:
        await asyncio.sleep(seconds)
        return self.drain()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # AF_UNIX paths are limited to 108 bytes: keep the directory short.
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        yield Receiver(sock, path)
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"syncd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield Receiver(sock, "@" + name)
    sock.close()


def test_ready_status_watchdog_stopping_arrive_as_datagrams(receiver: Receiver) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": receiver.address})
    assert notifier.enabled
    assert notifier.ready("started 2 streams")
    assert receiver.next() == "READY=1\nSTATUS=started 2 streams"
    assert notifier.watchdog()
    assert receiver.next() == "WATCHDOG=1"
    assert notifier.status("streaming")
    assert receiver.next() == "STATUS=streaming"
    assert notifier.stopping()
    assert receiver.next() == "STOPPING=1"
    notifier.close()
    assert not notifier.enabled


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": abstract_receiver.address})
    assert notifier.ready()
    assert abstract_receiver.next() == "READY=1"


def test_status_is_one_redacted_line(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address)
    notifier.status(f"lost\npostgresql://syncd:{SECRET}@db/app\n  retrying")
    assert receiver.next() == "STATUS=lost postgresql://syncd:***@db/app retrying"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    notifier.close()


def test_environment_is_read_from_the_mapping_given(receiver: Receiver,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    assert not Notifier.from_env({}).enabled


def test_a_missing_socket_does_not_raise() -> None:
    notifier = Notifier("/nonexistent/dir/notify")
    assert notifier.enabled
    assert notifier.ready() is False


def test_a_relative_address_is_ignored() -> None:
    assert not Notifier("relative/notify").enabled


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


async def test_watchdog_loop_pings_at_half_the_interval(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address)
    task = asyncio.create_task(watchdog_loop(notifier, 0.2, status=lambda: "streaming 2"))
    got = await receiver.collect(0.55)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 4 <= len(got) <= 6, got  # t = 0, 0.1, ..., 0.5; every 0.2 s would give 3
    assert set(got) == {"WATCHDOG=1\nSTATUS=streaming 2"}


async def test_watchdog_is_withheld_while_unhealthy(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address)
    healthy = {"now": False}
    task = asyncio.create_task(
        watchdog_loop(notifier, 0.1, status=lambda: "stuck", healthy=lambda: healthy["now"]))
    got = await receiver.collect(0.2)
    assert got and set(got) == {"STATUS=stuck"}
    healthy["now"] = True
    got = await receiver.collect(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "WATCHDOG=1\nSTATUS=stuck" in got


async def test_a_failing_health_check_withholds_the_ping(receiver: Receiver) -> None:
    def broken() -> bool:
        raise RuntimeError("bug")

    task = asyncio.create_task(watchdog_loop(Notifier(receiver.address), 0.1, healthy=broken))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "WATCHDOG=1" not in receiver.drain()


async def test_without_watchdog_only_status_is_sent(receiver: Receiver) -> None:
    def fails_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("formatting bug")
        return "ok"

    calls: list[int] = []
    task = asyncio.create_task(
        watchdog_loop(Notifier(receiver.address), None, status=fails_once, status_every=0.05))
    got: list[str] = []
    for _ in range(40):  # on a loaded machine the second tick may come late: wait for it
        got += await receiver.collect(0.05)
        if got and len(calls) >= 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    got += receiver.drain()
    assert got and set(got) == {"STATUS=ok"}, "a failing status callable does not stop the loop"


async def test_watchdog_loop_returns_when_not_under_systemd() -> None:
    await asyncio.wait_for(watchdog_loop(Notifier(None), 1.0), timeout=1)


def test_summarize() -> None:
    statuses = [
        StreamStatus(name="users", phase=Phase.STREAMING, lag_seconds=0.4, pending=12),
        StreamStatus(name="docs", phase=Phase.SNAPSHOT, snapshot_copied=1, snapshot_total=4,
                     rejects=3),
        StreamStatus(name="notes", phase=Phase.STREAMING, lag_seconds=2.25, degraded=True),
        StreamStatus(name="tags", phase=Phase.FAILED),
    ]
    assert summarize(statuses) == (
        "2 streaming, 1 snapshot 25 %, 1 failed; max lag 2.2 s; 12 pending; 3 rejected; "
        "degraded: notes; FAILED: tags")
    assert summarize([]) == "no streams running"
