"""What the Chroma and pgvector stores share: a collection and its items as values, the doubt
an item's vector may be in (Chroma's UPDATE-of-missing pattern, docs/chroma.md), and what the
pgvector side asks of the Chroma collection it copies (:class:`ChromaCollection`,
:class:`ScannedCollection`), which :mod:`syncd.stores.chroma` provides.

Shared vocabulary, not a store: the pgvector sink is handed its collection by the stream
(:mod:`syncd.streams.chroma_to_pgvector`) and never imports the Chroma store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from syncd.model import Batch, Position

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
    logged: Vector | None = None
    """When ``vector`` is None: the bits the id's log rows give, if the log may no longer hold
    the write that created it (its first row is an ADD that may have found it present). Chroma's
    server decides (:func:`settle_vector`)."""


LOGGED_ULPS = 4
"""How far (units in the last place, per component) Chroma's server may return a vector from
the bits it was written with: a cosine index stores it normalised."""


def settle_vector(served: Vector, logged: Vector | None) -> Vector:
    """The vector of an item whose log is not known complete: the logged bits when the server's
    vector is those bits as its index returns them (equal, or a few ulps off), else the server's."""
    if logged is None or served.shape != logged.shape:
        return served
    a = np.asarray(served, dtype=np.float32).view(np.int32).astype(np.int64)
    b = np.asarray(logged, dtype=np.float32).view(np.int32).astype(np.int64)
    return logged if bool(np.all(np.abs(a - b) <= LOGGED_ULPS)) else served


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
class RemoteItem:
    """One item as a Chroma server returns it (no log, no seq_id)."""

    id: str
    vector: Vector | None
    document: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScanPage(Batch):
    """One page of a scan: the items read (full images), and whether it ends the scan."""

    scan: int = 0
    final: bool = False


@dataclass(frozen=True, slots=True)
class Doubt:
    """An id whose vector Chroma's index may hold from an UPDATE its log says had no effect."""

    update_seq: int
    """The last UPDATE carrying a vector while the id was missing."""
    add_seq: int | None
    """The ADD that created the id after it; None while the id is still missing."""
    vector: bytes | None = None
    """That UPDATE's float32 bits, little-endian, as logged."""


State = tuple[bool | None, Doubt | None]
"""Whether the id exists (None: not known) and its doubt."""


def step(state: State, seq: int, op: str, has_vector: bool, vector: bytes | None = None) -> State:
    """*state* after one log row of the id. With existence unknown, an UPDATE is taken as
    missing its id and an ADD as creating it: a doubt too many costs one read from Chroma."""
    exists, doubt = state
    if op in ("delete", "upsert"):  # gone, or a vector set whatever the id's state
        return op == "upsert", None
    if op == "add":
        if exists:
            return True, doubt  # an ADD of an existing id does nothing
        return True, None if doubt is None else replace(doubt, add_seq=seq)
    if op == "update" and has_vector:
        if exists:
            return True, None  # took effect, the same on every replay
        return exists, Doubt(seq, None, vector)
    return state


def raw_image(item_id: str, vector: Vector | None, document: str | None,
              metadata: Mapping[str, Any] | None, op: str | None = None) -> dict[str, Any]:
    """A JSON-safe image of an item for the reject table."""
    image: dict[str, Any] = {"id": item_id}
    if op:
        image["op"] = op
    image["embedding"] = None if vector is None else [float(x) for x in np.asarray(vector, dtype=np.float64)]
    image["document"] = document
    image["metadata"] = dict(metadata) if metadata is not None else None
    return image


class MappedTable(Protocol):
    """What the reverse Chroma sink asks of the pgvector table it reads from
    (:class:`syncd.stores.pgvector.plan.VectorTable`)."""

    @property
    def metadata_col(self) -> str | None: ...

    @property
    def mapped_keys(self) -> frozenset[str]:
        """The metadata keys lifted into columns of their own."""
        ...


class KeyTypes(Protocol):
    async def key_types(self, info: CollectionInfo, keys: Sequence[str]) -> dict[str, set[str]]:
        """Per key of the items' metadata, the types its values have in the collection."""
        ...


class ChromaCollection(Protocol):
    """What the pgvector sink asks of the Chroma collection it copies
    (:class:`syncd.stores.chroma.source.ChromaCollectionSource`)."""

    @property
    def info(self) -> CollectionInfo: ...

    @property
    def log(self) -> KeyTypes: ...

    @property
    def gap(self) -> object | None:
        """Log rows Chroma purged before they were read (None: none)."""
        ...

    def gap_resolved(self) -> None: ...

    async def reconcile_start(self, checkpoint: Position) -> Position: ...

    def pages(self, after: str | None, rows: int, *,
              changed_after: int | None) -> AsyncIterator[ItemPage]: ...

    async def current_items(self, ids: Sequence[str]) -> dict[str, Item]: ...

    async def vector_doubts(self) -> dict[str, Doubt]: ...

    async def hnsw_saved(self) -> int: ...

    async def server_vectors(self, ids: Sequence[str]) -> dict[str, Vector | None] | None: ...


class ScannedCollection(Protocol):
    """What the server-only pgvector sink asks of a collection it can only scan
    (:class:`syncd.stores.chroma.remote.RemoteCollectionSource`)."""

    async def fetch(self, ids: Sequence[str]) -> dict[str, RemoteItem]: ...
