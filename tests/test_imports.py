"""No import cycles among sweep's modules, counting imports inside functions and TYPE_CHECKING blocks.

The graph is read from the source with `ast` (nothing is imported), so a cycle that only a
lazy import hides at run time still fails here."""

import ast
import graphlib
import importlib.util
from pathlib import Path


def package_dir() -> Path:
    """The `sweep` package on sys.path (a worktree's with PYTHONPATH), found without importing it."""
    return Path(importlib.util.find_spec("sweep").submodule_search_locations[0])


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str, modules: set[str]) -> set[str]:
    """The sweep modules one file imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(p for p in (base, node.module) if p)
            # `from pkg import x` imports the submodule pkg.x when there is one, else a name of pkg.
            targets += [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imported(path, name, set(files)) for name, path in files.items()}


def test_import_graph_is_read_from_every_module():
    graph = import_graph(package_dir())
    assert {"sweep", "sweep.spec", "sweep.driver.session", "sweep.engines"} <= set(graph)
    assert "sweep.spec" in graph["sweep.driver.session"]


def test_no_import_cycles_among_sweep_modules():
    try:
        order = list(graphlib.TopologicalSorter(import_graph(package_dir())).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert order
