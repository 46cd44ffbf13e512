"""What the app-config editors (:mod:`syncd.cutover.appconfig` and its per-format modules) share:
the error they raise and the splitting of text and dotted keys."""

from __future__ import annotations

import re

from syncd.errors import ConfigError

LINES = re.compile(r"[^\n]*\n|[^\n]+")


class AppConfigError(ConfigError):
    """The app's config file cannot be read, parsed or replaced; the message names the file."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def split_path(key: str, path: str) -> list[str]:
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise AppConfigError(f"cutover key {key!r} for {path}: expected a dotted path such as "
                             "storage.vector_store (no empty parts)")
    return parts
