"""``syncd verify --json`` held to the oracle: a ✓ where the oracle finds a difference is a
*lying ✓*; a difference the oracle does not see is a *false alarm*."""

from __future__ import annotations

import json
from typing import Any

from tests.fuzz.check import Divergence, TableResult, key_matches, show_key
from tests.fuzz.stores import ROWID


def parse_verify(stdout: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _is_extra_row(jkey: Any, res: TableResult, pk: tuple[str, ...]) -> bool:
    if not isinstance(jkey, list):
        jkey = [jkey]
    cols = pk or (ROWID,)
    return any(len(jkey) == len(cols)
               and all(_same_text(j, row.get(c)) for j, c in zip(jkey, cols, strict=True))
               for row in res.extra_rows)


def _same_text(j: Any, text: str | None) -> bool:
    if j is None or text is None:
        return j is None and text is None
    return str(j) == text or (isinstance(j, bool) and str(j).lower() == text)


def cross_check(doc: dict[str, Any] | None, raw: str, results: dict[str, TableResult],
                pks: dict[str, tuple[str, ...]]) -> list[Divergence]:
    """Divergences between verify's answer and the oracle's, per table."""
    if doc is None:
        return [Divergence("verify-error", "-", "-", detail="no JSON from syncd verify: " + raw[-300:])]
    out: list[Divergence] = []
    checks = {c.get("name"): c for c in doc.get("checks", []) if c.get("kind") == "table"}
    for table, res in results.items():
        bad = [d for d in res.divergences if not d.notice]
        check = checks.get(table)
        if check is None:
            if res.source_keys:
                out.append(Divergence("verify-error", table, "-", detail="verify did not check the table"))
            continue
        if bad and check.get("status") == "match":
            for d in bad:
                out.append(Divergence("verify-silent", table, d.key, d.column, d.source, d.target,
                                      f"verify says ✓; the oracle finds {d.kind}", d.note, d.pg_type,
                                      tag=d.tag))
        for diff in check.get("differences", []):
            jkey = diff.get("key")
            src = next((k for k in res.source_keys if key_matches(jkey, k)), None)
            if src is not None and show_key(src) in res.bad_keys:
                continue
            if src is None and _is_extra_row(jkey, res, pks.get(table, ())):
                continue
            out.append(Divergence("verify-false-alarm", table, json.dumps(jkey, ensure_ascii=False),
                                  ",".join(diff.get("columns") or []) or None,
                                  detail=f"verify: {diff.get('kind')} {diff.get('detail', '')}".strip()))
        for problem in check.get("problems", []):
            out.append(Divergence("verify-problem", table, "-", detail=str(problem)[:300]))
    return out
