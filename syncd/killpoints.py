"""Named kill points for crash tests (ghostferry style): the one mechanism.

``SYNCD_KILL_AT=chunk:3`` makes ``syncd run`` SIGKILL itself right after the
third snapshot chunk committed; ``batch:5`` after the fifth streamed batch
(counted points, read when ``run`` starts, never at import; unset: no hooks at
all). ``export:N`` / ``import:N`` make `syncd export` / `syncd import` die after
the N-th chunk it wrote (:func:`counter`). ``SYNCD_KILL_AT=cutover:fence`` (or
``rollback:<step>``) makes a switch die as it reaches that step (named points, :func:`at`);
``cutover:flip-renamed:1`` after the first app config file of several was renamed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Hook = Callable[..., Awaitable[None]]

COUNTED = ("chunk", "batch", "export", "import")
"""Points that die after the N-th time they are reached (``chunk`` / ``batch`` of ``syncd run``,
``export`` / ``import`` after a bundle chunk)."""
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
        raise ValueError(f"SYNCD_KILL_AT: expected chunk:N, batch:N, export:N, import:N, cutover:STEP or "
                         f"rollback:STEP, got {spec!r}")
    remaining = int(count)

    async def hook(*_args: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return {point: hook}


def counter(point: str, env: Mapping[str, str] | None = None) -> Callable[[], None]:
    """A synchronous counted point: call it each time *point* is reached (``export:N``)."""
    spec = (os.environ if env is None else env).get("SYNCD_KILL_AT", "")
    name, _, count = spec.partition(":")
    if name != point or not count.isdigit():
        return lambda: None
    remaining = int(count)

    def reached() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return reached


def from_environment() -> dict[str, Hook]:
    return hooks(os.environ)


def at(name: str) -> None:
    """A named point (``cutover:fence``): die here if ``SYNCD_KILL_AT`` names it."""
    if os.environ.get("SYNCD_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
