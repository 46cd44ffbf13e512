"""syncd's exit codes: what a script can tell apart (README.md, "Exit codes").

Signals end a one-shot command with ``128 + N`` (130 for SIGINT / Ctrl-C, 143 for SIGTERM, 129
for SIGHUP) after one line saying what was interrupted; ``run`` ends as a stopped daemon does.
"""

from __future__ import annotations

import signal

OK = 0
FAILED = 1
"""A store, a stream or a step failed; the line says what and where."""
USAGE = 2
"""The config or the command line is wrong; the line names the key or the option. Restarting
cannot fix it (systemd: ``RestartPreventExitStatus=2``)."""
INTERRUPTED = 3
"""``run --until-caught-up``: a signal stopped it before it caught up."""
TIMED_OUT = 4
"""``run --until-caught-up --timeout S``: not caught up within S seconds."""
QUARANTINED = 5
"""``verify``: nothing differs except rows quarantined in ``syncd.rejects`` (not accepted)."""


def for_signal(signum: int, command: str | None = None, *, until_caught_up: bool = False) -> int:
    """The exit code of a command a signal stopped: ``128 + N`` (130 for Ctrl-C); ``run`` exits
    as when the daemon stops on a signal: 0, or :data:`INTERRUPTED` with ``--until-caught-up``."""
    if command == "run":
        return INTERRUPTED if until_caught_up else OK
    return 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


__all__ = ["FAILED", "INTERRUPTED", "OK", "QUARANTINED", "TIMED_OUT", "USAGE", "for_signal", "signal_name"]
