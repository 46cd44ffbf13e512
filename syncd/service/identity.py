"""Which config a daemon serves, so that clients believe only their own daemon.

`syncd run` puts :func:`identify` in its ``/status``: a fingerprint of its config's sources and
target (no secret goes into it: the DSN's password is left out before hashing) and its state
dir. `syncd status`, `cutover` and `rollback` find a daemon at their config's ``health.listen``
and compare (:func:`ask_daemon`): a daemon of another config — two configs left on the default
port — is ignored by `status` and refused by `cutover` / `rollback`, each saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from syncd.config import Config
from syncd.status import StreamReport

_SECRET_KEYS = {"password", "passfile", "sslpassword"}


def target_identity(dsn: str) -> dict[str, Any]:
    """Where a DSN points (scheme, user, hosts, ports, database, options) without its password."""
    dsn = dsn.strip()
    if "://" in dsn:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.netloc.rpartition("@")[0].partition(":")[0] if "@" in parts.netloc else ""
        query = sorted((k, v) for k, v in parse_qsl(parts.query) if k.lower() not in _SECRET_KEYS)
        return {"user": user, "hosts": netloc.lower(), "database": parts.path.lstrip("/"), "options": query}
    pairs = sorted((k.lower(), v) for k, _, v in (t.partition("=") for t in dsn.split())
                   if k.lower() not in _SECRET_KEYS)
    return {"keywords": pairs}


def fingerprint(config: Config) -> str:
    """A stable hash of what a config syncs from and to; equal for two copies of one config."""
    sources: dict[str, Any] = {}
    if config.sqlite is not None:
        sources["sqlite"] = str(config.sqlite.path.resolve())
    if config.chroma is not None:
        c = config.chroma
        sources["chroma"] = {"path": str(c.path.resolve()) if c.path else None, "url": c.url,
                             "tenant": c.tenant, "database": c.database}
    target = ({"embedded": str(config.state_dir.resolve())} if config.target.embedded
              else target_identity(config.target.dsn))
    body = json.dumps({"sources": sources, "target": target, "schema": config.target.schema},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def identify(config: Config) -> dict[str, Any]:
    """What a daemon says about itself in ``/status``."""
    return {"fingerprint": fingerprint(config), "state_dir": str(config.state_dir.resolve()),
            "config": str(config.path.resolve()) if config.path else None, "pid": os.getpid()}


@dataclass(frozen=True, slots=True)
class Answer:
    """What answered on this config's ``health.listen``."""

    where: str | None
    """``host:port`` asked, None when the health server is off."""
    streams: list[StreamReport] | None = None
    """The daemon's streams, when it is this config's daemon."""
    foreign: str | None = None
    """Why the daemon that answered is not believed, when one answered and is not ours."""


def _address(listen: str) -> str | None:
    if not listen or listen.endswith(":0"):
        return None
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"


def ask_daemon(config: Config, timeout: float = 2.0) -> Answer:
    """The daemon on ``health.listen``: its streams if it serves *config*, else why not."""
    where = _address(config.health.listen)
    if where is None:
        return Answer(None)
    try:
        with urllib.request.urlopen(f"http://{where}/status", timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return Answer(where)
    streams = data.get("streams") if isinstance(data, dict) else None
    if not isinstance(streams, list):
        return Answer(where)
    served = data.get("identity")
    if not isinstance(served, dict) or served.get("fingerprint") != fingerprint(config):
        which = (f"state dir {served.get('state_dir')}, config {served.get('config')}"
                 if isinstance(served, dict) else "it does not say which: an older syncd, or not syncd")
        return Answer(where, foreign=f"the daemon on {where} serves another config ({which}); "
                                     "this config's daemon is not running")
    for s in streams:
        s["daemon"] = "running"
    return Answer(where, streams=streams)
