"""Random operations on the app's SQLite file, recorded so that a case can be replayed.

A :class:`~tests.fuzz.model.Step` is one transaction of the app (one or more statements,
committed or rolled back), a schema change, ``VACUUM``, or a daemon event that the case
runner interprets. Steps are drawn against the live file (which keys exist), so the same
seed gives the same steps; a step SQLite refuses (a UNIQUE or foreign-key violation) is
rolled back and kept out of the record.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from typing import Any

from tests.fuzz.ddl import alter_step, rebuild_step
from tests.fuzz.model import Column, Raw, Schema, Step, Stmt, Table, bind, q
from tests.fuzz.values import ValueGen

MAX_ROWS = 60


def where_key(table: Table, key: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """``WHERE``-clause text and params matching one row by its key (``IS``: keys may be NULL)."""
    cols = table.pk or ("rowid",)
    marks, params = bind(key)
    cond = " AND ".join(f"{q(c) if table.pk else 'rowid'} IS {m}" for c, m in zip(cols, marks, strict=True))
    return cond, params


def apply(conn: sqlite3.Connection, step: Step, foreign_keys: bool) -> bool:
    """Run *step* on the app connection (autocommit mode); False if SQLite refused it."""
    if step.is_event:
        return True
    if step.statements == (("VACUUM", ()),):
        conn.execute("VACUUM")
        return True
    if step.fk_off:
        conn.execute("PRAGMA foreign_keys = OFF")
    try:
        conn.execute("BEGIN")
        try:
            for sql, params in step.statements:
                conn.execute(sql, params)
        except sqlite3.Error:
            if conn.in_transaction:  # SQLITE_FULL and others roll back by themselves
                conn.execute("ROLLBACK")
            return False
        conn.execute("COMMIT" if step.commit else "ROLLBACK")
        return True
    finally:
        if step.fk_off:
            conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")


def read_keys(conn: sqlite3.Connection, table: Table) -> list[tuple[Any, ...]]:
    """Every key of *table* (rowid when it has no primary key); invalid UTF-8 text as :class:`Raw`."""
    cols = ", ".join(q(c) for c in table.pk) if table.pk else "rowid"
    conn.text_factory = bytes
    try:
        rows = [tuple(r) for r in conn.execute(f"SELECT {cols} FROM {q(table.name)} ORDER BY 1")]
    finally:
        conn.text_factory = str
    out = []
    for row in rows:
        vals: list[Any] = []
        for v in row:
            if isinstance(v, bytes):  # text (blobs are not keys here)
                try:
                    v = v.decode()
                except UnicodeDecodeError:
                    v = Raw(f"CAST(X'{v.hex()}' AS TEXT)")
            vals.append(v)
        out.append(tuple(vals))
    return out


class OpGen:
    """Draws steps against the live SQLite file. ``schema`` follows the DDL steps that applied."""

    def __init__(self, rng: random.Random, schema: Schema, values: ValueGen) -> None:
        self.rng = rng
        self.schema = schema
        self.values = values
        self.ddl_done = False

    def applied(self, step: Step) -> None:
        if step.schema is not None:
            self.schema = step.schema
            self.ddl_done = True

    # --- keys and rows ---------------------------------------------------------------------

    def existing_key(self, conn: sqlite3.Connection, table: Table) -> tuple[Any, ...] | None:
        keys = read_keys(conn, table)
        return self.rng.choice(keys) if keys else None

    def new_key_value(self, col: Column, table: Table) -> Any:
        rng = self.rng
        wild = rng.random() < self.values.wild
        if table.pk_style == "rowid-alias" or (col.kind == "int" and col.name in table.pk):
            if wild and table.pk_style != "rowid-alias":
                return rng.choice((None, "k1", 1.5, "", 2**63 - 1))
            return rng.choice((rng.randint(1, 500), rng.randint(1, 500), 2**63 - 1, -(2**63), 0, -7))
        if col.kind == "uuid":
            if wild:
                return rng.choice(("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "", None, "x\x00y", 42))
            u = uuid.UUID(int=rng.getrandbits(128), version=4)
            return u.hex if "32" in col.decl else str(u)
        if wild:
            return rng.choice(("", " ", "a ", "A", "é", "e\u0301", "k\x00", None, 12, 1.5, "😀" * 3))
        return rng.choice(("a", "b", "k")) + str(rng.randint(0, 300))

    def parent_key(self, conn: sqlite3.Connection, table: Table) -> dict[str, Any]:
        """Values for *table*'s foreign-key columns: an existing parent key, now and then none."""
        out: dict[str, Any] = {}
        for fk in table.fks:
            parent = self.schema.table(fk.parent)
            key = self.existing_key(conn, parent)
            if key is None or self.rng.random() < 0.05:
                key = tuple(self.rng.choice((None, 999999)) for _ in fk.columns)
            out.update(zip(fk.columns, key, strict=True))
        return out

    def row(self, conn: sqlite3.Connection, table: Table, key: tuple[Any, ...] | None) -> dict[str, Any]:
        row = {c.name: self.values.value(c) for c in table.non_key}
        row.update(self.parent_key(conn, table))
        if table.pk:
            if key is None:
                key = tuple(self.new_key_value(table.column(c), table) for c in table.pk)
                if table.pk_style == "rowid-alias" and self.rng.random() < 0.7:
                    key = ()  # let SQLite pick the rowid
            row.update(zip(table.pk, key, strict=False))
        for c in list(row):
            if table.column(c).default is not None and c not in table.pk and self.rng.random() < 0.3:
                del row[c]  # let the DEFAULT apply
        return row

    def insert_sql(self, table: Table, row: dict[str, Any], verb: str = "INSERT", tail: str = "") -> Stmt:
        if not row:
            return f"{verb} INTO {q(table.name)} DEFAULT VALUES{tail}", ()
        marks, params = bind(list(row.values()))
        cols = ", ".join(q(c) for c in row)
        return f"{verb} INTO {q(table.name)} ({cols}) VALUES ({', '.join(marks)}){tail}", params

    # --- steps ------------------------------------------------------------------------------

    def step(self, conn: sqlite3.Connection) -> Step:
        rng = self.rng
        table = rng.choice(self.schema.tables)
        big = len(read_keys(conn, table)) > MAX_ROWS
        weights = {"insert": 5 if big else 25, "replace": 10, "upsert": 10 if table.pk else 0,
                   "update": 20, "update-many": 4, "key-change": 6, "delete": 30 if big else 12,
                   "vacuum": 5, "alter": 0 if self.ddl_done else 1.5,
                   "rebuild": 0 if self.ddl_done else 1.5}
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if kind == "vacuum":
            return Step("vacuum", (("VACUUM", ()),))
        if kind == "alter":
            return alter_step(rng, self.schema, table)
        if kind == "rebuild":
            return rebuild_step(rng, self.schema, table)
        stmts: list[Stmt] = [self.one(conn, table, kind)]
        while rng.random() < 0.25:
            other = rng.choice(self.schema.tables)
            stmts.append(self.one(conn, other, rng.choice(("insert", "update", "delete", "replace"))))
        return Step(f"{kind} {table.name}", tuple(stmts), commit=rng.random() > 0.08)

    def one(self, conn: sqlite3.Connection, table: Table, kind: str) -> Stmt:
        rng = self.rng
        key = self.existing_key(conn, table)
        if kind == "insert" or (key is None and kind != "update-many"):
            return self.insert_sql(table, self.row(conn, table, None))
        assert key is not None or kind == "update-many"
        if kind == "replace":
            return self.insert_sql(table, self.row(conn, table, key if rng.random() < 0.6 else None),
                                   "INSERT OR REPLACE")
        if kind == "upsert":
            return self.upsert(conn, table, key)
        if kind == "update" and table.non_key and key is not None:
            cols = rng.sample(table.non_key, rng.randint(1, min(3, len(table.non_key))))
            marks, params = bind([self.values.value(c) for c in cols])
            sets = ", ".join(f"{q(c.name)} = {m}" for c, m in zip(cols, marks, strict=True))
            cond, kparams = where_key(table, key)
            return f"UPDATE {q(table.name)} SET {sets} WHERE {cond}", params + kparams
        if kind == "update-many" and table.non_key:
            col, other = rng.choice(table.non_key), rng.choice(table.columns)
            marks, params = bind([self.values.value(col)])
            return (f"UPDATE {q(table.name)} SET {q(col.name)} = {marks[0]} "
                    f"WHERE {q(other.name)} IS {rng.choice(('NULL', 'NOT NULL'))}", params)
        assert key is not None
        if kind == "key-change":
            return self.key_change(table, key)
        cond, kparams = where_key(table, key)
        return f"DELETE FROM {q(table.name)} WHERE {cond}", kparams

    def upsert(self, conn: sqlite3.Connection, table: Table, key: tuple[Any, ...] | None) -> Stmt:
        rng = self.rng
        row = self.row(conn, table, key if rng.random() < 0.7 else None)
        for c in table.pk:  # ON CONFLICT needs the key columns in the row
            row.setdefault(c, None if table.pk_style == "rowid-alias" else
                           self.new_key_value(table.column(c), table))
        target = ", ".join(q(c) for c in table.pk)
        sets = [c for c in row if c not in table.pk]
        if not sets or rng.random() < 0.1:
            return self.insert_sql(table, row, tail=f" ON CONFLICT ({target}) DO NOTHING")
        picked = rng.sample(sets, rng.randint(1, len(sets)))
        upd = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in picked)
        return self.insert_sql(table, row, tail=f" ON CONFLICT ({target}) DO UPDATE SET {upd}")

    def key_change(self, table: Table, key: tuple[Any, ...]) -> Stmt:
        cond, kparams = where_key(table, key)
        if not table.pk:
            return (f"UPDATE {q(table.name)} SET rowid = ? WHERE {cond}",
                    (self.rng.randint(1, 10_000), *kparams))
        col = self.rng.choice(table.pk)
        marks, params = bind([self.new_key_value(table.column(col), table)])
        return f"UPDATE {q(table.name)} SET {q(col)} = {marks[0]} WHERE {cond}", params + kparams
