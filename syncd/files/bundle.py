"""Export bundles: the manifest, the value encoding of table rows and collection lines, chunk files.

A bundle is a directory: ``manifest.json`` and chunked JSONL files (docs/files.md,
"Export bundles"). Table rows encode every SQLite storage class losslessly
(:func:`encode_value` / :func:`decode_value`); collection lines are the ``id`` /
``embedding`` / ``document`` / ``metadata`` objects Chroma users exchange, plus ``seq``.
A bundle written by a newer syncd (a higher ``version``) is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from syncd.errors import FatalError
from syncd.files.manifest import fsync_dir, load, sha256_file
from syncd.ports.tables import Column, ForeignKey, Index, Table

FORMAT = "syncd-export"
FORMAT_VERSION = 2
"""The newest version this syncd reads: 1 JSONL chunks, 2 parquet chunks (a syncd without
parquet refuses such a bundle with one line, as any newer format)."""
JSONL, PARQUET = "jsonl", "parquet"
CHUNK_FORMATS = (JSONL, PARQUET)
MANIFEST = "manifest.json"
_EXACT_INT = 1 << 53


class InvalidText:
    """A TEXT value whose bytes are not UTF-8 (SQLite stores what the app gave it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def text_factory(data: bytes) -> str | InvalidText:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(data)


# --- values -----------------------------------------------------------------------------------

def encode_value(v: Any) -> Any:
    """One SQLite value as JSON: NULL, INTEGER (beyond 2**53 as text), REAL (non-finite as text;
    JSON numbers round-trip bit-exact, ``-0.0`` included), TEXT (not UTF-8: hex), BLOB (base64)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if -_EXACT_INT <= v <= _EXACT_INT else {"$int": str(v)}
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$real": repr(v)}
    if isinstance(v, bytes):
        return {"$blob": base64.b64encode(v).decode()}
    if isinstance(v, InvalidText):
        return {"$text_hex": v.data.hex()}
    raise TypeError(f"not a SQLite value: {type(v).__name__}")


def decode_value(v: Any) -> Any:
    """The value as syncd's SQLite source reads it (a TEXT that is not UTF-8 comes back as its
    bytes: the sink then quarantines it, PostgreSQL text cannot hold it)."""
    if isinstance(v, dict):
        if "$blob" in v:
            return base64.b64decode(v["$blob"])
        if "$int" in v:
            return int(v["$int"])
        if "$real" in v:
            return float(v["$real"])
        if "$text_hex" in v:
            return bytes.fromhex(v["$text_hex"])
        raise ValueError(f"unknown encoded value {v!r}")
    return v


def encode_row(columns: Sequence[str], row: Sequence[Any]) -> str:
    return json.dumps({c: encode_value(v) for c, v in zip(columns, row, strict=True)},
                      ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_row(columns: Sequence[str], line: str | bytes) -> tuple[Any, ...]:
    obj = json.loads(line)
    return tuple(decode_value(obj.get(c)) for c in columns)


def encode_item(item_id: str, vector: Any, document: str | None, metadata: dict[str, Any] | None,
                seq: int) -> str:
    """A collection line; ``embedding`` as the float32 values (each float's repr is the float32
    widened to float64, so parsing and narrowing gives the same bits)."""
    emb = None if vector is None else [float(x) for x in np.asarray(vector, dtype=np.float32)]
    return json.dumps({"id": item_id, "embedding": emb, "document": document, "metadata": metadata,
                       "seq": seq}, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_item(line: str | bytes) -> tuple[str, Any, str | None, dict[str, Any], int]:
    obj = json.loads(line)
    emb = obj.get("embedding")
    vector = None if emb is None else np.asarray(emb, dtype=np.float64).astype(np.float32)
    return str(obj["id"]), vector, obj.get("document"), obj.get("metadata") or {}, int(obj.get("seq") or 0)


# --- schema -----------------------------------------------------------------------------------

def table_to_json(t: Table) -> dict[str, Any]:
    return {"name": t.name, "pk": list(t.pk), "rowid_key": t.rowid_key, "without_rowid": t.without_rowid,
            "columns": [{"name": c.name, "declared": c.declared, "notnull": c.notnull, "pk_index": c.pk_index}
                        for c in t.columns],
            "indexes": [{"name": i.name, "columns": list(i.columns), "unique": i.unique,
                         "collations": list(i.collations)} for i in t.indexes],
            "foreign_keys": [{"columns": list(f.columns), "ref_table": f.ref_table,
                              "ref_columns": list(f.ref_columns), "on_delete": f.on_delete,
                              "on_update": f.on_update} for f in t.foreign_keys],
            "skipped_indexes": list(t.skipped_indexes), "pk_collations": list(t.pk_collations)}


def table_from_json(d: dict[str, Any]) -> Table:
    return Table(
        name=str(d["name"]),
        columns=tuple(Column(str(c["name"]), str(c["declared"]), bool(c["notnull"]), int(c["pk_index"]))
                      for c in d["columns"]),
        pk=tuple(d["pk"]), rowid_key=bool(d["rowid_key"]), without_rowid=bool(d["without_rowid"]),
        indexes=tuple(Index(str(i["name"]), tuple(i["columns"]), bool(i["unique"]), tuple(i["collations"]))
                      for i in d["indexes"]),
        foreign_keys=tuple(ForeignKey(tuple(f["columns"]), str(f["ref_table"]), tuple(f["ref_columns"]),
                                      str(f["on_delete"]), str(f["on_update"])) for f in d["foreign_keys"]),
        skipped_indexes=tuple(d.get("skipped_indexes", ())), pk_collations=tuple(d.get("pk_collations", ())))


# --- chunks -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChunkEntry:
    file: str
    """Relative to the bundle, ``/``-separated."""
    sha256: str
    rows: int
    hashed: int
    """Rows in the row hash (a row verify finds PostgreSQL cannot hold exactly is left out)."""
    row_xor: str
    """XOR of the rows' 64-bit hashes in verify's canonical encoding, 16 hex digits."""
    last_key: list[Any]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "rows": self.rows, "hashed": self.hashed,
                "row_xor": self.row_xor, "last_key": self.last_key}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkEntry:
        return cls(str(d["file"]), str(d["sha256"]), int(d["rows"]), int(d["hashed"]), str(d["row_xor"]),
                   list(d["last_key"]))


def write_chunk(root: Path, rel: str, lines: Iterator[str] | Sequence[str]) -> str:
    """Write a chunk file (tmp -> fsync -> rename); return its sha256."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for line in lines:
            data = (line + "\n").encode("utf-8", "surrogatepass")
            digest.update(data)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return digest.hexdigest()


