"""Keeping Chroma's log until syncd has it: the purge switch and its recorded previous value.

Chroma deletes log rows of a collection once its segments have applied them
(``embeddings_queue_config.automatically_purge``, re-read at every purge).
``syncd init`` turns that off and records the configuration it found in
``<state dir>/chroma-retention.json`` (tmp -> fsync -> rename); ``syncd
uninstall`` writes it back. syncd prunes, itself, the rows it has checkpointed
past (see :meth:`syncd.stores.chroma.log.ChromaLog.prune`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.errors import FatalError
from syncd.stores.chroma.log import ChromaLog

RECORD_FILE = "chroma-retention.json"
DEFAULT_KIND = "EmbeddingsQueueConfigurationInternal"


@dataclass(frozen=True, slots=True)
class PurgeEvidence:
    """What tells syncd that Chroma may have purged its log: the switch, and vacuums run."""

    automatically_purge: bool
    config_text: str | None
    vacuums: int


# --- the switch in chroma.sqlite3 (run on the log's worker thread) ------------------------

def _config_text(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT config_json_str FROM embeddings_queue_config ORDER BY id LIMIT 1").fetchone()
    return str(row[0]) if row and row[0] is not None else None


def _evidence(conn: sqlite3.Connection) -> PurgeEvidence:
    text = _config_text(conn)
    try:
        purge = bool(json.loads(text or "{}").get("automatically_purge", True))
    except (ValueError, AttributeError):
        purge = True
    try:
        vacuums = int(conn.execute(
            "SELECT count(*) FROM maintenance_log WHERE operation = 'vacuum'").fetchone()[0])
    except sqlite3.OperationalError:
        vacuums = 0
    return PurgeEvidence(automatically_purge=purge, config_text=text, vacuums=vacuums)


async def purge_evidence(chroma_log: ChromaLog) -> PurgeEvidence:
    """Chroma's purge switch and how many times ``chroma vacuum`` ran."""
    return await chroma_log.call(chroma_log.read, _evidence)


def _write_config(chroma_log: ChromaLog, make: Any) -> str | None:
    conn = chroma_log.rw
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = _config_text(conn)
        text = make(before)
        if conn.execute("SELECT count(*) FROM embeddings_queue_config").fetchone()[0]:
            conn.execute("UPDATE embeddings_queue_config SET config_json_str = ?", (text,))
        else:
            conn.execute("INSERT INTO embeddings_queue_config (id, config_json_str) VALUES (1, ?)", (text,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before


async def set_purge(chroma_log: ChromaLog, enabled: bool) -> str | None:
    """Turn Chroma's automatic purging of its log on or off (Chroma re-reads it at every
    purge: no restart); return the configuration text before."""
    def make(before: str | None) -> str:
        try:
            config = json.loads(before) if before else {}
        except ValueError:
            config = {}
        if not isinstance(config, dict):
            config = {}
        config.setdefault("_type", DEFAULT_KIND)
        config["automatically_purge"] = enabled
        return json.dumps(config, separators=(",", ":"))

    return await chroma_log.call(_write_config, chroma_log, make)


async def restore_config(chroma_log: ChromaLog, text: str) -> None:
    await chroma_log.call(_write_config, chroma_log, lambda _before: text)


# --- the record in the state directory ------------------------------------------------------


def _record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_FILE


def _load(state_dir: Path) -> dict[str, Any]:
    path = _record_path(state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FatalError(f"{path}: cannot read syncd's record of Chroma's purge setting: {exc}; "
                         "fix or remove the file") from exc
    return data if isinstance(data, dict) else {}


def _save(state_dir: Path, data: dict[str, Any]) -> None:
    path = _record_path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise FatalError(f"state.dir {state_dir}: cannot write {path.name}: {exc.strerror}") from exc


def recorded(state_dir: Path, chroma_log: ChromaLog) -> dict[str, Any] | None:
    """What ``syncd init`` recorded for this persist directory, or None."""
    entry = _load(state_dir).get(str(chroma_log.path.resolve()))
    return entry if isinstance(entry, dict) else None


async def keep_log(state_dir: Path, chroma_log: ChromaLog) -> str:
    """Turn purging off; record the previous configuration once. Returns what happened."""
    data = _load(state_dir)
    key = str(chroma_log.path.resolve())
    evidence = await purge_evidence(chroma_log)
    if key not in data:
        data[key] = {"previous_config": evidence.config_text, "recorded_at": time.time()}
        _save(state_dir, data)
    if evidence.automatically_purge:
        await set_purge(chroma_log, False)
        return "automatic purging turned off (previous setting recorded for `syncd uninstall`)"
    return "automatic purging already off"


async def restore(state_dir: Path, chroma_log: ChromaLog) -> str:
    """Write back the recorded configuration and forget it. Returns what happened."""
    data = _load(state_dir)
    key = str(chroma_log.path.resolve())
    entry = data.get(key)
    if not isinstance(entry, dict):
        return "no purge setting recorded: left as it is"
    previous = entry.get("previous_config")
    if isinstance(previous, str):
        await restore_config(chroma_log, previous)
    else:
        await set_purge(chroma_log, True)  # none recorded: Chroma's default
    del data[key]
    _save(state_dir, data)
    return "purge setting restored"
