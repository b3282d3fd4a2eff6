"""The import structure, as a test: layers point one way, no module cycles, imports at the top.

    server → app → transports (miniprogram_api, bot, console, bridge.callback, payments.notify, ops) and jobs
           → container → use cases (handlers) → engines and adapters → storage → core

Engines are the parts of `handlers/` that hold no use case (the forms rule language, the
image pipeline, the search engine): they import only engines, adapters and core. A rule
nobody has to remember (in the spirit of httpx's tests/test_exported_members.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", "tests", "benchmarks", "var", ".git"}

# Engines living inside handlers/ packages: no use case, so no import of one.
ENGINES = ("handlers.forms", "handlers.materials.pipeline", "handlers.catalog.search")
TRANSPORTS = ("miniprogram_api", "bot", "console", "bridge.callback", "payments.notify", "ops")
ADAPTERS = ("wechat", "bridge", "payments")

# Rank of each layer: a module may import only from a lower rank, or from its own group.
RANKS = {
    "core": 0,
    "storage": 1,
    "adapters": 2,
    "engines": 2,
    "handlers": 3,
    "container": 4,
    "transports": 5,
    "jobs": 5,
    "app": 6,
    "server": 7,
}


def _within(name: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def layer(name: str) -> tuple[str, str]:
    """(layer, group) of a module: the group is what it may import from freely at its own rank."""
    if engine := _within(name, ENGINES):
        return "engines", engine
    if transport := _within(name, TRANSPORTS):
        return "transports", transport
    top = name.split(".")[0]
    if top in ADAPTERS:
        return "adapters", top
    if top in RANKS:
        return top, top
    raise AssertionError(f"{name}: a top-level package the layer rules do not know; add it to tests/test_layers.py")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool
    explained: bool


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or len(rel.parts) == 1 and rel.name not in ("server.py", "app.py", "container.py"):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(mods: dict[str, Path]) -> list[Import]:
    out = []
    for name, path in mods.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}:{node.lineno}: relative import; write the absolute path")
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            explained = "#" in lines[node.lineno - 1] or above.startswith("#")
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    out.append(Import(name, target, node.lineno, node.col_offset > 0, explained))
    return out


MODULES = modules()
IMPORTS = imports(MODULES)


def test_the_rules_see_the_whole_tree():
    assert {"server", "app", "container", "core.errors", "handlers.drafts", "jobs.worker"} <= MODULES.keys()
    assert len(IMPORTS) > 100


def test_no_layer_imports_a_higher_one():
    wrong = []
    for imp in IMPORTS:
        (src_layer, src_group), (dst_layer, dst_group) = layer(imp.source), layer(imp.target)
        if src_group == dst_group:
            continue
        if RANKS[dst_layer] >= RANKS[src_layer]:
            wrong.append(f"{imp.source}:{imp.line} imports {imp.target} ({src_layer} -> {dst_layer})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_engines_import_no_use_case():
    wrong = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if layer(imp.source)[0] == "engines" and layer(imp.target)[0] == "handlers"
    ]
    assert not wrong, "an engine imports a use case:\n" + "\n".join(wrong)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another, directly or around (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_inside_functions_say_why():
    unexplained = [
        f"{imp.source}:{imp.line} imports {imp.target} inside a function"
        for imp in IMPORTS
        if imp.in_function and not imp.explained
    ]
    assert not unexplained, "move these to the module top, or say why in a comment:\n" + "\n".join(unexplained)


def test_the_checks_catch_what_they_are_for():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert RANKS[layer("storage.models")[0]] < RANKS[layer("handlers.drafts")[0]]  # storage -> handlers: upward
    assert layer("handlers.forms.review") == ("engines", "handlers.forms")
    assert layer("bridge.callback")[0] == "transports" and layer("bridge.client")[0] == "adapters"
