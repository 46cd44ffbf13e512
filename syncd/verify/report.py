"""What ``syncd verify`` found: one result per check, and how it is printed.

A check is one table, one Chroma collection, or the search parity of one
collection (kind ``search``). Its status is ``match``, ``differ`` (persistent
differences, rows verify finds unwritable that are not in ``syncd.rejects``, or a
problem of the whole check such as a dimension mismatch or a recall below the
threshold), ``unsettled`` (rows kept changing until the settle deadline, so no
verdict), ``quarantined`` (nothing differs but rows quarantined in ``syncd.rejects``
that no operator accepted), ``error`` (the check could not run) or ``skipped`` (not
asked for, or not possible here). Rejects an operator accepted (``syncd rejects
--accept``) are listed and not counted.

The exit code (:attr:`Report.exit_code`): 0 all match, 5 only quarantined rows stand in
the way, 1 anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MATCH, DIFFER, UNSETTLED, ERROR, SKIPPED = "match", "differ", "unsettled", "error", "skipped"
QUARANTINED = "quarantined"
EXIT_QUARANTINED = 5
""":data:`syncd.exitcodes.QUARANTINED`."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One row that differs: ``missing`` / ``extra`` in the target, or ``changed`` columns."""

    key: list[Any]
    kind: str
    columns: list[str] = field(default_factory=list)
    detail: str = ""
    """What differs, when verify can say more than the columns (a vector component, a metadata key)."""

    def describe(self) -> str:
        cols = f" ({', '.join(self.columns)})" if self.columns else ""
        what = {"missing": "missing in PostgreSQL", "extra": "extra in PostgreSQL",
                "changed": "changed"}.get(self.kind, self.kind)
        more = f": {self.detail}" if self.detail else ""
        return f"key {json.dumps(self.key, default=str, ensure_ascii=False)}: {what}{cols}{more}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A source row quarantined in ``syncd.rejects``, or one the mapping cannot write."""

    key: list[Any]
    error: str
    recorded: bool
    """True when the row is in ``syncd.rejects``; False when verify found it unwritable itself."""
    accepted: bool = False
    """An operator accepted that PostgreSQL lacks the row (``syncd rejects --accept``)."""
    reject_id: int | None = None
    """Its id in ``syncd.rejects``."""

    def describe(self) -> str:
        where = "" if self.recorded else " (not in syncd.rejects)"
        ident = f"#{self.reject_id} " if self.reject_id is not None else ""
        return f"{ident}key {json.dumps(self.key, default=str, ensure_ascii=False)}: {self.error}{where}"


@dataclass(frozen=True, slots=True)
class RoundedValue:
    """A value stored rounded because the operator chose it (``"... rounded"`` in column_types)."""

    key: list[Any]
    column: str
    sqlite: str
    postgres: str

    def describe(self) -> str:
        return (f"key {json.dumps(self.key, default=str, ensure_ascii=False)}: {self.column} "
                f"{self.sqlite} in SQLite, {self.postgres} in PostgreSQL")


@dataclass(slots=True)
class CheckResult:
    kind: str
    """``table``, ``collection`` or ``search``."""
    name: str
    status: str = MATCH
    key_columns: list[str] = field(default_factory=list)
    """What the keys of ``differences`` / ``rejected`` / ``unsettled`` are made of."""
    source_rows: int | None = None
    target_rows: int | None = None
    differences: list[Difference] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unsettled: list[list[Any]] = field(default_factory=list)
    """Keys still changing at the settle deadline."""
    rounded: list[RoundedValue] = field(default_factory=list)
    """Values stored rounded as the operator chose: shown, not differences."""
    counts_differ: bool = False
    """Row counts differ (and the difference is not a change in flight)."""
    truncated: bool = False
    """The scan stopped at the suspect limit: the rest of the table was not compared."""
    problems: list[str] = field(default_factory=list)
    """Persistent problems of the check as a whole (a dimension mismatch, recall below the threshold)."""
    warnings: list[str] = field(default_factory=list)
    """What the rows' verdict does not cover: indexes and keys of the SQLite schema that PostgreSQL
    lacks (:mod:`syncd.verify.schema`). Shown; the status and exit code stay the rows'."""
    search: dict[str, Any] | None = None
    """Search parity numbers (kind ``search``): recalls, latencies, the settings used."""
    detail: str = ""
    seconds: float = 0.0
    chunks: int = 0
    """Key ranges compared by digest (tables; 0 when every row was compared row by row)."""
    chunks_by_row: int = 0
    """Of those, the ranges compared row by row (digests differed, or a value needs Python)."""

    @property
    def ok(self) -> bool:
        return self.status == MATCH

    def decide(self) -> None:
        """Set the status from what was found (an error or skip is kept)."""
        if self.status in (ERROR, SKIPPED):
            return
        if self.differences or self.counts_differ or self.problems or \
                any(not r.recorded for r in self.rejected):
            self.status = DIFFER
        elif self.unsettled or self.truncated:
            self.status = UNSETTLED
        elif any(not r.accepted for r in self.rejected):
            self.status = QUARANTINED
        else:
            self.status = MATCH

    @property
    def quarantined(self) -> list[Rejected]:
        return [r for r in self.rejected if r.recorded and not r.accepted]

    @property
    def accepted(self) -> list[Rejected]:
        return [r for r in self.rejected if r.accepted]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass(slots=True)
