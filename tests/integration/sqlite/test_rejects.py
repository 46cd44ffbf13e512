"""A quarantined row, as an operator meets it: `rejects` says what and how it clears, `verify`
says "quarantined" with an exit code of its own, `rejects --accept` records a decision without
deleting the evidence, and fixing the row in SQLite clears its reject."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import run_syncd


def make_app(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, code VARCHAR(5) NOT NULL, name TEXT);
        INSERT INTO users VALUES (1, 'ok', 'Ada'), (2, 'much too long', 'Grace'), (3, 'fine', 'Linus');
    """)
    conn.commit()
    conn.close()


async def test_a_reject_from_quarantine_to_accepted_or_fixed(tmp_path: Path, make_config: Any,
                                                              pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    make_app(db)
    cfg = str(make_config(db))
    run_syncd("-c", cfg, "init")
    run_syncd("-c", cfg, "run", "--until-caught-up")

    listed = run_syncd("-c", cfg, "rejects").stdout
    (rid,) = [r["id"] for r in json.loads(run_syncd("-c", cfg, "rejects", "--json").stdout)]
    assert f"#{rid} users key [2] (sqlite, snapshot, " in listed and "None" not in listed, listed
    assert "1 open rejects" in listed and "changes that row in SQLite again" in listed
    assert "syncd rejects --accept ID" in listed
    status = run_syncd("-c", cfg, "status").stdout
    assert "1 rejects (`syncd rejects`)" in status and "None" not in status, status
    assert "Chroma" not in status, status  # no [source.chroma] configured

    proc = run_syncd("-c", cfg, "verify", check=False)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(
        "1 row quarantined in syncd.rejects — PostgreSQL lacks them (or holds an older version); "
        "everything else matches."), proc.stdout
    assert f"#{rid} key [2]" in proc.stdout

    accepted = run_syncd("-c", cfg, "rejects", "--accept", str(rid), "--reason", "legacy test row")
    assert f"accepted 1 reject (#{rid})" in accepted.stdout
    row = await pg.fetchrow("SELECT error, row_image::text AS image, resolved_at, accepted_at, accepted_by, "
                            "accepted_reason FROM syncd.rejects WHERE id = $1", rid)
    assert row is not None and row["accepted_at"] is not None and row["resolved_at"] is None
    assert "@" in row["accepted_by"] and row["accepted_reason"] == "legacy test row"
    assert "much too long" in row["image"] and "longer than 5" in row["error"]  # the evidence stays

    proc = run_syncd("-c", cfg, "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "everything matches; 1 accepted rejects not counted" in proc.stdout
    assert "0 open rejects" in run_syncd("-c", cfg, "rejects").stdout
    assert f"#{rid} users key [2]" in run_syncd("-c", cfg, "rejects", "--accepted").stdout
    assert "no rejects" in run_syncd("-c", cfg, "status").stdout
    again = run_syncd("-c", cfg, "rejects", "--accept", str(rid), check=False)
    assert again.returncode == 2 and f"reject #{rid} was already accepted" in again.stderr

    # a second bad row, then fixed in SQLite: its reject clears itself
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO users VALUES (4, 'way too long', 'Edsger')")
    conn.commit()
    run_syncd("-c", cfg, "run", "--until-caught-up")
    assert "1 open rejects" in run_syncd("-c", cfg, "rejects").stdout
    conn.execute("UPDATE users SET code = 'short' WHERE id = 4")
    conn.commit()
    conn.close()
    run_syncd("-c", cfg, "run", "--until-caught-up")
    assert "0 open rejects" in run_syncd("-c", cfg, "rejects").stdout
    assert await pg.fetchval("SELECT code FROM users WHERE id = 4") == "short"


async def test_a_long_table_name_mapped_to_a_shorter_one(tmp_path: Path, make_config: Any,
                                                         pg: asyncpg.Connection) -> None:
    """A SQLite table name over PostgreSQL's 63 bytes: init names it and the fix; mapped, it syncs."""
    long = "customer_subscription_invoice_line_item_adjustment_history_entries_for_audit_v02"
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(f"CREATE TABLE {long} (id INTEGER PRIMARY KEY, amount NUMERIC);"
                       f"INSERT INTO {long} VALUES (1, 10), (2, 20);")
    conn.commit()
    refused = run_syncd("-c", str(make_config(db)), "init", check=False)
    assert refused.returncode == 2 and f'[target.table_names] "{long}" = ' in refused.stderr
    cfg = str(make_config(db, extra=f'\n[target.table_names]\n"{long}" = "invoice_adjustments"\n'))
    run_syncd("-c", cfg, "init")
    run_syncd("-c", cfg, "run", "--until-caught-up")
    conn.execute(f"UPDATE {long} SET amount = 25 WHERE id = 2")
    conn.commit()
    conn.close()
    run_syncd("-c", cfg, "run", "--until-caught-up")
    rows = await pg.fetch("SELECT id, amount FROM invoice_adjustments ORDER BY id")
    assert [(r["id"], int(r["amount"])) for r in rows] == [(1, 10), (2, 25)]
    verified = run_syncd("-c", cfg, "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
