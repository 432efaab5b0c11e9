"""The project's modules import each other without a cycle, imports inside functions included.

A cycle means two modules that cannot be understood, or loaded, one without the other; hiding one
side of it inside a function only defers the problem (jobs.engine.publish -> jobs.tasks -> jobs.engine.runner ->
jobs.engine.publish was such a loop). Imports under `if TYPE_CHECKING:` are for type checkers only.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "jobs", "subscribers", "project", "examples", "hosts", "conveyor_celery", "conveyor_tasks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from jobs.engine import store` imports the submodule jobs.engine.store when there is one.
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
                break
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's nodes, found as strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def package_edges_are_ignored(source: str, target: str) -> bool:
    # A package's lazy __init__ (jobs, subscribers) re-exports its submodules on first use; the
    # submodule importing a sibling through the package (`from jobs import submit`) is not a loop.
    return source.startswith(target + ".") or target.startswith(source + ".")


def test_the_project_has_no_import_cycle():
    modules = project_modules()
    names = set(modules)
    graph = {
        name: {target for target in imports_of(path, name, names) if not package_edges_are_ignored(name, target)}
        for name, path in modules.items()
    }
    assert len(graph) > 30, "the scan found too few modules to mean anything"
    assert find_cycles(graph) == []


def test_the_scan_finds_a_cycle_hidden_in_a_function(tmp_path):
    # given two modules importing each other, one side inside a function
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n")
    # then the cycle is found
    graph = {"a": imports_of(a, "a", {"a", "b"}), "b": imports_of(b, "b", {"a", "b"})}
    assert find_cycles(graph) == [["a", "b"]]
