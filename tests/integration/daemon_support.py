"""`syncd run` as a subprocess: start it, read its /status, wait for a condition, stop it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO, syncd_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_listen(config: Path, port: int, dest: Path | None = None, **replace: str) -> Path:
    """A copy of *config* (or *config* itself) whose health server listens on *port*."""
    text = re.sub(r'listen = "[^"]*"', f'listen = "127.0.0.1:{port}"', config.read_text())
    for old, new in replace.items():
        text = text.replace(old, new)
    out = dest or config
    out.write_text(text)
    return out


def app_db(path: Path, rows: int) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"note {i}") for i in range(1, rows + 1)])
    db.commit()
    db.close()
    return path


def insert(path: Path, first: int, count: int) -> None:
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"note {i}") for i in range(first, first + count)])
    db.commit()
    db.close()


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except (OSError, ValueError):
        return None


def start(config: Path, *args: str, log: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    out = log.open("a") if log else subprocess.DEVNULL
    return subprocess.Popen(syncd_cmd("--config", str(config), "run", *args), cwd=REPO, text=True,
                            stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "SYNCD_LOG_LEVEL": "warning", **(env or {})})


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90.0,
             proc: subprocess.Popen[str] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"syncd run exited {proc.returncode} while waiting for {what}: "
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: " + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.1)


def streaming(port: int, applied: int = 0) -> bool:
    body = status(port)
    if not body or not body.get("streams"):
        return False
    return all(s["phase"] == "streaming" and s["pending"] == 0 for s in body["streams"]) and \
        sum(int(s.get("applied") or 0) for s in body["streams"]) >= applied


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
