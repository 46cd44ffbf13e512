"""Divergence classes: a tag per divergence, so that a report groups them.

Tags of the form ``known:…`` name divergences already filed (issue 11); everything else
gets a tag from what diverged: ``kind:target-family:value-shape`` for a cell (e.g.
``changed:date:date-with-time``), ``kind:key-style[+context]`` for a whole row (e.g.
``missing:text+replace``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.fuzz.check import Divergence

KNOWN = {
    "known:datetime-infinity": "year-1 / year-9999 date-times stored as ±infinity (issue 11, item 1)",
    "known:decimal-rounded": "a DECIMAL(p,s) value with more decimals stored rounded (issue 11, item 7)",
    "known:rowid-vacuum":
        "a table without primary key drifts after VACUUM renumbers rowids (issue 11, item 2)",
}


@dataclass
class Context:
    """What happened in a case, as far as classes need it."""

    rowid_tables: set[str] = field(default_factory=set)
    pk_style: dict[str, str] = field(default_factory=dict)
    vacuumed_after_init: bool = False
    killed: bool = False
    touched: dict[str, set[str]] = field(default_factory=dict)  # table -> {"ddl", "replace", …}


def family(pg_type: str) -> str:
    t = re.sub(r"\(.*\)", "", pg_type).strip()
    short = {"timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz",
             "time without time zone": "time", "character varying": "varchar", "double precision": "double"}
    base = short.get(t, t)
    if t == "numeric" and "(" in pg_type:
        return "numeric(p,s)"
    return base


def tag(d: Divergence, ctx: Context, shifted: bool = False) -> str:
    """The class of *d*; *shifted*: its row differs in several columns (another row's image)."""
    if d.kind == "verify-silent":
        return "verify-silent/" + (d.tag or "?")
    fam = family(d.pg_type) if d.pg_type else ""
    if d.target in ("infinity", "-infinity") and fam in ("timestamp", "timestamptz", "date"):
        return "known:datetime-infinity"
    if d.kind == "accepted-unfit" and fam == "numeric(p,s)" and d.note == "decimal-scale":
        return "known:decimal-rounded"
    if d.table in ctx.rowid_tables and ctx.vacuumed_after_init and (
            d.kind in ("missing", "extra") or (d.kind == "changed" and shifted)):
        return "known:rowid-vacuum"
    if d.kind in ("changed", "accepted-unfit", "unknown-type"):
        return f"{d.kind}:{fam}:{d.note}"
    if d.kind == "syncd-error":
        return "syncd-error:" + normalize(d.detail)
    if d.kind in ("missing", "extra"):
        flags = sorted(ctx.touched.get(d.table, set()) & {"ddl", "replace", "key-change", "upsert"})
        if ctx.killed:
            flags.append("kill")
        style = ctx.pk_style.get(d.table, "?")
        return f"{d.kind}:{style}" + "".join("+" + f for f in flags)
    return d.kind


def normalize(message: str) -> str:
    """An error message without its particulars (names, numbers, values), to group by."""
    text = message.split("\n", 1)[0]
    text = re.sub(r"(/[^\s/:]+)+/?", "<path>", text)
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:120]


def classify(divs: list[Divergence], ctx: Context) -> list[Divergence]:
    per_row: dict[tuple[str, str], int] = {}
    for d in divs:
        if d.kind == "changed":
            per_row[(d.table, d.key)] = per_row.get((d.table, d.key), 0) + 1
    for d in divs:
        d.tag = tag(d, ctx, per_row.get((d.table, d.key), 0) >= 2)
    return divs
