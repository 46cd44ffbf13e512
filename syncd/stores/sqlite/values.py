"""Values as syncd reads them from SQLite: the changelog's JSON images decoded (a REAL and a
BLOB are tagged by the triggers, :mod:`syncd.stores.sqlite.capture`), and text that is not
UTF-8 read, compared and bound as the bytes it is (:class:`~syncd.model.InvalidText`)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from syncd.model import InvalidText


def decode_value(v: Any) -> Any:
    """Undo the trigger's tagging of REAL and BLOB values; text that is not UTF-8 (read with
    ``surrogateescape``, see :func:`_loads`) becomes :class:`~syncd.model.InvalidText` again."""
    if isinstance(v, str) and _ESCAPED.search(v):
        return InvalidText(v.encode("utf-8", "surrogateescape"))
    return _untag(v)


def _untag(v: Any) -> Any:
    """Undo the trigger's tagging of REAL and BLOB values."""
    if isinstance(v, list) and len(v) == 2 and v[0] in ("r", "b") and isinstance(v[1], str):
        return float(v[1]) if v[0] == "r" else bytes.fromhex(v[1])
    return v


_ESCAPED = re.compile("[\udc80-\udcff]")
"""A byte that is not UTF-8, as ``surrogateescape`` decodes it (valid UTF-8 has no surrogates)."""


def _loads(text: InvalidText) -> Any:
    """Parse a logged image read as :class:`InvalidText` (``json_object`` copies bytes that are not
    UTF-8 as they are): each such byte decodes to a lone surrogate, which :func:`decode_value`
    turns back into the exact bytes."""
    return json.loads(text.raw.decode("utf-8", "surrogateescape"))


_TAG = '["'
"""In an image's text, the start of a tagged REAL or BLOB: a value's own ``["`` is escaped
(``[\\"``) inside its JSON string, so an image without it holds no tagged value."""


def decode_row(text: str | InvalidText) -> dict[str, Any]:
    """A logged row image. Only an image read as :class:`InvalidText` can hold text that is not
    UTF-8: one read as ``str`` is valid UTF-8, and ``json_object`` escapes no character into a
    surrogate, so its values are only untagged (parsed by orjson, which reads such text as the
    standard library does and three times as fast)."""
    if isinstance(text, InvalidText):
        return {k: decode_value(v) for k, v in _loads(text).items()}
    image: dict[str, Any] = orjson.loads(text)
    if _TAG not in text:
        return image
    return {k: _untag(v) for k, v in image.items()}


def decode_key(text: str | InvalidText) -> tuple[Any, ...]:
    if isinstance(text, InvalidText):
        return tuple(decode_value(v) for v in _loads(text))
    key = orjson.loads(text)
    if _TAG not in text[1:]:  # the key's own array opens with "[" and may hold a text first
        return tuple(key)
    return tuple(_untag(v) for v in key)


def param(value: Any) -> tuple[str, Any]:
    """A SQL placeholder and its parameter for a value read from SQLite: text that is not
    UTF-8 is bound as its bytes and cast back to TEXT (bound as a blob it would compare
    unlike the text it is)."""
    if isinstance(value, InvalidText):
        return "CAST(? AS TEXT)", value.raw
    return "?", value


def fetch_all(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """``conn.execute(sql, params).fetchall()``, text that is not UTF-8 read as
    :class:`InvalidText`. The C decoder (the default ``text_factory``) reads twice as fast as
    any Python one but raises on such text; then the same query runs again with
    :meth:`InvalidText.read` (inside a read transaction, it sees the same rows)."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "Could not decode to UTF-8" not in str(exc):
            raise
    factory, conn.text_factory = conn.text_factory, InvalidText.read
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.text_factory = factory
