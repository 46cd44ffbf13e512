"""Indexes and foreign keys PostgreSQL refuses after the catch-up do not stop the data.

syncd adds a created table's secondary indexes, unique constraints and foreign keys once the
stream has caught up. SQLite accepts schemas and data PostgreSQL refuses for them: a child
``INTEGER`` column referencing a parent's ``TEXT`` key, rows SQLite holds as distinct that
are equal in PostgreSQL under a UNIQUE index, orphan rows under a foreign key SQLite never
enforced (``PRAGMA foreign_keys`` off). The rows are already right and streaming: each refusal
is one log line (table, index or constraint, PostgreSQL's reason, what to do), a row in
``syncd.refused_constraints``, a line of ``syncd status`` and a warning of ``syncd verify``;
the stream goes on, and tries again at its next start. Through the real command line, with
PostgreSQL read back as text and from its catalog.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import log_events, run_syncd

MISMATCH = """
CREATE TABLE p (k TEXT PRIMARY KEY, name TEXT);
CREATE TABLE c (id INTEGER PRIMARY KEY, pk INTEGER REFERENCES p(k), note TEXT);
CREATE INDEX c_note ON c (note);
INSERT INTO p VALUES ('1', 'one'), ('2', 'two');
INSERT INTO c VALUES (1, 1, 'a'), (2, 2, 'b');
"""


def sqlite_exec(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()


def refusals(stderr: str) -> dict[str, dict[str, Any]]:
    """The log lines of refused indexes / constraints, by name."""
    return {e["name"]: e for e in log_events(stderr) if e.get("event", "").startswith("PostgreSQL refused")}


async def catalog(pg: asyncpg.Connection, table: str) -> dict[str, bool]:
    """Constraints and indexes PostgreSQL holds on *table*: name -> validated."""
    rows = await pg.fetch(
        """SELECT conname::text AS name, convalidated AS ok FROM pg_constraint
           WHERE conrelid = $1::regclass AND contype IN ('f', 'u')
           UNION SELECT c.relname::text, true FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = $1::regclass AND NOT i.indisprimary""", f"public.{table}")
    return {r["name"]: r["ok"] for r in rows}


def status(cfg: Path) -> tuple[str, dict[str, Any]]:
    text = run_syncd("--config", str(cfg), "status").stdout
    data = json.loads(run_syncd("--config", str(cfg), "status", "--json").stdout)
    return text, data


def verify(cfg: Path) -> tuple[int, str, dict[str, Any]]:
    human = run_syncd("--config", str(cfg), "verify", check=False)
    proc = run_syncd("--config", str(cfg), "verify", "--json", check=False)
    assert proc.returncode == human.returncode, (human.stdout, proc.stdout)
    return proc.returncode, human.stdout, json.loads(proc.stdout)


def warnings_of(report: dict[str, Any], table: str) -> list[str]:
    return next(c["warnings"] for c in report["checks"] if c["name"] == table)


def assert_one_line(text: str, *words: str) -> None:
    assert "\n" not in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


async def test_integer_child_of_a_text_key_streams_on_without_the_foreign_key(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    sqlite_exec(db, MISMATCH)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    first = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert first.returncode == 0, first.stderr[-3000:]

    # one line: the table, the constraint, PostgreSQL's reason, what to do
    line = refusals(first.stderr)["c_fk0"]
    assert line["level"] == "warning"
    assert line["table"] == "c" and line["kind"] == "foreign key"
    assert_one_line(line["reason"], "incompatible types", "bigint", "text")
    assert_one_line(line["todo"], "next start")
    # the rest of the schema is there; the refused key is not
    assert await catalog(pg, "c") == {"c_note": True}

    # the data streams on
    sqlite_exec(db, "INSERT INTO c VALUES (3, 2, 'c'); UPDATE p SET name = 'uno' WHERE k = '1';")
    again = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "c_fk0" in refusals(again.stderr)  # tried again at this start, refused again
    rows = {r[0]: tuple(r)[1:] for r in await pg.fetch("SELECT id, pk::text, note FROM c ORDER BY id")}
    assert rows == {1: ("1", "a"), 2: ("2", "b"), 3: ("2", "c")}
    assert await pg.fetchval("SELECT name FROM p WHERE k = '1'") == "uno"

    # the operator sees it: status (text and JSON) and verify, which still matches on data
    text, data = status(cfg)
    listed = [line for line in text.splitlines() if "c_fk0" in line]
    assert len(listed) == 1, text
    assert_one_line(listed[0], "foreign key", "incompatible types")
    assert [(r["object"], r["name"], r["kind"]) for r in data["refused"]] == [("c", "c_fk0", "foreign key")]
    code, human, report = verify(cfg)
    assert code == 0, human
    assert [w for w in warnings_of(report, "c") if "c_fk0" in w], report
    assert warnings_of(report, "p") == []
    assert any("c_fk0" in line and "incompatible types" in line for line in human.splitlines()), human
    assert "missing" in human.splitlines()[-1], human  # the verdict does not claim a complete schema

    # the operator makes the types agree in PostgreSQL: the next start adds the key, and says so
    await pg.execute("ALTER TABLE c ALTER COLUMN pk TYPE text")
    fixed = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert refusals(fixed.stderr) == {}
    assert await catalog(pg, "c") == {"c_note": True, "c_fk0": True}
    text, data = status(cfg)
    assert "c_fk0" not in text and data["refused"] == []
    code, human, report = verify(cfg)
    assert code == 0 and warnings_of(report, "c") == [], human


EQUAL_IN_POSTGRES = """
CREATE TABLE ev (id INTEGER PRIMARY KEY, at DATETIME UNIQUE, label TEXT);
CREATE TABLE att (id INTEGER PRIMARY KEY, ev_at DATETIME REFERENCES ev(at));
INSERT INTO ev VALUES (1, '2024-01-01 10:00:00', 'space'), (2, '2024-01-01T10:00:00', 'iso T');
INSERT INTO att VALUES (1, '2024-01-01 10:00:00');
"""


async def test_unique_index_over_rows_postgres_holds_equal_is_recorded_not_fatal(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    sqlite_exec(db, EQUAL_IN_POSTGRES)
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = refusals(proc.stderr)
    assert set(lines) == {"ev_at_key", "att_fk0"}, lines
    assert lines["ev_at_key"]["kind"] == "unique index"
    assert_one_line(lines["ev_at_key"]["reason"], "duplicate")
    assert_one_line(lines["att_fk0"]["reason"], "no unique constraint")  # its parent index is missing
    rows = {r[0]: tuple(r)[1:] for r in await pg.fetch("SELECT id, at::text, label FROM ev ORDER BY id")}
    assert rows == {1: ("2024-01-01 10:00:00", "space"), 2: ("2024-01-01 10:00:00", "iso T")}

    sqlite_exec(db, "INSERT INTO ev VALUES (3, '2024-02-02 08:00:00', 'new');")
    again = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert await pg.fetchval("SELECT label FROM ev WHERE id = 3") == "new"
    _, data = status(cfg)
    listed = sorted((r["object"], r["name"]) for r in data["refused"])
    assert listed == [("att", "att_fk0"), ("ev", "ev_at_key")]
    code, human, report = verify(cfg)
    assert code == 0, human
    assert [w for w in warnings_of(report, "ev") if "ev_at_key" in w and "duplicate" in w], report
    assert [w for w in warnings_of(report, "att") if "att_fk0" in w], report


ORPHANS = """
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), body TEXT);
INSERT INTO users VALUES (1, 'ann');
INSERT INTO posts VALUES (1, 1, 'hello'), (2, 7, 'orphan');
"""


async def test_orphans_sqlite_never_checked_leave_the_key_not_valid_until_fixed(
        tmp_path: Path, make_config: Any, pg: asyncpg.Connection) -> None:
    db = tmp_path / "app.sqlite"
    sqlite_exec(db, ORPHANS)  # PRAGMA foreign_keys is off: SQLite takes the orphan
    cfg = make_config(db)
    run_syncd("--config", str(cfg), "init")
    proc = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = refusals(proc.stderr)["posts_fk0"]
    assert line["kind"] == "foreign key validation"
    assert_one_line(line["reason"], "violates foreign key constraint", "user_id")
    assert_one_line(line["todo"], "NOT VALID")
    assert await catalog(pg, "posts") == {"posts_fk0": False}  # enforced for new rows only
    _, data = status(cfg)
    assert [(r["object"], r["name"]) for r in data["refused"]] == [("posts", "posts_fk0")]
    code, _, report = verify(cfg)
    assert code == 0 and [w for w in warnings_of(report, "posts") if "posts_fk0" in w], report

    # the app fixes its data in SQLite: the next start validates the key and clears the record
    sqlite_exec(db, "INSERT INTO users VALUES (7, 'bob');")
    fixed = run_syncd("--config", str(cfg), "run", "--until-caught-up", check=False)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert refusals(fixed.stderr) == {}
    assert await catalog(pg, "posts") == {"posts_fk0": True}
    text, data = status(cfg)
    assert data["refused"] == [] and "posts_fk0" not in text
    code, _, report = verify(cfg)
    assert code == 0 and warnings_of(report, "posts") == [], report
