"""docker-compose.yml agrees with config.example.toml: ports, volumes, names, versions.

:func:`problems` lists every disagreement; the first test wants none, the others
break one thing at a time and check that it is caught.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from syncd.config import Config, parse
from syncd.service.health import parse_listen

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Compose = dict[str, Any]


@dataclass(frozen=True)
class Mount:
    source: str
    target: PurePosixPath
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith((".", "/", "~"))


def mounts(service: Compose) -> list[Mount]:
    out = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            out.append(Mount(str(item.get("source", "")), PurePosixPath(item["target"]),
                             bool(item.get("read_only", False))))
        else:
            source, target, *mode = str(item).split(":")
            out.append(Mount(source, PurePosixPath(target), "ro" in mode))
    return out


def published(service: Compose) -> dict[int, tuple[str, int]]:
    """host port -> (host ip, container port)."""
    out = {}
    for item in service.get("ports", []):
        if isinstance(item, dict):
            if item.get("published") is not None:
                out[int(item["published"])] = (str(item.get("host_ip", "")), int(item["target"]))
            continue
        parts = str(item).split("/")[0].split(":")
        if len(parts) >= 2:
            out[int(parts[-2])] = (parts[-3] if len(parts) == 3 else "", int(parts[-1]))
    return out


def covering(ms: list[Mount], path: PurePosixPath) -> Mount | None:
    """The most specific mount that holds *path*."""
    found = [m for m in ms if path == m.target or m.target in path.parents]
    return max(found, key=lambda m: len(m.target.parts), default=None)


def arg(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def variables(config_text: str) -> set[str]:
    """The ${NAME} environment variables the config's values use."""
    def walk(value: Any) -> list[str]:
        if isinstance(value, str):
            return re.findall(r"\$\{([^}:]+)\}", value)
        if isinstance(value, dict):
            return [n for v in value.values() for n in walk(v)]
        if isinstance(value, list):
            return [n for v in value for n in walk(v)]
        return []
    return set(walk(tomllib.loads(config_text)))


def config_of(compose: Compose, config_text: str) -> tuple[Config, PurePosixPath] | str:
    syncd = compose["services"].get("syncd", {})
    target = next((m.target for m in mounts(syncd) if m.source == "./config.example.toml"), None)
    if target is None:
        return "syncd: config.example.toml is not mounted"
    env = {name: "x" for name in variables(config_text)}
    cfg = parse(tomllib.loads(config_text), base=Path(target.parent), env=env)
    return cfg, target


def problems(compose: Compose, config_text: str, pyproject: Compose) -> list[str]:
    out: list[str] = []
    services = compose.get("services", {})
    missing = {"postgres", "chroma", "toxiproxy", "syncd"} - set(services)
    if missing:
        return [f"missing services: {sorted(missing)}"]
    loaded = config_of(compose, config_text)
    if isinstance(loaded, str):
        return [loaded]
    cfg, _ = loaded
    syncd, pg, chroma, toxi = (services[n] for n in ("syncd", "postgres", "chroma", "toxiproxy"))
    syncd_mounts = mounts(syncd)
    declared = set(compose.get("volumes") or {})

    def served_by(port: int) -> list[tuple[str, int]]:
        return [(name, p[port][1]) for name, s in services.items() if port in (p := published(s))
                and p[port][0] in ("", "0.0.0.0", "127.0.0.1")]

    # --- ports: syncd shares the host's network, so the config's loopback ports are published ones
    chroma_cmd = [str(c) for c in chroma.get("command", [])]
    chroma_port = int(arg(chroma_cmd, "--port") or 8000)
    endpoints: list[tuple[str, str, int, str, int]] = []
    if cfg.target.dsn != "embedded":
        dsn = urlsplit(cfg.target.dsn)
        endpoints.append(("target.dsn", dsn.hostname or "", dsn.port or 5432, "postgres", 5432))
        env = pg.get("environment", {})
        if dsn.username != env.get("POSTGRES_USER", "postgres"):
            out.append(f"target.dsn user {dsn.username!r} != postgres POSTGRES_USER")
        if dsn.path.lstrip("/") != env.get("POSTGRES_DB", env.get("POSTGRES_USER")):
            out.append(f"target.dsn database {dsn.path.lstrip('/')!r} != postgres POSTGRES_DB")
    if cfg.chroma is not None and cfg.chroma.url:
        url = urlsplit(cfg.chroma.url)
        endpoints.append(("source.chroma.url", url.hostname or "", url.port or 80, "chroma",
                          chroma_port))
    for key, host, port, want, container_port in endpoints:
        if host in LOOPBACK and syncd.get("network_mode") != "host":
            out.append(f"{key} uses {host}, which needs syncd on network_mode: host")
        if served_by(port) != [(want, container_port)]:
            out.append(f"{key} port {port}: published by {served_by(port)}, "
                       f"want {want} -> {container_port}")
    host, port = parse_listen(cfg.health.listen)
    if served_by(port):
        out.append(f"health.listen port {port} is also published by {served_by(port)}")
    check = " ".join(str(t) for t in syncd.get("healthcheck", {}).get("test", []))
    if f"{host}:{port}/healthz" not in check:
        out.append(f"syncd healthcheck does not probe {host}:{port}/healthz")
    dockerfile = (REPO / syncd.get("build", {}).get("dockerfile", "Dockerfile")).read_text()
    if f"EXPOSE {port}" not in dockerfile:
        out.append(f"Dockerfile does not EXPOSE the health port {port}")

    # --- volumes: every store the config names is on a writable mount
    persist = PurePosixPath(arg(chroma_cmd, "--path") or "/data")
    chroma_home = covering(mounts(chroma), persist)
    places: list[tuple[str, PurePosixPath | None]] = [("state.dir", PurePosixPath(cfg.state_dir))]
    if cfg.sqlite is not None:
        places.append(("source.sqlite.path", PurePosixPath(cfg.sqlite.path).parent))
    if cfg.chroma is not None:
        places.append(("source.chroma.path",
                       PurePosixPath(cfg.chroma.path) if cfg.chroma.path else None))
    for key, path in places:
        if path is None:
            continue
        m = covering(syncd_mounts, path)
        if m is None or m.read_only:
            out.append(f"{key} {path} is not on a writable volume of syncd")
            continue
        if m.named and m.source not in declared:
            out.append(f"volume {m.source} is not declared")
        if key == "source.chroma.path":
            if chroma_home is None:
                out.append(f"chroma's --path {persist} is not on a volume")
            elif (m.source, path.relative_to(m.target)) != (
                    chroma_home.source, persist.relative_to(chroma_home.target)):
                out.append(f"{key} {path} is not chroma's persist directory "
                           f"({chroma_home.source}:{persist})")

    # --- secrets and wiring
    for name in variables(config_text):
        if name not in syncd.get("environment", {}):
            out.append(f"config uses ${{{name}}} but syncd's environment does not set it")
    needs = syncd.get("depends_on", {})
    for name in ("postgres", "chroma"):
        if name not in needs:
            out.append(f"syncd does not depend on {name}")

    # --- Toxiproxy sits in front of the real ports
    proxies = json.loads(compose["configs"]["toxiproxy"]["content"])
    expected = {"postgres": 5432, "chroma": chroma_port}
    for proxy in proxies:
        name, _, upstream_port = proxy["upstream"].rpartition(":")
        if expected.get(name) != int(upstream_port):
            out.append(f"toxiproxy {proxy['name']}: upstream {proxy['upstream']} is not a service port")
        listen = int(proxy["listen"].rpartition(":")[2])
        if listen not in published(toxi):
            out.append(f"toxiproxy {proxy['name']}: listen port {listen} is not published")
    if 8474 not in published(toxi):
        out.append("toxiproxy API port 8474 is not published")

    # --- versions
    pins = [d for d in pyproject["project"]["optional-dependencies"]["chroma"]
            if d.startswith("chromadb==")]
    if pins and chroma["image"] != f"chromadb/chroma:{pins[0].split('==')[1]}":
        out.append(f"chroma image {chroma['image']} differs from the client pin {pins[0]}")
    if not str(pg["image"]).startswith("pgvector/pgvector:pg"):
        out.append(f"postgres image {pg['image']} has no pgvector")
    return out


