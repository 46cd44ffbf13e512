"""Mid-stream schema changes as apps make them: ``ALTER TABLE … ADD COLUMN``, or the table
rebuild Django, Prisma and Rails use for anything else (create ``new__x``, copy the rows,
drop ``x``, rename), with ``PRAGMA foreign_keys=OFF`` around it."""

from __future__ import annotations

import random
from dataclasses import replace

from tests.fuzz.model import Column, Schema, Step, Table, q
from tests.fuzz.schemas import SchemaGen

_ALTER_DEFAULTS = (None, None, "0", "1", "''", "'x'", "NULL", "3.5")
_WIDER = {"integer": "bigint", "INTEGER": "BIGINT", "int": "bigint", "real": "double", "float": "double"}


def _new_column(rng: random.Random, table: Table) -> Column:
    used = {c.name.lower() for c in table.columns}
    kind = rng.choice(("int", "text", "varchar", "bool", "datetime", "decimal", "json", "real"))
    col = SchemaGen(rng).column(table.flavor, kind, used)
    return replace(col, unique=False, not_null=False, default=rng.choice(_ALTER_DEFAULTS))


def alter_step(rng: random.Random, schema: Schema, table: Table) -> Step:
    col = _new_column(rng, table)
    new = table.with_columns((*table.columns, col))
    return Step(f"alter {table.name} add {col.name}",
                ((f"ALTER TABLE {q(table.name)} ADD COLUMN {col.ddl()}", ()),),
                schema=schema.replace_table(new))


def _changed(rng: random.Random, table: Table) -> tuple[Table, str]:
    """The rebuilt table's definition and what changed."""
    fk_cols = {c for fk in table.fks for c in fk.columns}
    droppable = [c for c in table.non_key if c.name not in fk_cols]
    choice = rng.choice(("add", "drop", "retype")) if droppable else "add"
    if choice == "add":
        col = _new_column(rng, table)
        return table.with_columns((*table.columns, col)), f"add {col.name}"
    victim = rng.choice(droppable)
    if choice == "drop":
        return table.with_columns(tuple(c for c in table.columns if c is not victim)), f"drop {victim.name}"
    if victim.params and victim.kind == "varchar":
        decl = victim.decl.replace(f"({victim.params[0]})", f"({victim.params[0] * 2})")
        new = replace(victim, decl=decl, params=(victim.params[0] * 2,))
    else:
        new = replace(victim, decl=_WIDER.get(victim.decl, victim.decl))
    cols = tuple(new if c is victim else c for c in table.columns)
    return table.with_columns(cols), f"retype {victim.name} {victim.decl!r} -> {new.decl!r}"


def rebuild_step(rng: random.Random, schema: Schema, table: Table) -> Step:
    new, what = _changed(rng, table)
    tmp = ("new__" if table.flavor != "prisma" else "new_") + table.name
    common = [c.name for c in new.columns if c.name in {o.name for o in table.columns}]
    cols = ", ".join(q(c) for c in common)
    stmts = (
        (new.ddl(tmp), ()),
        (f"INSERT INTO {q(tmp)} ({cols}) SELECT {cols} FROM {q(table.name)}", ()),
        (f"DROP TABLE {q(table.name)}", ()),
        (f"ALTER TABLE {q(tmp)} RENAME TO {q(table.name)}", ()),
    )
    return Step(f"rebuild {table.name} ({what})", stmts, fk_off=True, schema=schema.replace_table(new))
