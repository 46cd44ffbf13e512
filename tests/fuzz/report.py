"""Grouping divergences by class across cases, as text and as a JSON summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz.case import CaseResult
from tests.fuzz.check import Divergence
from tests.fuzz.classify import KNOWN
from tests.fuzz.repro import render


@dataclass
class Group:
    tag: str
    count: int = 0
    seeds: list[int] = field(default_factory=list)
    example: Divergence | None = None
    example_seed: int = 0
    reproduction: str = ""
    shrunk: str = ""


@dataclass
class Summary:
    first_seed: int = 0
    cases: int = 0
    failing_cases: int = 0
    seconds: float = 0.0
    groups: dict[str, Group] = field(default_factory=dict)
    harness_errors: list[int] = field(default_factory=list)
    notices: Counter[str] = field(default_factory=Counter)
    notice_examples: dict[str, str] = field(default_factory=dict)

    def add(self, r: CaseResult) -> None:
        self.cases += 1
        self.seconds += r.seconds
        self.failing_cases += bool(r.divergences)
        for d in r.divergences:
            g = self.groups.setdefault(d.tag, Group(d.tag))
            g.count += 1
            if r.seed not in g.seeds:
                g.seeds.append(r.seed)
            if g.example is None:
                g.example, g.example_seed = d, r.seed
                g.reproduction = render(r.schema, r.journal, r.settings, r.steps)
        for d in r.notices:
            key = f"{d.kind}: {d.detail[:90]}" if d.kind == "needless-reject" else d.tag
            self.notices[key] += 1
            self.notice_examples.setdefault(key, f"seed {r.seed}: {d.line()[:300]}")

    def text(self, reproductions: bool = True) -> str:
        lines = [f"{self.cases} cases, {self.failing_cases} with divergences, "
                 f"{sum(g.count for g in self.groups.values())} divergences in {len(self.groups)} classes "
                 f"({self.seconds:.0f} s)"]
        if self.harness_errors:
            lines.append(f"the harness itself failed on seeds {self.harness_errors}")
        for g in sorted(self.groups.values(), key=lambda g: (not g.tag.startswith("known:"), -g.count)):
            known = f" — {KNOWN[g.tag]}" if g.tag in KNOWN else ""
            lines.append(f"\n== {g.tag}{known}: {g.count} in {len(g.seeds)} cases "
                         f"(seeds {', '.join(map(str, g.seeds[:8]))}{'…' if len(g.seeds) > 8 else ''})")
            if g.example:
                lines.append(f"   seed {g.example_seed}: {g.example.line()[:600]}")
            if reproductions and (g.shrunk or g.reproduction):
                lines.append("   reproduction" + (" (shrunk)" if g.shrunk else "") + ":")
                lines += ["     " + ln for ln in (g.shrunk or g.reproduction).splitlines()]
        if self.notices:
            lines.append("\nnotices (not divergences):")
            for key, n in self.notices.most_common(20):
                lines.append(f"  {n:5d}  {key}\n         e.g. {self.notice_examples[key]}")
        return "\n".join(lines)

    def json(self) -> dict[str, Any]:
        return {
            "first_seed": self.first_seed, "cases": self.cases, "failing_cases": self.failing_cases,
            "seconds": round(self.seconds, 1),
            "classes": [{
                "tag": g.tag, "known": KNOWN.get(g.tag), "divergences": g.count, "cases": len(g.seeds),
                "seeds": g.seeds, "example": g.example.line() if g.example else None,
                "example_seed": g.example_seed, "reproduction": g.shrunk or g.reproduction,
                "shrunk": bool(g.shrunk),
            } for g in sorted(self.groups.values(), key=lambda g: -g.count)],
            "notices": dict(self.notices),
        }
