"""How a ``[[target.collections]]`` entry maps a Chroma collection onto columns: the parsed
``columns``, the type of a column holding one metadata key, and its converter."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.config import CollectionTarget, Target
from syncd.errors import ConfigError, SchemaError
from syncd.pg.converters import Converter, converter
from syncd.pg.families import family


@dataclass(frozen=True, slots=True)
class MappedColumn:
    """A metadata key kept in a column of its own."""

    name: str
    key: str
    pg_type: str
    not_null: bool
    convert: Converter = field(compare=False)
    constant: str | None = None
    """The one value every item gets in the column (``constants``): no metadata key then."""

    def value(self, metadata: Mapping[str, Any]) -> Any:
        return self.constant if self.constant is not None else metadata.get(self.key)


@dataclass(frozen=True, slots=True)
class Existing:
    """A column of a table that already exists."""

    pg_type: str
    not_null: bool


def pg_name(text: str, what: str) -> str:
    if len(text.encode()) > 63:
        raise SchemaError(f"{what} {text!r} is longer than PostgreSQL's 63-byte identifier limit; map the "
                          "collection to a shorter table name with [[target.collections]] name / table")
    return text


def type_for_kinds(kinds: set[str]) -> str:
    """The column type for a metadata key holding values of these kinds."""
    if kinds == {"array"}:
        return "jsonb"
    if kinds == {"bool"}:
        return "boolean"
    if kinds == {"int"}:
        return "bigint"
    if kinds and kinds <= {"int", "float"}:
        return "double precision"
    return "text"


def _json_converter(pg_type: str) -> Converter:
    inner = converter(pg_type)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        return inner(json.dumps(value, ensure_ascii=False))

    return convert


def column_converter(pg_type: str) -> Converter:
    return _json_converter(pg_type) if family(pg_type) == "json" else converter(pg_type)


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """The parsed ``columns`` of a [[target.collections]] entry: target column -> source."""

    id: str = "id"
    embedding: str = "embedding"
    document: str | None = None
    metadata: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    """(column, metadata key)"""
    constants: tuple[tuple[str, str], ...] = ()
    """(column, value)"""


def parse_columns(entry: CollectionTarget | None, index: int) -> ColumnMapping:
    if entry is None:
        return ColumnMapping(document="document", metadata="metadata")
    found: dict[str, str] = {}
    keys: list[tuple[str, str]] = []
    for column, source in entry.columns.items():
        where = f"target.collections[{index}].columns.{column}"
        if source.startswith("metadata."):
            key = source[len("metadata."):]
            if not key:
                raise ConfigError(f"{where}: expected metadata.KEY, got {source!r}")
            keys.append((column, key))
        elif source in ("id", "embedding", "document", "metadata"):
            if source in found:
                raise ConfigError(f"{where}: {source!r} is already mapped to column {found[source]!r}")
            found[source] = column
        else:
            raise ConfigError(f"{where}: expected \"id\", \"embedding\", \"document\", \"metadata\" or "
                              f"\"metadata.KEY\", got {source!r}")
    taken = {c for c, _ in keys} | set(found.values())
    return ColumnMapping(
        id=found.get("id", "id"), embedding=found.get("embedding", "embedding"),
        document=found.get("document", None if "document" in taken else "document"),
        metadata=found.get("metadata", None if "metadata" in taken else "metadata"),
        keys=tuple(keys), constants=tuple(entry.constants.items()))


def target_entry(target: Target, name: str) -> tuple[CollectionTarget | None, int]:
    for i, entry in enumerate(target.collections):
        if entry.name == name:
            return entry, i
    return None, -1
