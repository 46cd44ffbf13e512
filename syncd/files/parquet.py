"""Parquet chunk files of an export bundle (``syncd export --format parquet``; docs/files.md
"Parquet chunks"). pyarrow is an optional extra (``syncd[parquet]``): imported only here, when
a parquet bundle is written or read.

Table chunks keep each value's SQLite storage class: a column whose non-NULL values in the
chunk share one class is typed by it (INTEGER ``int64``, REAL ``float64``, TEXT ``string``,
BLOB ``binary``; a column NULL throughout by its declared type's affinity); a column whose
class varies within the chunk, or a TEXT that is not UTF-8, is a ``string`` column holding the
JSONL bundle's value encoding as JSON (:func:`syncd.files.bundle.encode_value`), marked by the
field metadata ``syncd.encoding = json``. Collection chunks are the columns Chroma users
exchange: ``id``, ``embedding`` as ``fixed_size_list<float32>[dimension]`` (the written bits),
``document``, ``metadata`` as JSON text, plus ``seq`` and ``error``.

Files are read a record batch at a time, after their sha256 is checked through the same open
file (a file renamed over it meanwhile is not the one read).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from syncd.errors import FatalError
from syncd.files import bundle as bd
from syncd.files.manifest import fsync_dir
from syncd.ports.collections import Item
from syncd.ports.tables import Table

SUFFIX = "parquet"
ENCODING = b"syncd.encoding"
"""Field metadata key: ``json`` for a column holding the JSONL value encoding as JSON text."""
ROW_GROUP = 4096
"""Rows per row group written, and per record batch read."""
_READ = 1 << 20
_CLASSES = {int: "int", float: "real", str: "text", bytes: "blob"}


def require(what: str) -> None:
    """One line when pyarrow is missing (it is the ``parquet`` extra)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise FatalError(f"{what}: pyarrow is not installed with this syncd; install it "
                         "(pip install 'syncd[parquet]')") from exc


def affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type (sqlite.org/datatype3.html 3.1), as a class."""
    d = declared.upper()
    if "INT" in d:
        return "int"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "text"
    if not d or "BLOB" in d:
        return "blob"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "real"
    return "int"  # NUMERIC: integers where they fit


def affinities(table: Table) -> list[str]:
    """Per target column (the synthetic key first), the class a column NULL throughout takes."""
    return ["int"] * table.synthetic_key + [affinity(c.declared) for c in table.columns]


def _kind(values: Sequence[Any], default: str) -> str:
    """The column's kind in one chunk: its one storage class, else ``json``."""
    seen: set[str] = set()
    for v in values:
        if v is None:
            continue
        kind = _CLASSES.get(type(v), "json")
        seen.add(kind)
        if kind == "json" or len(seen) > 1:
            return "json"
    return seen.pop() if seen else default


def _sha256_fsync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb+") as f:
        while block := f.read(_READ):
            digest.update(block)
        os.fsync(f.fileno())
    return digest.hexdigest()