class Report:
    mode: str
    """``full`` (counts and checksums) or ``counts``."""
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    required: frozenset[str] = frozenset()
    """Names of skipped checks the operator asked for by name: those count as failures (a skipped
    search-parity check does not: the table has no HNSW index to compare)."""

    def _passes(self, c: CheckResult) -> bool:
        return c.ok or (c.status == SKIPPED and (c.kind == "search" or c.name not in self.required))

    @property
    def ok(self) -> bool:
        return all(self._passes(c) for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 all match; 5 nothing but quarantined rows (``syncd rejects``); 1 anything else."""
        failing = [c for c in self.checks if not self._passes(c)]
        if not failing:
            return 0
        return EXIT_QUARANTINED if all(c.status == QUARANTINED for c in failing) else 1

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "mode": self.mode,
                "seconds": round(self.seconds, 3), "checks": [c.to_json() for c in self.checks]}


_MARK = {MATCH: "✓", DIFFER: "✗", UNSETTLED: "✗", ERROR: "✗", SKIPPED: "–", QUARANTINED: "✗"}
SHOWN = 20
"""Rows listed per check in the human output (all of them are in ``--json``)."""


def _summary(c: CheckResult) -> str:
    if c.status == ERROR:
        return f"error: {c.detail}"
    if c.status == SKIPPED:
        return c.detail
    if c.kind == "search":
        return "; ".join([*c.problems, c.detail] if c.detail else c.problems)
    unit, source = ("items", "Chroma") if c.kind == "collection" else ("rows", "SQLite")
    same = c.source_rows == c.target_rows or c.target_rows is None or c.status == MATCH
    counts = (f"{c.source_rows or 0:,} {unit}" if same
              else f"{c.source_rows or 0:,} {unit} in {source}, {c.target_rows:,} in PostgreSQL")
    parts = [counts, *c.problems]
    if c.differences:
        parts.append(f"{len(c.differences):,}{'+' if c.truncated else ''} differ")
    if c.quarantined:
        parts.append(f"{len(c.quarantined):,} quarantined in syncd.rejects")
    if c.accepted:
        parts.append(f"{len(c.accepted):,} accepted rejects (not counted)")
    unrecorded = len(c.rejected) - len(c.quarantined) - len(c.accepted)
    if unrecorded:
        parts.append(f"{unrecorded:,} unwritable, not in syncd.rejects")
    if c.unsettled:
        parts.append(f"{len(c.unsettled):,} still changing, not verified")
    if c.warnings:
        parts.append(f"{len(c.warnings):,} schema warning{'s' if len(c.warnings) != 1 else ''}")
    if c.detail:
        parts.append(c.detail)
    return ", ".join(parts)


def render(report: Report) -> list[str]:
    """The human summary: one line per check, then what differs and what is quarantined."""
    width = max((len(c.name) for c in report.checks), default=0)
    kinds = max((len(c.kind) for c in report.checks), default=0)
    lines = [f"{_MARK[c.status]} {c.kind:<{kinds}} {c.name:<{width}}  {_summary(c)}" for c in report.checks]
    for c in report.checks:
        sections: Sequence[tuple[str, Sequence[str]]] = (
            ("differences", [d.describe() for d in c.differences]),
            ("unwritable rows not in syncd.rejects", [r.describe() for r in c.rejected if not r.recorded]),
            ("quarantined in syncd.rejects (PostgreSQL lacks these rows or holds an older version)",
             [r.describe() for r in c.quarantined]),
            ("accepted rejects (PostgreSQL lacks these rows by decision)",
             [r.describe() for r in c.accepted]),
            ("still changing", [json.dumps(k, default=str) for k in c.unsettled]),
            ("rounded as chosen in [target.column_types] (not differences)",
             [r.describe() for r in c.rounded]),
            ("schema warnings (the rows are compared all the same)", c.warnings),
        )
        for title, items in sections:
            if not items:
                continue
            keyed = f" (key: {', '.join(c.key_columns)})" if c.key_columns and items is not c.warnings else ""
            lines.append(f"{c.name}: {title}{keyed}:")
            lines += [f"  {item}" for item in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"  ... {len(items) - SHOWN:,} more (--json lists them all)")
    statuses = {c.status for c in report.checks}
    quarantined = sum(len(c.quarantined) for c in report.checks)
    accepted = sum(len(c.accepted) for c in report.checks)
    if report.ok:
        verdict = "everything matches" + (f"; {accepted:,} accepted rejects not counted" if accepted else "")
    elif report.exit_code == EXIT_QUARANTINED:
        verdict = (f"{quarantined:,} row{'s' if quarantined != 1 else ''} quarantined in syncd.rejects — "
                   "PostgreSQL lacks them (or holds an older version); everything else matches. Fix them "
                   "in SQLite (the next change re-applies the row) or accept them: "
                   "syncd rejects --accept ID (exit 5)")
    elif DIFFER in statuses:
        verdict = "differences found" + (f" (and {quarantined:,} rows quarantined in syncd.rejects)"
                                         if quarantined else "")
    elif ERROR in statuses:
        verdict = "not verified: a check could not run"
    elif UNSETTLED in statuses:
        verdict = "not verified: rows kept changing; run again"
    else:
        verdict = "not verified: nothing that was asked for could be checked"
    missing = sum(len(c.warnings) for c in report.checks)
    if missing:
        verdict += (f"; the schema is not complete: {missing:,} index{'es' if missing != 1 else ''} or "
                    f"key{'s' if missing != 1 else ''} missing in PostgreSQL (schema warnings above)")
    lines.append(f"{verdict} ({report.mode} verify, {report.seconds:.1f} s)")
    return lines


__all__ = ["DIFFER", "ERROR", "EXIT_QUARANTINED", "MATCH", "QUARANTINED", "SKIPPED", "UNSETTLED",
           "CheckResult", "Difference", "Rejected", "Report", "RoundedValue", "render"]
