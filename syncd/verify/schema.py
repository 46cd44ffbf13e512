"""verify's look at the schema: the SQLite indexes and foreign keys PostgreSQL lacks.

On the tables syncd created, syncd adds SQLite's indexes, unique constraints and foreign keys
once the stream has caught up, and PostgreSQL may refuse some
(:mod:`syncd.stores.postgres.constraints`). verify looks for each in PostgreSQL's catalog
itself rather than trusting syncd's record: an index by its name, a foreign key by its
columns, the table and columns it references, and whether it is validated. Each one missing
or ``NOT VALID`` is a warning of its table's check, with PostgreSQL's reason when
``syncd.refused_constraints`` holds one; expression and partial indexes, which syncd does not
recreate, are named too. A warning leaves the rows' verdict and the exit code as they are: the
data is what verify proves; the schema is reported, never claimed complete. Reads only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from syncd.config import Target
from syncd.ports.tables import Table
from syncd.sql import STATE_SCHEMA, qi

_FOREIGN_KEYS = """
SELECT c.conname::text AS name, c.convalidated AS ok, c.confrelid::oid AS ref,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols,
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o) AS ref_cols
FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.contype = 'f'
"""


async def _rows(conn: asyncpg.Connection, table: str, where: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one of syncd's tables read whole (any version of it), or none if it is absent."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{STATE_SCHEMA}.{table}"):
        return []
    texts = await conn.fetch(f"SELECT to_jsonb(t)::text AS j FROM {STATE_SCHEMA}.{table} t WHERE {where}",
                             *args)
    return [json.loads(r["j"]) for r in texts]


async def schema_warnings(conn: asyncpg.Connection, target: Target, stream: str,
                          tables: Sequence[Table]) -> dict[str, list[str]]:
    """Per source table: the indexes and foreign keys PostgreSQL lacks, one line each."""
    objects = {r["object"]: bool(r.get("created"))
               for r in await _rows(conn, "objects", "stream = $1", stream)}
    refused = {(r["object"], r["name"]): r
               for r in await _rows(conn, "refused_constraints", "stream = $1", stream)}
    out: dict[str, list[str]] = {}
    for table in tables:
        if objects.get(table.name):  # else adopted, or not synced: syncd adds nothing to it
            lines = await _table(conn, target, table, set(objects),
                                 {n: r for (o, n), r in refused.items() if o == table.name})
            if lines:
                out[table.name] = lines
    return out


def _lacks(name: str, kind: str, what: str, why: dict[str, Any] | None) -> str:
    return f"{kind} {name} {what} in PostgreSQL: " + (
        f"PostgreSQL refused it ({why.get('attempts', 1)}×): {why.get('error')}; {why.get('todo')}"
        if why else "not created (yet: syncd adds it once the stream has caught up)")


async def _table(conn: asyncpg.Connection, target: Target, table: Table, synced: set[str],
                 refused: dict[str, dict[str, Any]]) -> list[str]:
    qualified = f"{qi(target.schema)}.{qi(target.table_for(table.name))}"
    named = {r[0] for r in await conn.fetch(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass($1)", qualified)}
    keys = await conn.fetch(_FOREIGN_KEYS, qualified)
    lines: list[str] = []
    mentioned = named | {k["name"] for k in keys}
    for idx in table.indexes:
        if idx.name not in named:
            mentioned.add(idx.name)
            lines.append(_lacks(idx.name, "unique index" if idx.unique else "index", "missing",
                                refused.get(idx.name)))
    for name in table.skipped_indexes:
        lines.append(f"index {name} missing in PostgreSQL: an expression or partial index, which "
                     "syncd does not recreate; create it yourself if the app needs it")
    for i, fk in enumerate(table.foreign_keys):
        if fk.ref_table not in synced:
            continue  # syncd adds no key to a table it does not sync
        ref = await conn.fetchval("SELECT to_regclass($1)::oid",
                                  f"{qi(target.schema)}.{qi(target.table_for(fk.ref_table))}")
        found = [k["ok"] for k in keys if k["ref"] == ref and list(k["cols"]) == list(fk.columns)
                 and list(k["ref_cols"]) == list(fk.ref_columns)]
        if not any(found):
            name = f"{target.table_for(table.name)}_fk{i}"
            mentioned.add(name)
            what = (f"({', '.join(fk.columns)}) REFERENCES {fk.ref_table} ({', '.join(fk.ref_columns)}) "
                    + ("NOT VALID" if found else "missing"))
            lines.append(_lacks(name, "foreign key", what, refused.get(name)))
    for name, why in refused.items():
        if name not in mentioned:
            lines.append(_lacks(name, str(why.get("kind")), "missing", why))
    return lines


__all__ = ["schema_warnings"]
