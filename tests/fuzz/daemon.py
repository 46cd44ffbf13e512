"""The real ``syncd`` command line: one-shot commands, and ``syncd run`` in the background
to SIGKILL. Output goes to one log file per case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, sqlite: Path, dsn: str, state: Path, *, chunk_rows: int,
                 batch_size: int) -> Path:
    path.write_text("\n".join([
        "[source.sqlite]", f"path = {json.dumps(str(sqlite))}", "",
        "[target]", f"dsn = {json.dumps(dsn)}", "",
        "[state]", f"dir = {json.dumps(str(state))}", "",
        "[health]", 'listen = "127.0.0.1:0"', "",
        "[stream]", "poll_interval = 0.1", "prune_interval = 0.5",
        f"chunk_rows = {chunk_rows}", f"batch_size = {batch_size}", "",
    ]))
    return path


def error_line(output: str) -> str:
    """The most telling line of a failed command: an error event, else the last line."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        try:
            ev = json.loads(ln)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("level") in ("error", "critical"):
            return f"{ev.get('event')}: {ev.get('error') or ev.get('detail') or ''}".strip()[:300]
    plain = [ln for ln in lines if not ln.startswith("{")]
    return (plain or lines or ["(no output)"])[-1][:300]


class Syncd:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {k: v for k, v in os.environ.items() if k != "SYNCD_KILL_AT"}

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "syncd.cli", "--config", str(self.config), *args]

    def run(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        """A one-shot command; (exit code, stdout + stderr). A timeout is exit code -1."""
        try:
            proc = subprocess.run(self._argv(*args), capture_output=True, text=True, timeout=timeout,
                                  cwd=REPO, env=self.env)
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = -1, f"timed out after {timeout} s: {exc.output!r}"[:2000]
        with self.log.open("a") as f:
            f.write(f"--- syncd {' '.join(args)} -> {code}\n{out}\n")
        return code, out

    def verify(self, timeout: float = 120) -> tuple[int, str]:
        try:
            proc = subprocess.run(self._argv("verify", "--json"), capture_output=True, text=True,
                                  timeout=timeout, cwd=REPO, env=self.env)
        except subprocess.TimeoutExpired:
            return -1, ""
        with self.log.open("a") as f:
            f.write(f"--- syncd verify --json -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
        return proc.returncode, proc.stdout

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            out.write(b"--- syncd run (background)\n")
            out.flush()
            self.proc = subprocess.Popen(self._argv("run"), stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=self.env)

    def kill(self) -> int | None:
        """SIGKILL the background daemon; its exit code if it had already exited by itself."""
        if self.proc is None:
            return None
        early = self.proc.poll()
        if early is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        with self.log.open("a") as f:
            f.write(f"--- SIGKILL (exited by itself: {early})\n")
        return early
