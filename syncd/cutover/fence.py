"""Write fences: triggers that refuse the app's writes to the stores it no longer uses.

After a cutover the SQLite file is fenced (and Chroma's queue, see
``syncd.stores.chroma.fence``); after a rollback PostgreSQL is. A fence refuses a write
with a message naming the migration and the command that moves the app back, so
a writer that was not reloaded fails loudly instead of writing into a store
nobody reads. syncd's own writes pass: in SQLite they run with
``_syncd_origin.suppress = 1`` (the same flag that keeps capture from seeing
them), in PostgreSQL with ``syncd.origin = 'syncd'``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import asyncpg

from syncd.pg import split
from syncd.sql import qi, ql
from syncd.stores.sqlite.capture import ORIGIN

SQLITE_PREFIX = "_syncd_fence_"
SQLITE_MESSAGE = ("syncd: this SQLite database is fenced: the app was cut over to PostgreSQL "
                  "(syncd cutover); writes go to PostgreSQL now. To return, run: syncd rollback")
PG_TRIGGER = "syncd_fence"
PG_MESSAGE = ("syncd: this PostgreSQL table is fenced: the app was rolled back to SQLite/Chroma "
              "(syncd rollback); writes go there now. To move again, run: syncd cutover")


def sqlite_trigger_names(table: str) -> list[str]:
    return [f"{SQLITE_PREFIX}{kind}_{table}" for kind in ("ins", "upd", "del")]


def sqlite_fence_ddl(table: str) -> list[str]:
    """BEFORE triggers that abort the app's writes to *table* (syncd's own writes pass)."""
    when = f"WHEN (SELECT suppress FROM {ORIGIN}) = 0"
    body = f"BEGIN SELECT RAISE(ABORT, {ql(SQLITE_MESSAGE)}); END"
    names = [qi(n) for n in sqlite_trigger_names(table)]
    return [f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {qi(table)} {when} {body}"
            for name, event in zip(names, ("INSERT", "UPDATE", "DELETE"), strict=True)]


def install_sqlite(conn: sqlite3.Connection, tables: Iterable[str]) -> None:
    """Create the fence triggers in *conn*'s open transaction (the caller commits)."""
    for table in tables:
        for ddl in sqlite_fence_ddl(table):
            conn.execute(ddl)


def remove_sqlite(conn: sqlite3.Connection) -> list[str]:
    """Drop every fence trigger in *conn*'s open transaction; return their names."""
    names = sqlite_fences(conn)
    for name in names:
        conn.execute(f"DROP TRIGGER IF EXISTS {qi(name)}")
    return names


def sqlite_fences(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\' ORDER BY name",
        (SQLITE_PREFIX.replace("_", "\\_") + "%",))]


_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION syncd.fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
BEGIN
    IF current_setting('syncd.origin', true) IS DISTINCT FROM 'syncd' THEN
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = {ql(PG_MESSAGE)},
            DETAIL = format('write to %I.%I refused', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$fence$
"""


def _qname(schema: str, table: str) -> str:
    return f'"{schema.replace(chr(34), chr(34) * 2)}"."{table.replace(chr(34), chr(34) * 2)}"'


async def install_pg(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Fence *tables* in one transaction: statement triggers that refuse the app's writes.

    Creating a trigger waits for the writes in flight on the table to commit, so once this
    returns every write the app made is committed (and captured) and every later one fails.
    """
    async with conn.transaction():
        await conn.execute("CREATE SCHEMA IF NOT EXISTS syncd")
        await conn.execute(_PG_FUNCTION)
        for table in await split.with_documents(conn, schema, list(tables)):
            q = _qname(schema, table)
            await conn.execute(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {q}")
            await conn.execute(f"CREATE TRIGGER {PG_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
                               f"ON {q} FOR EACH STATEMENT EXECUTE FUNCTION syncd.fence()")


async def remove_pg(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> None:
    async with conn.transaction():
        for table in await split.with_documents(conn, schema, list(tables)):
            if await conn.fetchval("SELECT to_regclass($1)", _qname(schema, table)) is not None:
                await conn.execute(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {_qname(schema, table)}")


async def pg_fenced(conn: asyncpg.Connection, schema: str) -> list[str]:
    """The tables of *schema* that carry the fence."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE t.tgname = $1 AND n.nspname = $2 ORDER BY 1""", PG_TRIGGER, schema)
    return [r[0] for r in rows]
