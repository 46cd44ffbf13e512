"""`syncd export` of a table whose declared primary key holds NULLs, killed and resumed.

SQLite lets a declared (non-rowid) primary key of a rowid table hold NULLs; they sort first, and no
key orders them. An export resumed after a chunk that ended on a NULL key must still write every
row once. The bundle's chunks are read back as JSON lines and compared with SQLite's own rows.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

from tests.integration.files.test_export_import import config, export, killed

KEYED, NULL_KEYED = 10, 30


def make_app(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"k{i:02}", f"keyed {i}") for i in range(KEYED)])
    conn.executemany("INSERT INTO t VALUES (NULL, ?)", [(f"null {i}",) for i in range(NULL_KEYED)])
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"z{i:02}", f"late {i}") for i in range(KEYED)])
    conn.commit()
    conn.close()


def bundle_rows(bundle: Path) -> Counter[tuple[object, object]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    (table,) = manifest["tables"]
    rows: Counter[tuple[object, object]] = Counter()
    for chunk in table["chunks"]:
        for line in (bundle / chunk["file"]).read_text().splitlines():
            row = json.loads(line)
            rows[(row["id"], row["v"])] += 1
    assert table["rows"] == sum(rows.values())
    return rows


def sqlite_rows(db: Path) -> Counter[tuple[object, object]]:
    conn = sqlite3.connect(db)
    try:
        return Counter(tuple(r) for r in conn.execute("SELECT id, v FROM t"))
    finally:
        conn.close()


def test_export_resumed_inside_the_null_key_rows_writes_every_row_once(tmp_path: Path, pg_dsn: str) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db)
    cfg = config(tmp_path, pg_dsn)
    whole = tmp_path / "whole"
    export(cfg, whole, "--chunk-rows", "8")
    assert bundle_rows(whole) == sqlite_rows(db)
    for kill_after in (1, 3, 5, 6):  # in the keyed rows, in the NULL-key rows, across the boundary
        bundle = tmp_path / f"bundle{kill_after}"
        killed(["--config", str(cfg), "export", "--to", str(bundle), "--chunk-rows", "8"],
               f"export:{kill_after}")
        export(cfg, bundle, "--chunk-rows", "8")
        assert bundle_rows(bundle) == sqlite_rows(db), kill_after