def _write(root: Path, rel: str, table: Any) -> str:
    """Write a chunk file (tmp -> fsync -> rename); return its sha256."""
    import pyarrow.parquet as pq

    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="zstd")
    sha = _sha256_fsync(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sha


def write_table_chunk(root: Path, rel: str, columns: Sequence[str], affinities: Sequence[str],
                      rows: Sequence[Sequence[Any]]) -> str:
    """One table chunk of SQLite values (``InvalidText`` for TEXT that is not UTF-8); its sha256."""
    import pyarrow as pa

    types = {"int": pa.int64(), "real": pa.float64(), "text": pa.string(), "blob": pa.binary()}
    arrays, fields = [], []
    for j, name in enumerate(columns):
        values = [r[j] for r in rows]
        kind = _kind(values, affinities[j])
        if kind == "json":
            values = [None if v is None else json.dumps(bd.encode_value(v), ensure_ascii=False,
                                                        allow_nan=False) for v in values]
            fields.append(pa.field(name, pa.string(), metadata={ENCODING: b"json"}))
        else:
            fields.append(pa.field(name, types[kind]))
        arrays.append(pa.array(values, type=fields[-1].type))
    return _write(root, rel, pa.Table.from_arrays(arrays, schema=pa.schema(fields)))


def write_items(root: Path, rel: str, items: Sequence[Item], dimension: int) -> str:
    """One collection chunk; its sha256. Vectors as float32 bits (a vector of another length than
    the collection's dimension makes the chunk's ``embedding`` a variable ``list<float32>``)."""
    import pyarrow as pa

    vectors = [None if i.vector is None else np.asarray(i.vector, dtype=np.float32) for i in items]
    if all(v is None or v.shape == (dimension,) for v in vectors):
        flat = np.zeros((len(items), dimension), dtype=np.float32)
        for k, v in enumerate(vectors):
            if v is not None:
                flat[k] = v
        mask = pa.array([v is None for v in vectors], type=pa.bool_())
        values = pa.array(flat.reshape(-1), type=pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(values, dimension, mask=mask)
    else:
        embedding = pa.array(vectors, type=pa.list_(pa.float32()))
    metadata = [None if i.metadata is None else json.dumps(i.metadata, ensure_ascii=False, allow_nan=False,
                                                           separators=(",", ":")) for i in items]
    text = pa.string()
    table = pa.Table.from_arrays(
        [pa.array([i.id for i in items], type=text), embedding,
         pa.array([i.document for i in items], type=text), pa.array(metadata, type=text),
         pa.array([i.seq for i in items], type=pa.int64()),
         pa.array([i.error for i in items], type=text)],
        names=["id", "embedding", "document", "metadata", "seq", "error"])
    return _write(root, rel, table)


# --- reading ----------------------------------------------------------------------------------

def _batches(root: Path, entry: bd.ChunkEntry, f: IO[bytes]) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    while block := f.read(_READ):
        digest.update(block)
    if digest.hexdigest() != entry.sha256:
        raise FatalError(f"bundle {root}: {entry.file} does not match its sha256 in {bd.MANIFEST} (corrupted "
                         "or changed); nothing was loaded from it: export it again")
    f.seek(0)
    try:
        yield from pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP)
    except (pa.ArrowException, OSError) as exc:
        raise FatalError(f"bundle {root}: {entry.file} is not a readable parquet file ({exc}); export it "
                         "again") from exc


def _open(root: Path, entry: bd.ChunkEntry) -> IO[bytes]:
    try:
        return open(root / entry.file, "rb")
    except OSError as exc:
        raise FatalError(f"bundle {root}: cannot read {entry.file}: {exc.strerror or exc}") from exc


def _column(root: Path, entry: bd.ChunkEntry, batch: Any, name: str) -> Any:
    i = batch.schema.get_field_index(name)
    if i < 0:
        raise FatalError(f"bundle {root}: {entry.file} has no column {name!r}; export it again")
    return batch.column(i), batch.schema.field(i)


def read_table_rows(root: Path, entry: bd.ChunkEntry, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """The rows of a table chunk as :func:`syncd.files.bundle.decode_row` gives them."""
    with _open(root, entry) as f:
        for batch in _batches(root, entry, f):
            cols = []
            for name in columns:
                array, field = _column(root, entry, batch, name)
                values = array.to_pylist()
                if (field.metadata or {}).get(ENCODING) == b"json":
                    values = [None if v is None else bd.decode_value(json.loads(v)) for v in values]
                cols.append(values)
            yield from zip(*cols, strict=True)


def read_items(root: Path, entry: bd.ChunkEntry) -> Iterator[tuple[Any, ...]]:
    """The items of a collection chunk as the JSONL lines decode: id, vector (float32 or None),
    document, metadata (``{}`` for none), seq, error."""
    import pyarrow as pa

    with _open(root, entry) as f:
        for batch in _batches(root, entry, f):
            emb, _ = _column(root, entry, batch, "embedding")
            nulls = emb.is_null().to_pylist()
            if pa.types.is_fixed_size_list(emb.type):
                dim = emb.type.list_size
                flat = emb.values.slice(emb.offset * dim, len(emb) * dim).to_numpy(zero_copy_only=False)
                grid = np.asarray(flat, dtype=np.float32).reshape(len(emb), dim)
                vectors: list[Any] = [None if n else grid[k].copy() for k, n in enumerate(nulls)]
            else:
                vectors = [None if v is None else np.asarray(v, dtype=np.float32) for v in emb.to_pylist()]
            ids, docs, metas, seqs, errors = (_column(root, entry, batch, c)[0].to_pylist()
                                              for c in ("id", "document", "metadata", "seq", "error"))
            for k, item_id in enumerate(ids):
                yield (str(item_id), vectors[k], docs[k], json.loads(metas[k]) if metas[k] else {},
                       int(seqs[k] or 0), errors[k])
