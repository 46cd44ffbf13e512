"""The TOML editor of :mod:`syncd.cutover.appconfig`.

``toml``: dotted paths, edited with tomlkit, which keeps the rest of the document.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

import tomlkit
import tomlkit.items

from syncd.cutover.appconfig_common import AppConfigError, one_line, split_path


def _toml_doc(text: str, path: str) -> tomlkit.TOMLDocument:
    try:
        tomllib.loads(text)  # the strict parser: tomlkit accepts a few invalid documents
        return tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, tomlkit.exceptions.TOMLKitError) as exc:
        raise AppConfigError(f"{path} is not valid TOML ({one_line(exc)}); fix the file") from None


def _toml_text(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, dict | list):
        raise TypeError
    return str(item)


def _toml_new(old: Any, value: str) -> Any:
    if isinstance(old, tomlkit.items.String):
        literal = old.type == tomlkit.items.StringType.SLL and "'" not in value and "\n" not in value
        return tomlkit.string(value, literal=literal)
    if isinstance(old, bool | int | float) and not isinstance(old, tomlkit.items.String):
        try:
            parsed = tomllib.loads(f"k = {value}")["k"]
        except tomllib.TOMLDecodeError:
            parsed = None
        if parsed is not None and type(parsed) is type(old.unwrap() if hasattr(old, "unwrap") else old):
            return tomlkit.item(parsed)
    return value


def render_toml(text: str, values: Mapping[str, str], path: str) -> str:
    doc = _toml_doc(text, path)
    for key, value in values.items():
        parts = split_path(key, path)
        container: Any = doc
        for i, part in enumerate(parts[:-1]):
            if part not in container:
                container[part] = tomlkit.table()
            container = container[part]
            if not isinstance(container, dict):
                raise AppConfigError(f"{path}: cannot set {key}: {'.'.join(parts[: i + 1])} is not a table; "
                                     "fix the file or the cutover key")
        leaf = parts[-1]
        old = container.get(leaf)
        if old is not None:
            try:
                if _toml_text(old) == value:
                    continue
            except TypeError:
                raise AppConfigError(f"{path}: {key} holds a table or array, not a value; point cutover at "
                                     "the key that holds the value") from None
        container[leaf] = _toml_new(old, value) if old is not None else value
    return tomlkit.dumps(doc)


def read_toml(text: str, keys: Iterable[str], path: str) -> dict[str, str | None]:
    doc = _toml_doc(text, path)
    out: dict[str, str | None] = {}
    for key in keys:
        node: Any = doc
        for part in split_path(key, path):
            node = node.get(part) if isinstance(node, dict) else None
        try:
            out[key] = None if node is None else _toml_text(node)
        except TypeError:
            raise AppConfigError(f"{path}: {key} holds a table or array, not a value; point cutover at "
                                 "the key that holds the value") from None
    return out
