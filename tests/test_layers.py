"""The packages are layers: each imports only from the layers below it, and no modules import each
other in a cycle. Read from the source with ``ast``, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

# Lowest first. A module may import from its own layer and the layers before it.
LAYERS = (
    "gpt.base",
    "gpt.data",
    "data_prep",
    "gpt.models",
    "gpt.run",
    "gpt.interop",
    "gpt.training",
    "gpt.analysis",
    "gpt",  # the commands: gpt/*.py
    "train sample",  # the scripts at the top
    "bench",
)
PACKAGES = ("gpt", "data_prep", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """The project modules ``path`` imports: all of them, and those imported at module level."""
    every, top = set(), set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found = {name for name in names if name.split(".")[0] in (*PACKAGES, "tests")}
        every |= found
        if id(node) in top_level:
            top |= found
    return every, top


def project_graph() -> dict[str, tuple[set[str], set[str]]]:
    files = [ROOT / "train.py", ROOT / "sample.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return {module_name(path): imports_of(path) for path in files}


def layer_of(module: str) -> int:
    """The index in LAYERS of the most specific layer that holds ``module``."""
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer.split():
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(LAYERS[best].split()[0]):
                    best = index
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def upward_imports(graph: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    known = set(graph)
    problems = []
    for module, (every, _) in sorted(graph.items()):
        for imported in sorted(every):
            if imported.split(".")[0] == "tests":
                problems.append(f"{module} imports {imported}: nothing imports the tests")
                continue
            while imported not in known and "." in imported:
                imported = imported.rsplit(".", 1)[0]  # `from pkg.mod import name`
            if layer_of(imported) > layer_of(module):
                problems.append(
                    f"{module} ({LAYERS[layer_of(module)]}) imports {imported} "
                    f"({LAYERS[layer_of(imported)]}), a higher layer"
                )
    return problems


def import_cycles(graph: dict[str, tuple[set[str], set[str]]]) -> list[list[str]]:
    """Cycles among module-level imports (which fail or half-initialise a module)."""
    known = set(graph)
    edges = {
        module: {name for name in top if name in known and name != module}
        for module, (_, top) in graph.items()
    }
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_layer_imports_a_higher_one():
    assert upward_imports(project_graph()) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert import_cycles(project_graph()) == []


def test_a_planted_upward_import_is_caught():
    graph = project_graph()
    before = upward_imports(graph)
    every, top = graph["gpt.base.errors"]
    graph["gpt.base.errors"] = (every | {"gpt.training.trainer"}, top)
    assert set(upward_imports(graph)) - set(before) == {
        "gpt.base.errors (gpt.base) imports gpt.training.trainer (gpt.training), a higher layer"
    }


def test_a_planted_cycle_is_caught():
    graph = project_graph()
    every, top = graph["gpt.base.files"]
    graph["gpt.base.files"] = (every | {"gpt.base.cli"}, top | {"gpt.base.cli"})
    every, top = graph["gpt.base.cli"]
    graph["gpt.base.cli"] = (every | {"gpt.base.files"}, top | {"gpt.base.files"})
    assert [set(cycle) for cycle in import_cycles(graph)] == [{"gpt.base.cli", "gpt.base.files"}]


def test_every_layer_says_what_it_holds_and_may_import():
    for layer in LAYERS[:8]:
        init = ROOT / layer.replace(".", "/") / "__init__.py"
        assert "Imports" in init.read_text(encoding="utf-8"), init
