"""Named kill points for crash tests (ghostferry style): the one mechanism.

``SYNCD_KILL_AT=chunk:3`` makes ``syncd run`` SIGKILL itself right after the
third snapshot chunk committed; ``batch:5`` after the fifth streamed batch
(counted points, read when ``run`` starts, never at import; unset: no hooks at
all). ``SYNCD_KILL_AT=cutover:fence`` (or ``rollback:<step>``) makes a switch
die as it reaches that step (named points, :func:`at`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Hook = Callable[..., Awaitable[None]]

COUNTED = ("chunk", "batch")
"""Points of ``syncd run`` that die after the N-th time they are reached."""
STEPS = ("cutover", "rollback")
"""Operations whose steps are named points (``cutover:fence``)."""


def hooks(env: Mapping[str, str]) -> dict[str, Hook]:
    spec = env.get("SYNCD_KILL_AT", "")
    if not spec:
        return {}
    point, _, count = spec.partition(":")
    if point in STEPS:
        return {}  # a named point of a switch, not of ``run``
    if point not in COUNTED or not count.isdigit():
        raise ValueError(f"SYNCD_KILL_AT: expected chunk:N, batch:N, cutover:STEP or rollback:STEP, "
                         f"got {spec!r}")
    remaining = int(count)

    async def hook(*_args: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return {point: hook}


def from_environment() -> dict[str, Hook]:
    return hooks(os.environ)


def at(name: str) -> None:
    """A named point (``cutover:fence``): die here if ``SYNCD_KILL_AT`` names it."""
    if os.environ.get("SYNCD_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
