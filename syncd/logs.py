"""Logging setup (placeholder; replaced by the structlog configuration)."""

from __future__ import annotations

import logging

import structlog


def configure(level: str = "info", json: bool | None = None) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
        getattr(logging, level.upper(), logging.INFO)))
