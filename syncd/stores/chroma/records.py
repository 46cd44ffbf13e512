"""What Chroma's persist directory holds, as values: a collection as the catalog describes it,
its HNSW settings, log rows, items, pages of items, purged gaps; and the decoding of its stored
forms (seq ids, float32 vectors, the ADD row's metadata JSON, metadata values, the distance
space). See docs/chroma.md."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

OP_ADD, OP_UPDATE, OP_UPSERT, OP_DELETE = 0, 1, 2, 3
OP_NAMES = {OP_ADD: "add", OP_UPDATE: "update", OP_UPSERT: "upsert", OP_DELETE: "delete"}
DOCUMENT_KEY = "chroma:document"
URI_KEY = "chroma:uri"
DEFAULT_TOPIC_PREFIX = "persistent://default/default/"
SPACES = ("l2", "cosine", "ip")

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """One collection as the catalog describes it."""

    id: str
    name: str
    dimension: int | None
    """None until the first item is written."""
    space: str
    tenant: str
    database: str
    metadata_segment: str
    vector_segment: str | None
    hnsw: Hnsw | None = None
    """The collection's HNSW settings, when its configuration names them."""


@dataclass(frozen=True, slots=True)
class Hnsw:
    """Chroma's HNSW settings of a collection; pgvector's index is built with the same
    ``m`` / ``ef_construction``, and ``ef_search`` is what a query should set."""

    max_neighbors: int = 16
    ef_construction: int = 100
    ef_search: int = 100

    @classmethod
    def parse(cls, config: Any) -> Hnsw | None:
        """From a ``hnsw`` configuration object; None when it holds none of the three."""
        if not isinstance(config, dict):
            return None
        values = {k: config[k] for k in ("max_neighbors", "ef_construction", "ef_search")
                  if isinstance(config.get(k), int) and not isinstance(config.get(k), bool)}
        return cls(**values) if values else None


@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    op: int
    id: str
    vector: bytes | None
    encoding: str | None
    metadata: str | None
    created_at: float | None


@dataclass(slots=True)
class Item:
    """One item as Chroma holds it now (snapshot, reconciliation)."""

    id: str
    seq: int
    """``embeddings.seq_id``: the last operation on this id that took effect."""
    document: str | None
    metadata: dict[str, Any]
    vector: Vector | None
    """The written bits, from the log row of ``seq``; None when the log no longer holds them."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ItemPage:
    """Items of one key range, read in one transaction.

    ``keys`` are every id in the range with its seq, in key order; ``items`` the
    full images asked for (all, or those changed after a position).
    """

    keys: list[tuple[str, int]]
    items: list[Item]

    @property
    def last_key(self) -> str | None:
        return self.keys[-1][0] if self.keys else None


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
