"""What Chroma's persist directory holds, as values: log rows and purged gaps (the collection,
its HNSW settings, items and pages of items are shared with pgvector, in
:mod:`syncd.ports.collections`); and the decoding of its stored forms (seq ids, float32
vectors, the ADD row's metadata JSON, metadata values, the distance space). See docs/chroma.md."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from syncd.ports.collections import Hnsw, Item, Vector

OP_ADD, OP_UPDATE, OP_UPSERT, OP_DELETE = 0, 1, 2, 3
OP_NAMES = {OP_ADD: "add", OP_UPDATE: "update", OP_UPSERT: "upsert", OP_DELETE: "delete"}
DOCUMENT_KEY = "chroma:document"
URI_KEY = "chroma:uri"
DEFAULT_TOPIC_PREFIX = "persistent://default/default/"
SPACES = ("l2", "cosine", "ip")

@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    op: int
    id: str
    vector: bytes | None
    encoding: str | None
    metadata: str | None
    created_at: float | None


@dataclass(frozen=True, slots=True)
class Gap:
    """Log rows between two positions that are gone: Chroma purged them."""

    after: int
    before: int
    missing: int


def seq_value(raw: Any) -> int:
    """A seq_id as stored: an integer, or 8 big-endian bytes in databases from Chroma < 0.5."""
    if isinstance(raw, bytes):
        return int.from_bytes(raw, "big")
    return int(raw)


def decode_vector(blob: bytes | None, encoding: str | None) -> tuple[Vector | None, str | None]:
    """The vector of a log row and, if it cannot be read, why."""
    if blob is None:
        return None, None
    if (encoding or "FLOAT32").upper() != "FLOAT32":
        return None, f"vector encoding {encoding!r} is not supported (only FLOAT32)"
    if len(blob) % 4:
        return None, f"vector blob of {len(blob)} bytes is not a float32 array"
    return np.frombuffer(blob, dtype="<f4"), None


def add_image(item: Item, metadata: str | None) -> bool:
    """Fill *item*'s document and metadata from its ADD log row; False if that row's metadata
    cannot be read (the metadata segment is read instead)."""
    if not metadata:
        return True
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return False
    if not isinstance(parsed, dict):
        return False
    item.document = parsed.pop(DOCUMENT_KEY, None)
    parsed.pop(URI_KEY, None)
    item.metadata = {k: v for k, v in parsed.items() if v is not None}
    return True


def metadata_value(s: Any, i: Any, f: Any, b: Any) -> Any:
    if b is not None:
        return bool(b)
    if i is not None:
        return int(i)
    if f is not None:
        return float(f)
    return s


def distance_space(config_json: str | None, schema_json: str | None, legacy: str | None) -> str:
    """The distance space: schema (1.x), then configuration, then ``hnsw:space`` metadata."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        schema = json.loads(schema_json or "null") or {}
        space = schema["keys"]["#embedding"]["float_list"]["vector_index"]["config"]["space"]
        if space in SPACES:
            return str(space)
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        config = json.loads(config_json or "null") or {}
        for key in ("hnsw", "hnsw_configuration"):
            space = (config.get(key) or {}).get("space")
            if space in SPACES:
                return str(space)
    if legacy in SPACES:
        return str(legacy)
    return "l2"  # Chroma's default: squared L2


def hnsw_settings(config_json: str | None, schema_json: str | None) -> Hnsw | None:
    """The HNSW settings: schema (1.x), then configuration."""
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        schema = json.loads(schema_json or "null") or {}
        found = Hnsw.parse(schema["keys"]["#embedding"]["float_list"]["vector_index"]["config"].get("hnsw"))
        if found:
            return found
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        config = json.loads(config_json or "null") or {}
        return Hnsw.parse(config.get("hnsw") or config.get("hnsw_configuration"))
    return None
