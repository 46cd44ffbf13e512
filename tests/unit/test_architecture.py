"""The floor plan of ``syncd/`` (docs/architecture.md, "The house"), checked on the source itself.

Every module is parsed (not imported) and its imports resolved to modules of ``syncd``; the
rules below are then checked on that graph. Each test names the offending modules.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "syncd"
MAX_LINES = 420
"""A module over ~400 lines is split along a real seam; 420 leaves room for a docstring."""
MAX_TOP_LEVEL = 12
CORE = ("syncd.model", "syncd.ports", "syncd.stream", "syncd.config", "syncd.errors", "syncd.sql")
"""Modules (and packages) that know no store and no concern above them."""
ABOVE_CORE = ("syncd.stores", "syncd.streams", "syncd.cutover", "syncd.verify", "syncd.files",
              "syncd.service", "syncd.demo", "syncd.cli")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The module of ``syncd`` that an imported dotted name lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, *, top_level_only: bool) -> Iterator[str]:
    """The modules of ``syncd`` that *module* imports (``from syncd.x import y``: ``syncd.x.y``
    when that is a module, else ``syncd.x``). With *top_level_only*, imports inside functions
    and under ``if TYPE_CHECKING`` are left out: they run later, or never."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name == "syncd" or name.startswith("syncd."):
                target = _resolve(name)
                if target is not None and target != module and target != "syncd":
                    yield target


@functools.cache
def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    return {m: set(_imports(m, top_level_only=top_level_only)) for m in MODULES}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _store(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stores" else None


def test_the_graph_is_read() -> None:
    """The checks below see real edges (a parser that found nothing would pass them all)."""
    graph = _graph(top_level_only=False)
    assert len(MODULES) > 100
    assert "syncd.pg.connect" in graph["syncd.stores.postgres.sink"]
    assert "syncd.ports.tables" in graph["syncd.stores.postgres.sink"]
    assert "syncd.stores.sqlite.capture" in graph["syncd.stores.sqlite.source"]


def test_no_import_circles() -> None:
    """No circle among the imports a module runs when it is imported (Tarjan's SCCs)."""
    graph = _graph(top_level_only=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_stores_import_no_other_store() -> None:
    """A store's room imports another store's room nowhere (not even inside a function): what
    two stores share lives in ``syncd.ports`` (values, protocols), ``syncd.pg`` (PostgreSQL
    plumbing, state) or ``syncd.sql``."""
    crossings = sorted(
        f"{m} -> {t}" for m, targets in _graph(top_level_only=False).items() for t in targets
        if _store(m) is not None and _store(t) is not None and _store(m) != _store(t))
    assert crossings == []


def test_the_core_knows_no_store_and_no_concern() -> None:
    graph = _graph(top_level_only=False)
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                   if any(_within(m, c) for c in CORE) and any(_within(t, a) for a in ABOVE_CORE))
    assert wrong == []


def test_pg_and_ports_know_no_store() -> None:
    """The shared rooms stay below the stores: a store may import them, never the reverse."""
    graph = _graph(top_level_only=False)
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                   if (_within(m, "syncd.pg") or _within(m, "syncd.ports"))
                   and any(_within(t, a) for a in ABOVE_CORE))
    assert wrong == []


def test_nothing_below_the_cli_imports_it() -> None:
    graph = _graph(top_level_only=False)
    assert sorted(m for m, targets in graph.items() if "syncd.cli" in targets) == []


def test_no_module_is_too_long() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_top_level_stays_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL, top
