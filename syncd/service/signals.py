"""Signals while a command runs: SIGINT, SIGTERM and SIGHUP unwind the command as
:class:`Interrupted` (the CLI prints one line and exits 128 + N); one that arrives while Python
still imports ends at once with one line. Imports nothing heavy: installed before anything else.
"""

from __future__ import annotations

import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) asked syncd to stop; unwinds like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_started = False
"""False until :func:`started`: a signal before that (while Python imports) ends at once."""


def _interrupt(signum: int, frame: object) -> None:
    if not _started:
        import os

        name = signal.Signals(signum).name
        os.write(2, f"syncd: interrupted by {name} while starting; nothing was done\n".encode())
        os._exit(128 + signum)
    raise Interrupted(signum)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def install() -> None:
    """Make a signal an :class:`Interrupted` (or, before :func:`started`, one line and exit)."""
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)


def started() -> None:
    """Python has imported what a command needs: from now on a signal unwinds the command."""
    global _started
    _started = True


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with SIGINT / SIGTERM / SIGHUP cancelling the command so that it cleans
    up, then raising :class:`Interrupted`."""
    import asyncio

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        got: list[int] = []

        def on_signal(signum: int) -> None:
            got.append(signum)
            if task is not None and len(got) == 1:
                task.cancel()

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # A connection attempt cancelled by the signal leaves its driver's future failed
            # and unread ("Future exception was never retrieved"); after a signal that is the
            # expected end of it, not a second error line.
            if got and isinstance(context.get("exception"), OSError):
                return
            loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_error)
        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            result = await coro
        except asyncio.CancelledError:
            if got:
                raise Interrupted(got[0]) from None
            raise
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, _interrupt)
        if got:
            raise Interrupted(got[0])
        return result

    return asyncio.run(main())