@pytest.fixture(scope="module")
def compose() -> Compose:
    data: Compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def config_text() -> str:
    return (REPO / "config.example.toml").read_text()


@pytest.fixture(scope="module")
def pyproject() -> Compose:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_compose_agrees_with_the_example_config(compose: Compose, config_text: str,
                                                pyproject: Compose) -> None:
    assert problems(compose, config_text, pyproject) == []


def test_dockerfile_builds_the_package_on_python_311() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'pip install ".[chroma]"' in text
    assert 'ENTRYPOINT ["syncd"]' in text


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(c: Compose) -> None:
        *keys, last = path.split(".")
        node = c
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is None:
            del node[last]
        else:
            node[last] = value
    return mutate


def _toxiproxy_upstream(c: Compose) -> None:
    c["configs"]["toxiproxy"]["content"] = c["configs"]["toxiproxy"]["content"].replace(
        "postgres:5432", "postgres:5433")


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set("services.postgres.ports.0", "127.0.0.1:5433:5432"), "target.dsn port 5432"),
    (_set("services.chroma.command.4", "8001"), "source.chroma.url port 8000"),
    (_set("services.chroma.ports.0", "127.0.0.1:8001:8000"), "source.chroma.url port 8000"),
    (_set("services.syncd.network_mode", None), "needs syncd on network_mode: host"),
    (_set("services.syncd.volumes.2", "other-data:/etc/syncd/data/chroma"),
     "is not chroma's persist directory"),
    (_set("services.syncd.volumes.1", "app-data:/etc/syncd/data:ro"), "source.sqlite.path"),
    (_set("services.syncd.volumes.3", "syncd-state:/srv/state"), "state.dir"),
    (_set("services.syncd.volumes.0", "./other.toml:/etc/syncd/syncd.toml:ro"), "not mounted"),
    (_set("services.syncd.environment", {}), "${POSTGRES_PASSWORD}"),
    (_set("services.postgres.environment.POSTGRES_DB", "other"), "database 'app'"),
    (_set("services.syncd.healthcheck.test", ["CMD", "true"]), "does not probe"),
    (_set("services.chroma.image", "chromadb/chroma:latest"), "differs from the client pin"),
    (_set("services.toxiproxy.ports.1", "127.0.0.1:25432:15432"), "listen port 15432"),
    (_toxiproxy_upstream, "upstream postgres:5433"),
    (_set("volumes", {"pg-data": None}), "is not declared"),
])
def test_a_disagreement_is_caught(compose: Compose, config_text: str, pyproject: Compose,
                                  mutate: Callable[[Compose], None], expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    found = problems(broken, config_text, pyproject)
    assert any(expected in p for p in found), found


def test_a_config_change_is_caught_too(compose: Compose, config_text: str,
                                       pyproject: Compose) -> None:
    moved = config_text.replace('listen = "127.0.0.1:8085"', 'listen = "127.0.0.1:9090"')
    assert moved != config_text
    found = problems(compose, moved, pyproject)
    assert any("does not probe 127.0.0.1:9090" in p for p in found), found
