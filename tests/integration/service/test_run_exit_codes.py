"""`run --until-caught-up && next-step` is safe: exit 0 only when every stream caught up;
3 when a signal stopped it first, 4 when ``--timeout`` ran out (README, docs/operations.md)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_syncd
from tests.integration.daemon_support import free_port, start, status, wait_for, with_listen

EXIT_INTERRUPTED, EXIT_TIMEOUT = 3, 4


def big_app(path: Path, rows: int) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes VALUES (?, ?)", ((i, f"note {i}") for i in range(1, rows + 1)))
    db.commit()
    db.close()
    return path


def dead_target(tmp_path: Path, port: int) -> Path:
    db = big_app(tmp_path / "app.sqlite", 1)
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[source.sqlite]\npath = "{db}"\n[target]\n'
                   f'dsn = "postgresql://u:pw@127.0.0.1:{free_port()}/x"\nconnect_timeout = 1\n'
                   f'[state]\ndir = "{tmp_path / "state"}"\n[health]\nlisten = "127.0.0.1:{port}"\n'
                   "[stream]\nretry_max_seconds = 1\n")
    return cfg


def in_snapshot(port: int) -> bool:
    body = status(port)
    return bool(body and body["streams"] and body["streams"][0]["phase"] == "snapshot"
                and body["streams"][0]["snapshot_copied"] > 0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_snapshot_exits_3(tmp_path: Path, make_config: Any, sig: signal.Signals) -> None:
    db = big_app(tmp_path / "app.sqlite", 200_000)
    port = free_port()
    cfg = with_listen(make_config(db, chunk_rows=200), port)
    run_syncd("--config", str(cfg), "init")
    log = tmp_path / "run.log"
    proc = start(cfg, "--until-caught-up", log=log)
    wait_for(lambda: in_snapshot(port), "the snapshot to be copying", proc=proc, log=log)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == EXIT_INTERRUPTED, log.read_text()[-2000:]
    stored = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)
    assert stored["streams"][0]["phase"] == "snapshot"


def test_signal_while_postgresql_is_down_exits_3(tmp_path: Path) -> None:
    port = free_port()
    cfg = dead_target(tmp_path, port)
    log = tmp_path / "run.log"
    proc = start(cfg, "--until-caught-up", log=log)
    wait_for(lambda: status(port) is not None, "the health server", proc=proc, log=log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_INTERRUPTED, log.read_text()[-2000:]


def test_timeout_while_postgresql_is_down_exits_4(tmp_path: Path) -> None:
    cfg = dead_target(tmp_path, free_port())
    done = run_syncd("--config", str(cfg), "run", "--until-caught-up", "--timeout", "3", check=False,
                     timeout=90)
    assert done.returncode == EXIT_TIMEOUT, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "pw@" not in done.stdout + done.stderr
    last = [line for line in done.stderr.splitlines() if line.startswith("syncd:")]
    assert last and "3 s" in last[-1] and "not caught up" in last[-1], done.stderr


def test_caught_up_within_the_timeout_exits_0(tmp_path: Path, make_config: Any) -> None:
    db = big_app(tmp_path / "app.sqlite", 500)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    run_syncd("--config", str(cfg), "run", "--until-caught-up", "--timeout", "300")
    stored = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)
    assert stored["streams"][0]["phase"] == "streaming" and stored["streams"][0]["pending"] == 0


def test_timeout_needs_until_caught_up(tmp_path: Path, make_config: Any) -> None:
    cfg = make_config(big_app(tmp_path / "app.sqlite", 1))
    done = run_syncd("--config", str(cfg), "run", "--timeout", "5", check=False)
    assert done.returncode == 2 and "--until-caught-up" in done.stderr, done.stderr
