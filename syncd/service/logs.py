"""Logging: structlog, one JSON object per line unless a person is watching a terminal.

Logs go to stderr, so that ``syncd status --json`` keeps stdout for its output;
systemd's journal and ``docker logs`` collect both. :func:`configure` is called
once by the CLI. structlog events and records of the standard ``logging`` module
(asyncpg, chromadb, watchfiles) go through the same chain and the same handler,
so every line is shaped alike and every line is redacted: :class:`Redactor` runs
each string value -- the event, the fields, a rendered traceback -- through
:func:`syncd.errors.redact`, and can also blank out literal secrets the daemon
knows (the resolved database password).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from syncd.errors import ConfigError, redact

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

_QUIET = {"watchfiles": logging.WARNING, "httpx": logging.WARNING, "httpcore": logging.WARNING,
          "chromadb.telemetry": logging.ERROR}
"""Libraries that are chatty at INFO; raised unless the level is debug."""

_MIN_SECRET = 4
"""Shorter literal secrets are not blanked: they would mangle ordinary words."""


class Redactor:
    """A structlog processor that redacts every string value, recursively."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= _MIN_SECRET},
                                    key=len, reverse=True))

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "***")
        return redact(value)

    def value(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        return {key: self.value(v) for key, v in event_dict.items()}


def parse_level(level: str, key: str = "log level (--log-level, SYNCD_LOG_LEVEL)") -> int:
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ConfigError(f"{key}: expected one of {', '.join(LEVELS)}, got {level!r}") from None


def configure(level: str = "info", json: bool | None = None, *, stream: TextIO | None = None,
              secrets: Iterable[str] = ()) -> None:
    """Send all logs to *stream* (default stderr) at *level*, as JSON lines or for a terminal.

    *json* None picks JSON unless *stream* is a TTY. *secrets* are literal strings
    never to be printed (besides what :func:`redact` already catches). Calling it
    again replaces the previous set-up.
    """
    threshold = parse_level(level)
    out = sys.stderr if stream is None else stream
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (structlog.processors.JSONRenderer() if json
                           else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            # Tracebacks become text before redaction: an exception message may hold a DSN.
            structlog.processors.format_exc_info,
            Redactor(secrets),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("syncd")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "syncd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(logging.NOTSET if threshold <= logging.DEBUG else quiet)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def bind(**fields: Any) -> None:
    """Add *fields* to every event logged from the current task (e.g. ``stream=``)."""
    structlog.contextvars.bind_contextvars(**fields)


__all__ = ["LEVELS", "Redactor", "bind", "configure", "parse_level"]
