"""Nothing is imported while the app is paused.

Between the fence and the commit of a cutover or rollback the app's writes wait; a module
imported there for the first time (the pgvector → Chroma stream's module took 30–100 ms)
lengthens that wait for nothing. The functions that run in that window import nothing: what
they need is imported with their module, before the preflight.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from syncd.cutover import cutover, plan, rollback

IN_THE_PAUSE: list[Callable[..., Any]] = [
    cutover._do_cutover, cutover._forward_pending, cutover._undo_cutover,
    rollback._do_rollback, rollback._reverse_pending,
    plan.wait_until, plan.run_reload, plan.Switch.flip, plan.Switch.record,
]


@pytest.mark.parametrize("func", IN_THE_PAUSE, ids=lambda f: f.__qualname__)
def test_no_import_inside_the_pause(func: Callable[..., Any]) -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    imports = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not imports, f"{func.__qualname__} imports during the write pause: {imports}"
