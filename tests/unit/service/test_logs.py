"""Log set-up: JSON lines or console, one chain for structlog and stdlib, always redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from syncd.errors import ConfigError
from syncd.service import logs

SECRET = "hunter2-s3cret"
DSN = f"postgresql://syncd:{SECRET}@db.internal:5432/app"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_level_time_logger_and_fields() -> None:
    out = io.StringIO()
    logs.configure("info", json=True, stream=out)
    structlog.get_logger("syncd.stream").info("batch applied", stream="sqlite", rows=120, lag=0.4)
    [line] = lines(out)
    assert line["event"] == "batch applied"
    assert line["level"] == "info"
    assert line["logger"] == "syncd.stream"
    assert line["timestamp"].endswith("Z")
    assert (line["stream"], line["rows"], line["lag"]) == ("sqlite", 120, 0.4)


def test_a_dsn_never_reaches_a_log_line() -> None:
    out = io.StringIO()
    logs.configure("debug", json=True, stream=out)
    log = structlog.get_logger("syncd.pg.connect")
    log.info(f"connecting to {DSN}", dsn=DSN, nested={"urls": [DSN], "path": Path("/x")},
             error=ConnectionError(f"refused by {DSN}"))
    try:
        raise RuntimeError(f"lost {DSN}")
    except RuntimeError:
        log.exception("stream failed", hint=f"password={SECRET}")
    logging.getLogger("asyncpg.pool").warning("reconnecting to %s", DSN)
    text = out.getvalue()
    assert SECRET not in text
    first, second, third = lines(out)
    assert first["event"] == "connecting to postgresql://syncd:***@db.internal:5432/app"
    assert first["nested"] == {"urls": ["postgresql://syncd:***@db.internal:5432/app"],
                               "path": "/x"}
    assert first["error"] == "refused by postgresql://syncd:***@db.internal:5432/app"
    assert "RuntimeError: lost postgresql://syncd:***@" in second["exception"]
    assert second["hint"] == "password=***"
    assert third["event"] == "reconnecting to postgresql://syncd:***@db.internal:5432/app"
    assert third["logger"] == "asyncpg.pool"


def test_known_secrets_are_blanked_even_without_a_url() -> None:
    out = io.StringIO()
    logs.configure(json=True, stream=out, secrets=[SECRET, "ab"])
    structlog.get_logger().warning(f"auth failed with {SECRET}", word="abc")
    [line] = lines(out)
    assert line["event"] == "auth failed with ***"
    assert line["word"] == "abc", "secrets shorter than 4 characters are not blanked"


def test_console_renderer_on_a_terminal_and_still_redacted() -> None:
    out = Terminal()
    logs.configure("info", stream=out)
    structlog.get_logger().info("started", dsn=DSN)
    text = out.getvalue()
    assert "started" in text
    assert SECRET not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    logs.configure("info", stream=out)
    structlog.get_logger().info("started")
    assert lines(out)[0]["event"] == "started"


def test_level_filters_structlog_and_stdlib() -> None:
    out = io.StringIO()
    logs.configure("warning", json=True, stream=out)
    structlog.get_logger().info("hidden")
    logging.getLogger("chromadb").info("hidden too")
    structlog.get_logger().warning("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_chatty_libraries_are_quieter_unless_debugging() -> None:
    out = io.StringIO()
    logs.configure("info", json=True, stream=out)
    logging.getLogger("watchfiles.main").info("1 change detected")
    assert out.getvalue() == ""
    logs.configure("debug", json=True, stream=out)
    logging.getLogger("watchfiles.main").info("1 change detected")
    assert lines(out)[0]["event"] == "1 change detected"


def test_configure_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure(json=True, stream=first)
    logs.configure(json=True, stream=second)
    structlog.get_logger().info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_bound_context_is_added() -> None:
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    logs.bind(stream="chroma:docs")
    structlog.get_logger().info("phase changed", phase="streaming")
    assert lines(out)[0]["stream"] == "chroma:docs"


def test_bad_level_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^log level \(--log-level, SYNCD_LOG_LEVEL\): expected "
                                          r"one of debug, info, warning, error, critical, got 'loud'"):
        logs.configure("loud")


def test_redactor_processor_alone() -> None:
    redactor = logs.Redactor(secrets=["tok3n-value"])
    with capture_logs(processors=[redactor]) as captured:
        structlog.get_logger().info("x", dsn=DSN, items=("tok3n-value", 3), flag=True, n=None)
    assert captured == [{"event": "x", "dsn": "postgresql://syncd:***@db.internal:5432/app",
                         "items": ["***", 3], "flag": True, "n": None, "log_level": "info"}]
