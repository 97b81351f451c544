"""The package's import graph: no cycles inside msa_dist, imports in functions included (a lazy
import that only hides a cycle counts as one)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "msa_dist"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The msa_dist modules `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # a package's __init__ importing its own submodules is not a cycle of theirs
    return {
        name: {m for m in _imports(path, modules) if not (name and m.startswith(name + "."))}
        for name, path in paths.items()
    }


def _cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_msa_dist():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


# The parts of the package, lowest first: a part may import only parts of a lower layer (or its
# own). Shared helpers sit in common/, commands in cli/ on top. msa_dist/__init__.py (the lazy
# `load_model`) and __main__.py stand above them all.
LAYERS = [["common"], ["config"], ["data", "models"], ["engine"], ["inference"], ["experiments", "bench"], ["cli"]]


def _part_edges(graph: dict[str, set[str]]) -> set[tuple[str, str, str]]:
    """(importing part, imported part, module) for every import between two parts."""
    edges = set()
    for name, targets in graph.items():
        bits = name.split(".")
        if len(bits) < 3 and not (PACKAGE / bits[-1]).is_dir():
            continue  # msa_dist itself, __main__
        for target in targets:
            edges.add((bits[1], target.split(".")[1], name))
    return {(a, b, m) for a, b, m in edges if a != b}


def test_every_part_has_a_layer():
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert parts == {part for layer in LAYERS for part in layer}


def test_parts_import_only_lower_layers():
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    upward = sorted(f"{m} ({a}) imports {b}" for a, b, m in _part_edges(_graph()) if rank[b] >= rank[a])
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    graph = {**_graph(), "msa_dist.common.errors": {"msa_dist.cli"}}
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    upward = [e for e in _part_edges(graph) if rank[e[1]] >= rank[e[0]]]
    assert upward == [("common", "cli", "msa_dist.common.errors")]


def test_no_folder_holds_more_than_16_modules():
    crowded = {
        str(d.relative_to(PACKAGE.parent)): n
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir() and (n := len(list(d.glob("*.py")))) > 16
    }
    assert crowded == {}
