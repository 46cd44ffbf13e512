"""After a case: every source row is equal by the oracle, or an open reject with a reason.

Anything else is a :class:`Divergence`:

- ``missing``: a source row that is neither in PostgreSQL nor rejected;
- ``extra``: a PostgreSQL row that matches no source row;
- ``changed``: a cell whose PostgreSQL text the oracle does not accept;
- ``accepted-unfit``: a cell the oracle says cannot be stored unchanged, stored anyway;
- ``no-reason``: a reject without an error text;
- ``table-missing`` / ``column-missing``: the target lacks what the source has.

Notices are reported but are not divergences: ``needless-reject`` (every cell fits, yet
the row is rejected) and ``unknown-type`` (a target type outside the oracle's table).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz.oracle import Cell, Expect, dispatch, reject, text_of
from tests.fuzz.stores import ROWID, Reject, SourceTable, TargetTable


@dataclass
class Divergence:
    kind: str
    table: str
    key: str
    column: str | None = None
    source: str = ""
    target: str | None = None
    detail: str = ""
    note: str = ""
    pg_type: str = ""
    tag: str = ""
    notice: bool = False

    def line(self) -> str:
        where = f"{self.table} key {self.key}" + (f" column {self.column!r}" if self.column else "")
        parts = [f"[{self.tag}] {self.kind}: {where}"]
        if self.source:
            parts.append(f"sqlite {self.source}")
        if self.pg_type:
            parts.append(f"pg {self.pg_type} {self.target!r}")
        if self.detail:
            parts.append(self.detail)
        return "; ".join(parts)


@dataclass
class TableResult:
    table: str
    divergences: list[Divergence] = field(default_factory=list)
    bad_keys: set[str] = field(default_factory=set)   # source keys (shown) the oracle found wrong
    source_keys: list[tuple[Cell, ...]] = field(default_factory=list)
    extra_rows: list[dict[str, str | None]] = field(default_factory=list)


def show_key(cells: tuple[Cell, ...]) -> str:
    return "[" + ", ".join(c.show() for c in cells) + "]"


def _key_value_matches(j: Any, cell: Cell) -> bool:
    if isinstance(j, dict):
        raw = j.get("$text_base64") or j.get("$base64")
        return raw is not None and base64.b64decode(raw) == cell.value
    if cell.cls == "text":
        return isinstance(j, str) and j == text_of(cell)
    if cell.cls == "null":
        return j is None
    if cell.cls in ("integer", "real"):
        return not isinstance(j, bool) and isinstance(j, int | float) and j == cell.value
    return False


def key_matches(jkey: Any, cells: tuple[Cell, ...]) -> bool:
    """Whether a reject's (or verify's) JSON key names the row with these key cells."""
    if not isinstance(jkey, list):
        jkey = [jkey]
    return len(jkey) == len(cells) and all(_key_value_matches(j, c) for j, c in zip(jkey, cells, strict=True))


def _expects(src: SourceTable, dst: TargetTable, res: TableResult,
             cells: dict[str, Cell], key: str) -> dict[str, Expect] | None:
    out: dict[str, Expect] = {}
    for col, cell in cells.items():
        if col not in dst.types:
            if cell.cls != "null":
                res.divergences.append(Divergence("column-missing", src.name, key, col, cell.show()))
                return None
            continue
        out[col] = dispatch(cell, dst.types[col])
    return out


def _key_expects(src: SourceTable, dst: TargetTable, keys: tuple[Cell, ...]) -> list[tuple[str, Expect]]:
    """Expectations of the key columns; a NULL can be no PostgreSQL key."""
    if not src.pk:
        return [(ROWID, dispatch(keys[0], "bigint"))]
    return [(c, reject("null-key") if k.cls == "null" else dispatch(k, dst.types.get(c, "text")))
            for c, k in zip(src.pk, keys, strict=True)]


def _find(dst_rows: list[dict[str, str | None]], kexp: list[tuple[str, Expect]]) -> int | None:
    for i, row in enumerate(dst_rows):
        if all(e.level != "reject" and e.ok(row.get(c)) for c, e in kexp):
            return i
    return None


def compare_table(src: SourceTable, dst: TargetTable | None, rejects: list[Reject]) -> TableResult:
    res = TableResult(src.name)
    if dst is None:
        if src.rows:
            res.divergences.append(Divergence("table-missing", src.name, "-",
                                              detail=f"{len(src.rows)} rows in SQLite"))
        return res
    mine = [r for r in rejects if r.table == src.name]
    remaining = list(dst.rows)
    pairs: list[tuple[tuple[Cell, ...], dict[str, Cell], dict[str, str | None] | None]] = []
    # rows whose key has one PostgreSQL spelling first, then the rest
    for keys, cells in sorted(src.rows, key=lambda r: any(e.want is None for _, e in
                                                          _key_expects(src, dst, r[0]))):
        i = _find(remaining, _key_expects(src, dst, keys))
        pairs.append((keys, cells, remaining.pop(i) if i is not None else None))
    for keys, cells, row in pairs:
        _compare_row(src, dst, res, keys, cells, row, mine)
    res.source_keys = [k for k, _ in src.rows]
    res.extra_rows = remaining
    for row in remaining:
        key = "[" + ", ".join(repr(row.get(c)) for c in (src.pk or (ROWID,))) + "]"
        res.divergences.append(Divergence("extra", src.name, key, detail="row only in PostgreSQL: "
                                          + ", ".join(f"{c}={v!r}" for c, v in list(row.items())[:8])))
    return res


def _compare_row(src: SourceTable, dst: TargetTable, res: TableResult, keys: tuple[Cell, ...],
                 cells: dict[str, Cell], row: dict[str, str | None] | None, rejects: list[Reject]) -> None:
    key = show_key(keys)
    found = [r for r in rejects if key_matches(r.key, keys)]
    expects = _expects(src, dst, res, cells, key)
    if expects is None:
        res.bad_keys.add(key)
        return
    kexp = _key_expects(src, dst, keys)
    unfit = [(c, e) for c, e in [*kexp, *expects.items()] if e.level == "reject"]
    if found:
        if not any(r.error.strip() for r in found):
            res.divergences.append(Divergence("no-reason", src.name, key))
        if not unfit and all(e.level == "must" for e in expects.values()):
            res.divergences.append(Divergence("needless-reject", src.name, key, detail=found[0].error,
                                              notice=True))
        return
    before = len(res.divergences)
    if row is None:
        res.divergences.append(Divergence(
            "missing", src.name, key, detail="not in PostgreSQL and not rejected"
            + (f" (would be a reject: {unfit[0][0]} {unfit[0][1].note})" if unfit else "")))
    else:
        for col, exp in expects.items():
            _compare_cell(res, src.name, key, col, cells[col], exp, row.get(col), dst.types[col])
    if len(res.divergences) > before:
        res.bad_keys.add(key)


def _compare_cell(res: TableResult, table: str, key: str, col: str, cell: Cell, exp: Expect,
                  got: str | None, pg_type: str) -> None:
    if exp.note.startswith("unknown-type"):
        res.divergences.append(Divergence("unknown-type", table, key, col, cell.show(), got,
                                          pg_type=pg_type, note=exp.note, notice=True))
        return
    if exp.level == "reject":
        res.divergences.append(Divergence("accepted-unfit", table, key, col, cell.show(), got,
                                          "stored, but the value does not fit unchanged",
                                          exp.note, pg_type))
    elif not exp.ok(got):
        one = exp.want is not None or exp.note == "null"
        want = f"expected {exp.want!r}" if one else "expected the same value"
        res.divergences.append(Divergence("changed", table, key, col, cell.show(), got, want,
                                          exp.note, pg_type))
