"""The YAML editor of :mod:`syncd.cutover.appconfig`.

``yaml``: keys are dotted paths (``storage.vector_store``); only a scalar on one line
is replaced (block scalars and multi-line values are refused). A missing key is created
under its parent mapping, a missing parent as a new block under the nearest existing one.
The text is edited at the offsets PyYAML's composer reports, so the rest stays as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import yaml

from syncd.cutover.appconfig_common import LINES, AppConfigError, one_line, split_path


def _yaml_root(text: str, path: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise AppConfigError(f"{path} is not valid YAML ({one_line(exc)}); fix the file") from None


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _yaml_find(root: yaml.Node | None, parts: list[str], key: str, path: str
               ) -> tuple[yaml.Node | None, int, yaml.MappingNode | None]:
    """Walk *parts*: (the value node or None, how many parts exist, the mapping that holds
    the deepest existing part — where the next part would go). A part that exists but is
    not a mapping while deeper parts follow is an error."""
    node, parent = root, None
    for depth, part in enumerate(parts):
        if depth == 0 and (node is None or _is_null(node)):
            return None, 0, None
        if not isinstance(node, yaml.MappingNode):
            raise AppConfigError(f"{path}: cannot reach {key}: {'.'.join(parts[:depth]) or 'the document'} "
                                 "is not a mapping; fix the file or the cutover key")
        parent = node
        match = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
        if not match:
            return None, depth, parent
        node = match[-1]
    return node, len(parts), parent


def _yaml_scalar(node: yaml.Node, key: str, path: str) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode):
        kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
        raise AppConfigError(f"{path}: {key} holds a {kind}, not a value; point cutover at the scalar key "
                             "below it")
    return node


def _yaml_plain_ok(value: str) -> bool:
    if value != value.strip() or not value:
        return False
    try:
        loaded = yaml.safe_load(f"k: {value}\n")
    except yaml.YAMLError:
        return False
    return isinstance(loaded, dict) and loaded.get("k") == value


def _yaml_typed_ok(old: str, value: str) -> bool:
    """A plain non-string value (5432, true) may be replaced by another of the same kind."""
    try:
        before = yaml.safe_load(f"k: {old}\n")["k"]
        after = yaml.safe_load(f"k: {value}\n")["k"]
    except (yaml.YAMLError, TypeError, KeyError):
        return False
    return not isinstance(before, str) and type(before) is type(after) and value == value.strip()


def _yaml_quoted(value: str, old: yaml.ScalarNode) -> str:
    if old.style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if old.style in ("", None) and (_yaml_plain_ok(value) or _yaml_typed_ok(str(old.value), value)):
        return value
    return json.dumps(value, ensure_ascii=False)


def _indent_step(text: str) -> int:
    indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()}
    positive = sorted(i for i in indents if i > 0)
    return positive[0] if positive else 2


def _yaml_insert_line(lines: list[str], mapping: yaml.MappingNode) -> tuple[int, int]:
    """(index of the line after *mapping*'s last entry, the column of its keys)."""
    last_key = mapping.value[-1][0]
    column = mapping.value[0][0].start_mark.column
    index = last_key.start_mark.line
    last_content = index
    for i in range(index + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(lines[i]) - len(lines[i].lstrip(" ")) > column:
            last_content = i
            continue
        break
    return last_content + 1, column


def render_yaml(text: str, values: Mapping[str, str], path: str) -> str:
    for key, value in values.items():
        parts = split_path(key, path)
        root = _yaml_root(text, path)
        found, depth, parent = _yaml_find(root, parts, key, path)
        if found is None:
            text = _yaml_create(text, parts[depth:], parent, value, key, path)
            continue
        node = _yaml_scalar(found, key, path)
        if node.style in ("|", ">") or node.start_mark.line != node.end_mark.line:
            raise AppConfigError(f"{path} line {node.start_mark.line + 1}: {key} is a multi-line value; "
                                 "syncd only replaces one-line values — make it one line")
        start, end = node.start_mark.index, node.end_mark.index
        if node.value == value and (node.style or text[start:end] == value):
            continue
        text = text[:start] + _yaml_quoted(value, node) + text[end:]
    return text


def _yaml_create(text: str, missing: list[str], parent: yaml.MappingNode | None,
                 value: str, key: str, path: str) -> str:
    """Add *missing* (the parts of *key* not in the file) under *parent* (None: the root)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    step = _indent_step(text)
    lines = LINES.findall(text)
    if parent is not None and (parent.flow_style or not parent.value):
        raise AppConfigError(f"{path} line {parent.start_mark.line + 1}: the mapping that would hold {key} "
                             "is written in flow style ({...}); add the key by hand")
    if parent is None:  # an empty document
        at, column = len(lines), 0
    else:
        at, column = _yaml_insert_line(lines, parent)
    block = []
    for i, part in enumerate(missing):
        indent = " " * (column + i * step)
        name = part if _yaml_plain_ok(part) else json.dumps(part, ensure_ascii=False)
        tail = f" {_yaml_quoted(value, yaml.ScalarNode('', ''))}" if i == len(missing) - 1 else ""
        block.append(f"{indent}{name}:{tail}{newline}")
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += newline
    lines[at:at] = block
    return "".join(lines)


def read_yaml(text: str, keys: Iterable[str], path: str) -> dict[str, str | None]:
    root = _yaml_root(text, path)
    out: dict[str, str | None] = {}
    for key in keys:
        node, _, _ = _yaml_find(root, split_path(key, path), key, path)
        if node is None:
            out[key] = None
            continue
        scalar = _yaml_scalar(node, key, path)
        out[key] = str(scalar.value)
    return out