def read_chunk(root: Path, entry: ChunkEntry) -> list[bytes]:
    """The lines of a chunk, after checking its sha256 (FatalError naming the file, nothing read)."""
    path = root / entry.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FatalError(f"bundle {root}: cannot read {entry.file}: {exc.strerror or exc}") from exc
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise FatalError(f"bundle {root}: {entry.file} does not match its sha256 in {MANIFEST} (corrupted "
                         "or changed); nothing was loaded from it: export it again")
    return data.splitlines()


def check_chunk(root: Path, entry: ChunkEntry) -> None:
    """The chunk file's sha256, read a block at a time (FatalError naming the file)."""
    try:
        sha = sha256_file(root / entry.file)
    except OSError as exc:
        raise FatalError(f"bundle {root}: cannot read {entry.file}: {exc.strerror or exc}") from exc
    if sha != entry.sha256:
        raise FatalError(f"bundle {root}: {entry.file} does not match its sha256 in {MANIFEST} (corrupted "
                         "or changed); nothing was loaded from it: export it again")


# --- manifest ---------------------------------------------------------------------------------

def write_manifest(root: Path, data: dict[str, Any]) -> None:
    tmp = root / (MANIFEST + ".tmp")
    version = 2 if data.get("chunk_format") == PARQUET else 1
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "version": version, **data}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    fsync_dir(root)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the bundle at *root*, checked (a newer version is refused)."""
    path = root / MANIFEST
    data, _version = load(root, fmt=FORMAT, newest=FORMAT_VERSION, what="export bundle", command="export",
                          then="import")
    kind = data.setdefault("chunk_format", JSONL)
    if kind not in CHUNK_FORMATS:
        raise FatalError(f"{path}: chunk_format {kind!r} is not one this syncd reads "
                         f"({', '.join(CHUNK_FORMATS)})")
    for obj in [*data.get("tables", []), *data.get("collections", [])]:
        for c in obj.get("chunks", []):
            f = str(c.get("file", ""))
            if f.startswith("/") or ".." in f.split("/"):
                raise FatalError(f"{path}: chunk file {f!r} is outside the bundle; refusing it")
            if not f.endswith("." + kind):
                raise FatalError(f"{path}: chunk file {f!r} is not a {kind} file as chunk_format says; "
                                 "refusing the bundle")
    if kind == PARQUET:
        from syncd.files.parquet import require

        require(f"bundle {root} has parquet chunks")
    return data


def chunk_name(kind: str, index: int, number: int, suffix: str = JSONL) -> str:
    """``tables/0003/000001.jsonl``: objects by their index (any name is safe), chunks numbered."""
    return f"{kind}/{index:04d}/{number:06d}.{suffix}"
