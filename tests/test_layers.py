"""The package's layers point down only, and its imports have no cycle (README "Package layers").

Every `import` / `from ... import` of src/fusepipe counts: at module level, inside functions (lazy imports) and
under `if TYPE_CHECKING:`. A module may import modules of its own layer or of a layer below it, never above,
and no chain of imports leads back to where it started. A subpackage sits in one layer with everything in it, so
the `__init__.py` that importing one of its modules runs is held to the same rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fusepipe"

# Top first. An entry names a module or a subpackage (with everything in it) relative to `fusepipe`; "" is the
# package itself (`fusepipe/__init__.py`).
LAYERS: list[tuple[str, list[str]]] = [
    ("cli", ["cli", "__main__"]),
    ("tools", ["plan", "cluster", "inspect"]),  # cost plans, Slurm resources, `fusepipe inspect`
    ("pipeline", ["pipeline"]),  # load(): validate, check recipes and grids; stage slices; the run's models
    ("recipes", ["ablations", "recipes"]),  # the papers' setups and ablation grids, resolved
    ("stages", ["toy", "data", "generate", "reward", "logits", "align", "fuse", "train", "merge", "evaluate",
                "report", "losses"]),
    ("engines", ["engines"]),
    ("ground", ["", "config", "params", "schemas", "paths", "artifacts", "errors", "progress", "chat",
                "models", "sizes"]),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}  # 0 = top


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def layer_of(module: str) -> str | None:
    rel = module.removeprefix(PACKAGE).removeprefix(".")
    top = rel.split(".")[0]
    return next((layer for layer, entries in LAYERS if top in entries), None)


def imports(module: str) -> list[tuple[str, int]]:
    """(imported fusepipe module, line) for every import statement of `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one step up per extra dot
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([base] if base else [])])
            if base.split(".")[0] != PACKAGE:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return [(m, line) for m, line in out if m != module]


def known(name: str) -> str:
    """The module an import names (`fusepipe.x.y.attr` -> the deepest module that exists)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


GRAPH = {m: sorted({known(t) for t, _ in imports(m)} - {m}) for m in MODULES}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {', '.join(missing)}"


def test_imports_point_down():
    """A module imports only from its own layer or below (lazy imports included)."""
    bad = []
    for module in MODULES:
        here = layer_of(module)
        for target, line in imports(module):
            there = layer_of(known(target))
            if here and there and RANK[there] < RANK[here]:
                bad.append(f"{MODULES[module].relative_to(SRC)}:{line}: {module} ({here}) imports {target} ({there})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_see_an_upward_import_and_a_cycle():
    """The checks themselves: the ground sits below the stages, and a loop of imports is a cycle."""
    assert RANK[layer_of("fusepipe.config")] > RANK[layer_of("fusepipe.logits.store")]
    assert layer_of("fusepipe.params.merge") == "ground" and layer_of("fusepipe.merge.engine") == "stages"
    assert layer_of("fusepipe") == "ground" and layer_of("fusepipe.engines.vllm") == "engines"
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []


@pytest.mark.parametrize("module", ["fusepipe.config", "fusepipe.engines.vllm"])
def test_named_modules_are_parsed(module):
    assert module in MODULES and GRAPH[module]
