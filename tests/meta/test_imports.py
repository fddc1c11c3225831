"""No import cycles among dpo_ref's modules, and the layers of the architecture (imports read statically).

An edge A -> B means A imports B when it is loaded (or, with `function_level=True`, anywhere in A, a function
body included: a cycle hidden inside a function is still a cycle). `from pkg import name` counts as an edge to the
submodule `pkg.name` when that is a module, else to `pkg` (its `__init__`). A module's edges to its own
parent packages are left out: their `__init__` has already run when the module loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "dpo_ref"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(function_level: bool = False) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    packages = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if function_level else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_ref"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("dpo_ref")}
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {d for d in deps if d != name and not (d in packages and d in parents)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_even_inside_functions():
    graph = import_graph(function_level=True)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The reference on top: readable on its own, importing nothing of the machinery (module or function level).
REFERENCE = ("dpo_ref.losses", "dpo_ref.family", "dpo_ref.logps", "dpo_ref.variants", "dpo_ref.rpo",
             "dpo_ref.plackett_luce")  # fmt: skip
MACHINERY = ("dpo_ref.checks", "dpo_ref.oracle", "dpo_ref.train", "dpo_ref.bench", "dpo_ref.experiments",
             "dpo_ref.docgen")  # fmt: skip


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a reference module, directly or through others, into the machinery."""
    out = []
    for start in REFERENCE:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for dep in graph.get(node, ()):
                if dep.startswith(MACHINERY):
                    out.append(f"{start} -> ... {node} -> {dep}")
                elif dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
    return out


def test_the_reference_imports_nothing_of_the_machinery():
    assert layer_violations(import_graph(function_level=True)) == []


def test_a_layer_violation_is_found():
    assert layer_violations({"dpo_ref.losses": {"dpo_ref.errors"}, "dpo_ref.errors": {"dpo_ref.oracle.api"}}) == [
        "dpo_ref.losses -> ... dpo_ref.errors -> dpo_ref.oracle.api"
    ]


def test_at_most_twelve_modules_sit_directly_in_the_package():
    flat = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(flat) <= 12, flat
