"""Running a source's sqlite3 work on its one worker thread, with errors translated at the edge."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from syncd.errors import SyncdError

T = TypeVar("T")


async def call_on(executor: ThreadPoolExecutor, translate: Callable[[BaseException], SyncdError],
                  fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on *executor*; a sqlite3 error comes out as ``translate(error)``."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(executor, fn, *args)
    except sqlite3.Error as exc:
        raise translate(exc) from exc
