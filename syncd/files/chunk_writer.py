"""What an export's worker process does: write one table chunk and hash its rows.

The export reads SQLite in one process and hands each chunk of rows to a small pool of
processes, which encode and fsync the chunk file and hash every row in verify's canonical
encoding (verify's own expectation of each SQLite value, never the sink's converters). The
import's hash check uses the same :class:`TableHasher`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncd.files import bundle as bd
from syncd.verify.canon import NULL, CanonError, row_hash_int
from syncd.verify.expect import Unfit, expect

_PR_SET_PDEATHSIG = 1


class TableHasher:
    """A row's 64-bit hash in verify's canonical encoding (verify's own expectation of each
    SQLite value, never the sink's converters), for columns (name, PostgreSQL type, rounded)."""

    def __init__(self, types: Sequence[tuple[str, str, bool]]) -> None:
        self.expects = [expect(name, pg_type, rounded) for name, pg_type, rounded in types]

    def row(self, raw: Sequence[Any]) -> int | None:
        parts = []
        try:
            for e, v in zip(self.expects, raw, strict=True):
                parts.append(NULL if v is None else e.part(v))
        except (Unfit, CanonError, ValueError, TypeError, OverflowError):
            return None
        return row_hash_int("|".join(parts))


def _sqlite_value(v: Any) -> Any:
    """What the import gives the sink for a value read here (see :func:`bundle.decode_value`)."""
    return v.data if isinstance(v, bd.InvalidText) else v


def sqlite_value(v: Any) -> Any:
    """What the import gives the sink for a value read here (see :func:`bundle.decode_value`)."""
    return v.data if isinstance(v, bd.InvalidText) else v


def die_with_parent(parent: int) -> None:
    """In a worker: be killed with the export (a SIGKILLed export leaves no worker behind)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def encode_table_chunk(root: str, rel: str, columns: Sequence[str], types: Sequence[tuple[str, str, bool]],
                       rows: Sequence[Sequence[Any]], affinities: Sequence[str] | None = None
                       ) -> tuple[str, int, str]:
    """Write one chunk file (parquet with *affinities*, else JSONL) and hash its rows (in a worker
    process): sha256, hashed rows, XOR."""
    hasher = TableHasher(types)
    acc, hashed = 0, 0
    for r in rows:
        h = hasher.row([sqlite_value(v) for v in r])
        if h is not None:
            acc ^= h
            hashed += 1
    if affinities is not None:
        from syncd.files import parquet

        return parquet.write_table_chunk(Path(root), rel, columns, affinities, rows), hashed, f"{acc:016x}"
    sha = bd.write_chunk(Path(root), rel, (bd.encode_row(columns, r) for r in rows))
    return sha, hashed, f"{acc:016x}"
