"""How a converter refuses a value (the row goes to the reject table with this reason), shared by
:mod:`syncd.pg.converters` and :mod:`syncd.pg.time_converters`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from syncd.errors import RowError

Converter = Callable[[Any], Any]

ROUNDED = " rounded"
"""Suffix of a ``[target.column_types]`` value that lets syncd round values to the type."""


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(value: Any, pg_type: str, why: str = "") -> RowError:
    return RowError(f"{describe(value)} does not fit {pg_type}{': ' + why if why else ''}")


def round_hint(value: Any, pg_type: str, keep: str) -> RowError:
    return RowError(f"{describe(value)} does not fit {pg_type} without rounding; map the column to {keep} "
                    f"in [target.column_types] to keep it, or to \"{pg_type}{ROUNDED}\" to round it")
