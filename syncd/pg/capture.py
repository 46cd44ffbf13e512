"""Reverse capture in PostgreSQL: the changelog and the triggers that fill it (install, uninstall, check).

Works without replication privileges (managed PostgreSQL): an AFTER INSERT / UPDATE /
DELETE row trigger on each captured table inserts one changelog row per change, inside
the writer's own transaction, and NOTIFYs ``syncd_changelog`` so that readers wake up.

``syncd.changelog``::

    id   bigint   position; from the sequence syncd.changelog_id_seq at insert time
    nsp  text     schema of the captured table
    tbl  text     captured table (plain name; nsp holds its schema)
    op   text     'I' | 'U' | 'D'; a primary-key change is logged as D (old key) + I (new)
    pk   jsonb    array of the key values, in primary-key column order
    row  jsonb    to_jsonb(NEW); NULL for a delete
    ts   float8   clock_timestamp() as Unix time (for lag)
    xid  xid8     the writing transaction

``TRUNCATE`` of a captured table is logged as one D per row (a BEFORE TRUNCATE statement
trigger), so that it is not lost on the way back.

**Origin tagging.** The triggers do nothing when ``current_setting('syncd.origin', true)``
is ``'syncd'``: :func:`syncd.pg.connect.connect` sets that parameter in the startup packet of
every syncd connection, so syncd's own (forward) writes are never captured back. Where
syncd may set ``session_replication_role = replica`` the triggers do not even fire.

Each install of the changelog gets a random *generation* (``syncd.changelog_meta``,
:func:`generation`); a checkpoint taken against another generation is refused.
The changelog is read by :class:`syncd.pg.changelog.ChangeReader`.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import structlog

from syncd.errors import CaptureError, SyncdError
from syncd.pg import split
from syncd.pg.connect import translate
from syncd.sql import qi, ql

log = structlog.get_logger("syncd.pg.capture")

SCHEMA = "syncd"
CHANGELOG = f"{SCHEMA}.changelog"
SEQUENCE = f"{SCHEMA}.changelog_id_seq"
CAPTURED = f"{SCHEMA}.captured"
META = f"{SCHEMA}.changelog_meta"
CHANNEL = "syncd_changelog"
TRIGGER = "syncd_capture"
TRUNCATE_TRIGGER = "syncd_capture_truncate"
ORIGIN_SETTING = "syncd.origin"
ORIGIN_VALUE = "syncd"
_LOCK_KEY = 0x73796E6364  # "syncd": serialises capture DDL across syncd processes

_SKIP_OWN = f"""
    IF current_setting('{ORIGIN_SETTING}', true) = '{ORIGIN_VALUE}' THEN
        RETURN NULL;
    END IF;"""

SETUP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};
CREATE TABLE IF NOT EXISTS {CHANGELOG} (
    id    bigint PRIMARY KEY DEFAULT nextval('{SEQUENCE}'),
    nsp   text NOT NULL,
    tbl   text NOT NULL,
    op    text NOT NULL CHECK (op IN ('I', 'U', 'D')),
    pk    jsonb NOT NULL,
    "row" jsonb,
    ts    double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
    xid   xid8 NOT NULL DEFAULT pg_current_xact_id()
);
ALTER SEQUENCE {SEQUENCE} OWNED BY {CHANGELOG}.id;
CREATE INDEX IF NOT EXISTS changelog_table ON {CHANGELOG} (nsp, tbl, id);
CREATE TABLE IF NOT EXISTS {CAPTURED} (
    nsp          text NOT NULL,
    tbl          text NOT NULL,
    pk           text[] NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (nsp, tbl)
);
CREATE TABLE IF NOT EXISTS {META} (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO {META} (key, value) VALUES ('generation', gen_random_uuid()::text)
    ON CONFLICT (key) DO NOTHING;

CREATE OR REPLACE FUNCTION {SCHEMA}.capture() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    new_row jsonb;
    old_key jsonb;
    new_key jsonb;
BEGIN{_SKIP_OWN}
    IF TG_OP <> 'INSERT' THEN
        SELECT jsonb_agg(to_jsonb(OLD) -> a.k ORDER BY a.n) INTO old_key
          FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
        SELECT jsonb_agg(new_row -> a.k ORDER BY a.n) INTO new_key
          FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'D', old_key, NULL);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'I', new_key, new_row);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'U', new_key, new_row);
    END IF;
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION {SCHEMA}.capture_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN{_SKIP_OWN}
    EXECUTE format(
        'INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row") '
        'SELECT %L, %L, ''D'', (SELECT jsonb_agg(to_jsonb(t) -> a.k ORDER BY a.n) '
        'FROM unnest(%L::text[]) WITH ORDINALITY AS a(k, n)), NULL FROM %I.%I AS t',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$;
"""


def qualified(schema: str, table: str) -> str:
    return f"{qi(schema)}.{qi(table)}"


