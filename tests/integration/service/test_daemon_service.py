"""`syncd run` as a service: READY/STOPPING over a real NOTIFY_SOCKET, health endpoints, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import REPO, run_syncd, syncd_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_notify_health_and_clean_stop(tmp_path: Path, make_config: Any) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"n{i}") for i in range(2000)])
    conn.commit()
    port = free_port()
    cfg = make_config(db)
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    run_syncd("--config", str(cfg), "init")

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": "", "SYNCD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(syncd_cmd("--config", str(cfg), "run"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while get(base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, get(base + "/readyz")
            time.sleep(0.1)
        assert get(base + "/healthz")[0] == 200
        status = json.loads(get(base + "/status")[1])
        (stream,) = status["streams"]
        assert stream["phase"] == "streaming" and stream["snapshot_copied"] == 2000
        conn.execute("INSERT INTO notes VALUES (5000, 'live')")
        conn.commit()
        deadline = time.monotonic() + 30
        while json.loads(get(base + "/status")[1])["streams"][0]["applied"] < 2001:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)
        assert shown["streams"][0]["daemon"] == "running" and shown["streams"][0]["applied"] >= 2001
        code, metrics = get(base + "/metrics")
        assert code == 200 and 'syncd_lag_seconds{stream="sqlite"}' in metrics
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any("STATUS=" in m for m in messages)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = []
        sock.settimeout(1)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert any("STOPPING=1" in m for m in rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        conn.close()


def test_ready_while_postgresql_is_unreachable(tmp_path: Path) -> None:
    """PostgreSQL down at start: the daemon still comes up (READY=1, /healthz 200), says why it
    is not ready, and stops cleanly; it does not hold up systemd's start."""
    db = tmp_path / "app.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)").connection.close()
    port, dead = free_port(), free_port()
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{db}"\n[target]\ndsn = "postgresql://u:secret@127.0.0.1:{dead}/x"\n'
                   "connect_timeout = 1\n"
                   f'[state]\ndir = "{tmp_path / "state"}"\n[health]\nlisten = "127.0.0.1:{port}"\n')
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "SYNCD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(syncd_cmd("--config", str(cfg), "run"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/healthz")[0] == 200
        code, body = get(base + "/readyz")
        assert code == 503, body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "unreachable" in err and "secret" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
