"""A migration under test: the reference app writing, the daemon streaming, and the commands.

The app (``tests/app/refapp.py``) reads ``.env`` as the seed app does, reloads on SIGHUP and
logs every write with whether the store acknowledged it; syncd's ``reload_command`` sends it
the SIGHUP through a pid file. Every check compares the log's acknowledged writes with what the
stores hold, read back from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.app import records
from tests.conftest import REPO, run_syncd, syncd_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Migration:
    def __init__(self, tmp_path: Path, pg_dsn: str, *, chroma_url: str | None = None,
                 chroma_dir: Path | None = None, dim: int = 8, extra_cutover: str = "",
                 poll_interval: float = 0.2) -> None:
        """With *chroma_url* (a `chroma run --path chroma_dir` server) the app also writes
        embeddings, and syncd reads that server's persist directory."""
        self.dir = tmp_path
        self.pg_dsn = pg_dsn
        self.vectors = chroma_url is not None
        self.chroma_url = chroma_url
        self.dim = dim
        self.db = tmp_path / "app.sqlite"
        self.chroma_dir = chroma_dir or tmp_path / "chroma"
        self.env = tmp_path / "app.env"
        self.logs: list[Path] = []
        self.pidfile = tmp_path / "app.pid"
        self.config = tmp_path / "syncd.toml"
        self.port = free_port()
        self.daemon: subprocess.Popen[str] | None = None
        self.app: subprocess.Popen[str] | None = None
        self.daemon_log = tmp_path / "daemon.log"
        self.poll_interval = poll_interval
        self.app_args: tuple[str, ...] = ()  # more options of every app instance started
        self.env.write_text(self._env_text())
        self.config.write_text(self._config_text(extra_cutover))

    def _env_text(self) -> str:
        lines = ["# the app's settings (as in the seed app)",
                 "RELATIONAL_DB_PROVIDER=sqlite",
                 f"RELATIONAL_DB_DATABASE={self.db}",
                 f"RELATIONAL_DB_URL={self.pg_dsn}",
                 "",
                 f"VECTOR_DB_PROVIDER={'chromadb' if self.vectors else 'none'}",
                 f"VECTOR_DB_CHROMA_URL={self.chroma_url or ''}",
                 f"VECTOR_DB_DIMENSIONS={self.dim}  # must match the embedding model",
                 "VECTOR_DB_COLLECTION=embeddings", ""]
        return "\n".join(lines)

    def _config_text(self, extra_cutover: str) -> str:
        chroma = (f'[source.chroma]\nurl = "{self.chroma_url}"\npath = "{self.chroma_dir}"\n\n'
                  if self.vectors else "")
        vector_keys = 'VECTOR_DB_PROVIDER = "pgvector"\n' if self.vectors else ""
        vector_back = 'VECTOR_DB_PROVIDER = "chromadb"\n' if self.vectors else ""
        return (
            f'[source.sqlite]\npath = "{self.db}"\n\n{chroma}'
            f'[target]\ndsn = "{self.pg_dsn}"\n\n'
            f'[state]\ndir = "{self.dir / "state"}"\n\n'
            f'[health]\nlisten = "127.0.0.1:{self.port}"\n\n'
            f'[stream]\npoll_interval = {self.poll_interval}\nprune_interval = 0.5\n\n'
            f'[cutover]\napp_config = "{self.env}"\n'
            f'reload_command = ["sh", "-c", "kill -HUP $(cat {self.pidfile})"]\n'
            'drain_timeout = 15\nmax_lag_seconds = 5\n'
            f'{extra_cutover}\n'
            f'[cutover.forward]\nRELATIONAL_DB_PROVIDER = "postgres"\n{vector_keys}\n'
            f'[cutover.rollback]\nRELATIONAL_DB_PROVIDER = "sqlite"\n{vector_back}'
        )

    # --- processes ---

    def init(self) -> None:
        subprocess.run([sys.executable, "-m", "tests.app.refapp", "--env", str(self.env), "--init-schema",
                        "--vector-dim", str(self.dim)], check=True, cwd=REPO, timeout=120)
        run_syncd("--config", str(self.config), "init")

    def start(self, rate: float) -> None:
        """init, the app writing at *rate*, the daemon, until it is ready for a cutover."""
        self.init()
        self.start_app(rate=rate)
        self.start_daemon()
        self.wait_ready()

    def start_daemon(self, env: dict[str, str] | None = None) -> None:
        out = self.daemon_log.open("a")
        self.daemon = subprocess.Popen(syncd_cmd("--config", str(self.config), "run"), cwd=REPO,
                                       text=True, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})

    def stop_daemon(self) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout=60)
        self.daemon = None
        return code

    def start_app(self, rate: float = 200) -> None:
        """Start an app instance; each writes its own keys (its seed) and its own log."""
        seed = len(self.logs) + 1
        log = self.dir / f"writes-{seed}.jsonl"
        self.logs.append(log)
        self.app = subprocess.Popen(
            [sys.executable, "-m", "tests.app.refapp", "--env", str(self.env), "--log", str(log),
             "--rate", str(rate), "--vector-dim", str(self.dim), "--seed", str(seed), *self.app_args],
            cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=(self.dir / "app.err").open("a"))
        self.pidfile.write_text(str(self.app.pid))

    def stop_app(self) -> None:
        assert self.app is not None
        self.app.send_signal(signal.SIGTERM)
        assert self.app.wait(timeout=30) == 0, (self.dir / "app.err").read_text()[-2000:]
        self.app = None

    def close(self) -> None:
        for proc in (self.app, self.daemon):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    # --- syncd commands ---

    def command(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(syncd_cmd("--config", str(self.config), *args), capture_output=True, text=True,
                              cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})})

    def switch(self, operation: str, *args: str) -> dict[str, Any]:
        """Run cutover / rollback with --json; fail the test unless it succeeded."""
        proc = self.command(operation, "--json", *args)
        assert proc.returncode == 0, f"{operation} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}"
        outcome: dict[str, Any] = json.loads(proc.stdout)
        return outcome

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = (0, "")
        while time.monotonic() < deadline:
            last = self.get("/readyz")
            if last[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready after {timeout} s: {last}\n"
                             f"{self.daemon_log.read_text()[-3000:]}")

    def streams(self) -> list[dict[str, Any]]:
        code, body = self.get("/status")
        assert code == 200, body
        data: list[dict[str, Any]] = json.loads(body)["streams"]
        return data

    def wait_streaming(self, prefix: str, timeout: float = 60) -> None:
        """Until the daemon runs streams named *prefix* and all of them stream with nothing pending."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            code, body = self.get("/status")
            if code == 200:
                seen = json.loads(body)["streams"]
                mine = [s for s in seen if str(s["name"]).startswith(prefix)]
                if mine and all(s["phase"] == "streaming" and not s.get("pending") for s in mine):
                    return
            time.sleep(0.1)
        raise AssertionError(f"streams {prefix}* not caught up: {seen}\n"
                             f"{self.daemon_log.read_text()[-3000:]}")

    # --- the evidence ---

    def records(self) -> list[records.Record]:
        """Every app instance's writes, in the order they were made (instances ran one after
        another)."""
        out: list[records.Record] = []
        for log in self.logs:
            if log.exists():
                out += records.load(log)
        return [dataclasses.replace(r, n=i) for i, r in enumerate(out)]
