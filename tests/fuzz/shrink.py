"""Shrinking a failing case: replay it without timing (a SIGKILL becomes a catch-up) and drop
steps while the divergence class persists (a simple ddmin over the recorded steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.case import CaseResult, Options, run_case
from tests.fuzz.model import Step


@dataclass
class Shrunk:
    tag: str
    steps: list[Step]
    result: CaseResult | None  # the last failing replay; None when the replay did not fail
    runs: int

    @property
    def reproducible(self) -> bool:
        return self.result is not None


def same_class(tag: str, replayed: set[str]) -> bool:
    """Whether a replay shows the divergence class *tag*. A replay kills no daemon (a kill
    becomes a catch-up), so its row classes never carry ``+kill``: a class found with kills
    reproduces as the same class without that suffix."""
    return tag in replayed or (tag.endswith("+kill") and tag.removesuffix("+kill") in replayed)


async def _fails(result: CaseResult, steps: list[Step], tag: str, admin_dsn: str,
                 root: Path) -> CaseResult | None:
    """Replay *steps* alone; a case of a batch keeps its table prefix, journal and settings."""
    r = await run_case(result.seed, admin_dsn, root, Options(
        kills=False, replay=tuple(steps), prefix=result.prefix, journal=result.journal,
        settings=result.settings))
    return r if same_class(tag, r.tags) else None


async def shrink(result: CaseResult, tag: str, admin_dsn: str, root: Path, budget: int = 30) -> Shrunk:
    steps = [s for s in result.steps if s.label != "start"]
    last = await _fails(result, steps, tag, admin_dsn, root)
    runs = 1
    if last is None:
        return Shrunk(tag, result.steps, None, runs)
    n = 2
    while runs < budget and len(steps) > 1:
        size = -(-len(steps) // n)
        for i in range(0, len(steps), size):
            trial = [s for s in steps[:i] + steps[i + size:]]
            if not any(s.label == "init" for s in trial):
                trial = [s for s in steps if s.label == "init"] + trial
            if len(trial) == len(steps):
                continue
            runs += 1
            r = await _fails(result, trial, tag, admin_dsn, root)
            if r is not None:
                steps, last, n = trial, r, max(n - 1, 2)
                break
            if runs >= budget:
                break
        else:
            if n >= len(steps):
                break
            n = min(len(steps), n * 2)
    return Shrunk(tag, steps, last, runs)
