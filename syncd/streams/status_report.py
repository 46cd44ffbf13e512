"""`syncd status` as text: which stores the app uses, whether the daemon could be asked, and
for each stream where it stands and the command that comes next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from syncd.config import Config
from syncd.model import Phase
from syncd.status import NOT_INITIALISED, NOT_STARTED, UNINSTALLED, StreamReport


def _stores(cfg: Config) -> str:
    return " + ".join(name for name, on in (("SQLite", cfg.sqlite), ("Chroma", cfg.chroma)) if on)


def app_line(cfg: Config, switch: Mapping[str, Any]) -> list[str]:
    old = _stores(cfg)
    if switch.get("direction") == "reverse":
        lines = [f"app: uses PostgreSQL (cut over); syncd copies its changes back into {old}, so that "
                 "`syncd rollback` loses nothing"]
    else:
        lines = [f"app: uses {old}; syncd copies its changes into PostgreSQL"]
    if switch.get("operation"):
        op, step = switch["operation"], switch.get("step")
        other = "`syncd rollback`" if op == "cutover" else "`syncd cutover`"
        lines.append(f"stopped part-way: a {op} stopped after step {step}: run `syncd {op} --resume` "
                     f"to finish it, or {other} to undo it")
    return lines


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def stream_line(cfg: Config, s: StreamReport) -> str:
    name = str(s.get("name"))
    if s.get("collection"):
        name += f" (collection {s['collection']} → {s.get('table', '?')})"
    phase = str(s.get("phase"))
    path = cfg.sqlite.path if cfg.sqlite else "the SQLite file"
    if phase == NOT_INITIALISED:
        return f"{name}: not initialised — no change capture in {path}: run `syncd init`"
    if phase == UNINSTALLED:
        return (f"{name}: uninstalled — change capture was removed from {path} (`syncd uninstall`); "
                "run `syncd init` to install it again, then `syncd run`")
    if phase == NOT_STARTED:
        return f"{name}: not started — nothing copied yet: run `syncd run`"
    parts: list[str] = []
    checkpoint, head, pending = s.get("checkpoint"), s.get("source_position"), s.get("pending")
    if phase == Phase.SNAPSHOT.value:
        copied = s.get("snapshot_copied")
        pct = s.get("snapshot_percent")
        parts.append(f"copying: {_count(copied)} rows copied"
                     + (f" ({pct:.0f} %)" if pct is not None else ""))
    elif checkpoint is None:
        parts.append("nothing applied yet")
    else:
        parts.append(f"change {_count(checkpoint)} of {_count(head)} applied")
    if pending is not None:
        parts.append(f"{_count(pending)} pending")
    lag = s.get("lag_seconds")
    if lag:
        parts.append(f"lag {lag:.1f} s")
    if s.get("last_error"):
        parts.append(f"last error: {s['last_error']}")
    rejects = s.get("rejects") or 0
    parts.append(f"{rejects:,} rejects (`syncd rejects`)" if rejects else "no rejects")
    if phase == Phase.STREAMING.value and not pending:
        phase = "streaming, caught up"
    return f"{name}: {phase} — " + ", ".join(parts)


def refused_lines(refused: Sequence[Mapping[str, Any]]) -> list[str]:
    """The indexes and keys PostgreSQL refused: the schema in PostgreSQL is not complete."""
    if not refused:
        return []
    n = len(refused)
    lines = [f"schema: PostgreSQL refused {n} index{'es' if n != 1 else ''} or key{'s' if n != 1 else ''} "
             "of the SQLite schema (the rows stream on regardless; syncd tries again at each start; "
             "syncd.refused_constraints):"]
    lines += [f"  {r['object']}: {r['kind']} {r['name']} refused ({r['attempts']}×): {r['error']}; "
              f"{r['todo']}" for r in refused]
    return lines


def render(cfg: Config, switch: Mapping[str, Any], streams: Sequence[StreamReport], *, daemon: str,
           chroma_error: str | None = None, refused: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    lines = app_line(cfg, switch)
    lines.append(f"daemon: {daemon}")
    lines += [stream_line(cfg, s) for s in streams]
    lines += refused_lines(refused)
    if chroma_error:
        lines.append(f"chroma: {chroma_error}")
    elif cfg.chroma is not None and not any(str(s.get("name", "")).startswith(("chroma", "pgvector"))
                                            for s in streams):
        lines.append("chroma: no collection synced yet (`syncd init`, then `syncd run`)")
    if not streams and cfg.chroma is None:
        lines.append("no stream: run `syncd init`")
    return lines


__all__ = ["app_line", "refused_lines", "render", "stream_line"]
