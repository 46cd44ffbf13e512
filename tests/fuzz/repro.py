"""A case as a runnable reproduction: a Python script that builds the SQLite file step by
step, with the ``syncd`` commands where the case ran them."""

from __future__ import annotations

from tests.fuzz.model import Schema, Step

_EVENT = {
    "init": "syncd --config syncd.toml init",
    "sync": "syncd --config syncd.toml run --until-caught-up",
    "start": "syncd --config syncd.toml run &   # in the background",
    "kill": "kill -KILL <pid of the background syncd run>",
}


def render_steps(steps: list[Step], foreign_keys: bool, limit: int = 400) -> list[str]:
    lines: list[str] = []
    for step in steps[:limit]:
        if step.is_event or step.label == "init":
            lines.append(f"sh({_EVENT[step.label]!r})")
            continue
        lines.append(f"# {step.label}")
        if step.statements == (("VACUUM", ()),):
            lines.append('db.execute("VACUUM")')
            continue
        if step.fk_off:
            lines.append('db.execute("PRAGMA foreign_keys = OFF")')
        single = len(step.statements) == 1 and step.commit
        if not single:
            lines.append('db.execute("BEGIN")')
        for sql, params in step.statements:
            lines.append(f"db.execute({sql!r}, {params!r})" if params else f"db.execute({sql!r})")
        if not single:
            lines.append(f'db.execute("{"COMMIT" if step.commit else "ROLLBACK"}")')
        if step.fk_off:
            lines.append(f'db.execute("PRAGMA foreign_keys = {"ON" if foreign_keys else "OFF"}")')
    if len(steps) > limit:
        lines.append(f"# … {len(steps) - limit} more steps")
    return lines


def render(schema: Schema, journal: str, settings: dict[str, int], steps: list[Step]) -> str:
    """The reproduction script (config: ``[stream] chunk_rows`` / ``batch_size`` as given)."""
    head = [
        "import sqlite3, subprocess",
        "def sh(cmd): print('$', cmd); subprocess.run(cmd, shell=True)",
        f"# syncd.toml [stream]: chunk_rows = {settings['chunk_rows']}, "
        f"batch_size = {settings['batch_size']}",
        "db = sqlite3.connect('app.sqlite', isolation_level=None)",
        f"db.execute('PRAGMA journal_mode = {journal}')",
    ]
    head += [f"db.execute({ddl!r})" for ddl in schema.ddl()]
    head.append(f"db.execute('PRAGMA foreign_keys = {'ON' if schema.foreign_keys_on else 'OFF'}')")
    return "\n".join(head + render_steps(steps, schema.foreign_keys_on))