async def _primary_key(conn: asyncpg.Connection, schema: str, table: str) -> list[str] | None:
    """The primary-key columns of *schema.table* in key order; None if the table does not exist."""
    exists = await conn.fetchval(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')", schema, table)
    if exists is None:
        return None
    rows = await conn.fetch(
        """SELECT a.attname FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n""", exists)
    return [r["attname"] for r in rows]


async def _installed(conn: asyncpg.Connection, schema: str, table: str) -> tuple[bool, list[str] | None]:
    """Whether both triggers exist on the table, and the key recorded when they were made."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
        return False, None
    n = await conn.fetchval(
        """SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace s ON s.oid = c.relnamespace
           WHERE s.nspname = $1 AND c.relname = $2 AND t.tgname = ANY($3::text[])""",
        schema, table, [TRIGGER, TRUNCATE_TRIGGER])
    pk = await conn.fetchval(f"SELECT pk FROM {CAPTURED} WHERE nsp = $1 AND tbl = $2", schema, table)
    return n == 2, list(pk) if pk is not None else None


async def install(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """Create the changelog and the capture triggers on *tables* of *schema*; idempotent.

    Returns the tables whose triggers were created or rebuilt (their primary key changed).
    Runs in one transaction under ``pg_advisory_xact_lock``: concurrent installs (the table
    stream and the vector stream) serialise, and either every trigger exists afterwards or
    nothing changed. A table without a primary key, or missing, raises :class:`CaptureError`.
    """
    changed: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(SETUP)
            for table in tables:
                pk = await _primary_key(conn, schema, table)
                if pk is None:
                    raise CaptureError(f"cannot capture {schema}.{table} for the reverse stream: "
                                       "no such table in PostgreSQL")
                if not pk:
                    raise CaptureError(f"cannot capture {schema}.{table} for the reverse stream: it has "
                                       "no primary key; add one (syncd keys changes by primary key)")
                present, recorded = await _installed(conn, schema, table)
                if await _install_split(conn, schema, table, pk, present and recorded == pk):
                    changed.append(table)
                    continue
                if present and recorded == pk:
                    continue
                qt, args = qualified(schema, table), ", ".join(ql(k) for k in pk)
                await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qt}")
                await conn.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {qt}")
                await conn.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qt} "
                                   f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture({args})")
                await conn.execute(f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {qt} "
                                   f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.capture_truncate({args})")
                await conn.execute(
                    f"INSERT INTO {CAPTURED} (nsp, tbl, pk) VALUES ($1, $2, $3) "
                    "ON CONFLICT (nsp, tbl) DO UPDATE SET pk = EXCLUDED.pk, installed_at = now()",
                    schema, table, pk)
                changed.append(table)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, "installing reverse capture in PostgreSQL") from exc
    if changed:
        log.info("reverse capture installed", schema=schema, tables=changed)
    return changed


async def _install_split(conn: asyncpg.Connection, schema: str, table: str, pk: list[str],
                         present: bool) -> bool:
    """Capture of a collection split over two tables (:mod:`syncd.pg.split`): the
    triggers on both tables log the item under *table*'s name. False when *table* is no split;
    True when it is (its triggers were made again unless *present*)."""
    s = await split.lookup(conn, schema, table)
    if s is None:
        return False
    fn, truncate = f"{SCHEMA}.{qi(s.view + '_capture')}", f"{SCHEMA}.{qi(s.view + '_capture_truncate')}"
    await conn.execute(split.capture_sql(s, await split.key_type(conn, s), CHANGELOG, CHANNEL, _SKIP_OWN))
    docs_present, _ = await _installed(conn, schema, s.documents)
    if present and docs_present:
        return False
    for q in (s.emb_qualified, s.docs_qualified):
        await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {q}")
        await conn.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {q}")
        await conn.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {q} "
                           f"FOR EACH ROW EXECUTE FUNCTION {fn}()")
        await conn.execute(f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {q} "
                           f"FOR EACH STATEMENT EXECUTE FUNCTION {truncate}()")
    await conn.execute(
        f"INSERT INTO {CAPTURED} (nsp, tbl, pk) VALUES ($1, $2, $3) "
        "ON CONFLICT (nsp, tbl) DO UPDATE SET pk = EXCLUDED.pk, installed_at = now()", schema, table, pk)
    return True


async def uninstall(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Drop the capture triggers of *tables*; when no table is captured any more, drop the
    changelog, its sequence, functions and bookkeeping too (a later install starts a new
    generation)."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            for table in await split.with_documents(conn, schema, list(tables)):
                if await _primary_key(conn, schema, table) is not None:
                    qt = qualified(schema, table)
                    await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qt}")
                    await conn.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {qt}")
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
                    await conn.execute(f"DELETE FROM {CAPTURED} WHERE nsp = $1 AND tbl = $2", schema, table)
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
                return
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {CAPTURED})"):
                return
            for ddl in (f"DROP TABLE IF EXISTS {CHANGELOG}", f"DROP SEQUENCE IF EXISTS {SEQUENCE}",
                        f"DROP TABLE IF EXISTS {CAPTURED}", f"DROP TABLE IF EXISTS {META}",
                        f"DROP FUNCTION IF EXISTS {SCHEMA}.capture()",
                        f"DROP FUNCTION IF EXISTS {SCHEMA}.capture_truncate()"):
                await conn.execute(ddl)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, "removing reverse capture from PostgreSQL") from exc


async def missing(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """The tables of *tables* whose changes would not be captured (no triggers, or triggers
    built for another primary key). The cutover refuses while this is not empty."""
    out: list[str] = []
    try:
        for table in tables:
            present, recorded = await _installed(conn, schema, table)
            if not present or recorded != await _primary_key(conn, schema, table):
                out.append(table)
    except Exception as exc:
        raise translate(exc, "checking reverse capture in PostgreSQL") from exc
    return out


async def generation(conn: asyncpg.Connection) -> str | None:
    """The random id of this install of the changelog (None when not installed)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", META):
        return None
    value = await conn.fetchval(f"SELECT value FROM {META} WHERE key = 'generation'")
    return str(value) if value is not None else None
