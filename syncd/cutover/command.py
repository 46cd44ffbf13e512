"""`syncd cutover` / `syncd rollback` as commands: run one, print its steps (or JSON), give the exit code."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from typing import TextIO

from syncd.config import Config
from syncd.cutover.cutover import cutover
from syncd.cutover.plan import CutoverRefused, Outcome
from syncd.cutover.rollback import rollback
from syncd.errors import SyncdError
from syncd.pg.connect import resolve_dsn


async def command(operation: str, cfg: Config, *, dry_run: bool, resume: bool, as_json: bool) -> int:
    """`syncd cutover` / `syncd rollback`: run, print the steps (or JSON), return the exit code."""
    run_op = cutover if operation == "cutover" else rollback
    dsn = await asyncio.to_thread(resolve_dsn, cfg.target, cfg.state_dir)
    out: TextIO = io.StringIO() if as_json else sys.stdout
    outcome = Outcome(operation, dry_run=dry_run)
    try:
        outcome = await run_op(cfg, dsn, out, dry_run=dry_run, resume=resume)
    except CutoverRefused as exc:
        outcome.message = str(exc)
        if not as_json:
            for problem in exc.problems:
                print(f"  ✗ {problem}")
            more = len(exc.problems) - 1
            first = exc.problems[0] if exc.problems else str(exc)
            tail = f" (and {more} more problem{'s' if more > 1 else ''}, listed above)" if more > 0 else ""
            print(f"syncd: {operation} refused, nothing was changed: {first}{tail}", file=sys.stderr)
            return 1
        outcome.problems = exc.problems
    except SyncdError as exc:
        outcome.message = str(exc)
        if not as_json:
            print(f"syncd: {operation} failed: {exc}", file=sys.stderr)
            return 1
    if as_json:
        print(json.dumps(outcome.to_json(), indent=2))
    return 0 if outcome.ok else 1
