"""Named kill points for crash tests (ghostferry style).

``SYNCD_KILL_AT=chunk:3`` makes the process SIGKILL itself right after the
third snapshot chunk committed; ``batch:5`` after the fifth streamed batch.
Read when ``syncd run`` starts, never at import. Unset: no hooks at all.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Hook = Callable[..., Awaitable[None]]


def hooks(env: Mapping[str, str]) -> dict[str, Hook]:
    spec = env.get("SYNCD_KILL_AT", "")
    if not spec:
        return {}
    point, _, count = spec.partition(":")
    if point not in ("chunk", "batch") or not count.isdigit():
        raise ValueError(f"SYNCD_KILL_AT: expected chunk:N or batch:N, got {spec!r}")
    remaining = int(count)

    async def hook(*_args: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return {point: hook}


def from_environment() -> dict[str, Hook]:
    return hooks(os.environ)
