"""The package's shape: its modules import each other at the top, never from inside a function, and without a cycle,
so a reader can follow any module's dependencies from its first lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "fashion_cnn"


def _project_imports(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """(statement, module) for each import of one of the package's modules anywhere in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "fashion_cnn":
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fashion_cnn."):
            found.append((node, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node, a.name.split(".")[1]) for a in node.names if a.name.startswith("fashion_cnn.")]
    return found


def test_modules_import_each_other_at_the_top_and_without_a_cycle():
    graph, inside = {}, []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        imports = _project_imports(tree)
        inside += [f"{path.name}:{node.lineno} imports {name}" for node, name in imports if node not in tree.body]
        graph[path.stem] = {name for node, name in imports if node in tree.body}
    assert not inside

    def cycle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if module in path:
            return (*path[path.index(module):], module)
        return next((c for dep in sorted(graph.get(module, ())) if (c := cycle_from(dep, (*path, module)))), None)

    assert [c for module in graph if (c := cycle_from(module, ()))] == []
