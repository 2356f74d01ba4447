"""The package's stages import only from the stages below them.

`sweep/` is cut along its data flow (docs/design.md, "Package map"). A module may import
from its own stage and from any stage below it, never from one above: an upward import
is how a layered package turns back into a ball of modules. Imports inside functions
and TYPE_CHECKING blocks count (the graph is read with `ast`, nothing is imported)."""

import shutil
from pathlib import Path

from test_imports import import_graph, package_dir

# Bottom first. The catalog, the verdict rules and the version are used by every stage;
# `sweep` itself (the loaders' face) and the command line sit on top.
STAGES = ("base", "spec", "engines", "results", "answers", "plots", "driver", "probes", "claims", "top")
BASE = {"sweep.catalog", "sweep.verdict", "sweep._version"}
TOP = {"sweep", "sweep.cli"}


def stage(module: str) -> str:
    if module in BASE:
        return "base"
    if module in TOP:
        return "top"
    name = module.split(".")[1]
    assert name in STAGES, f"{module}: in no stage; add its package to STAGES and docs/design.md"
    return name


def upward_imports(root: Path) -> list[str]:
    """Every import whose target lies in a stage above the importer's, as 'a -> b'."""
    rank = {s: i for i, s in enumerate(STAGES)}
    return sorted(f"{source} ({stage(source)}) -> {target} ({stage(target)})"
                  for source, targets in import_graph(root).items() for target in targets
                  if rank[stage(target)] > rank[stage(source)])


def test_every_module_is_in_a_stage_and_no_import_points_up():
    assert upward_imports(package_dir()) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(package_dir(), root, ignore=shutil.ignore_patterns("__pycache__"))
    maps = root / "results" / "maps.py"
    maps.write_text(maps.read_text() + "\n\ndef _late():\n    from ..driver import session\n")
    assert upward_imports(root) == ["sweep.results.maps (results) -> sweep.driver.session (driver)"]


def test_the_top_level_is_a_handful_of_stages():
    entries = {p.name for p in package_dir().iterdir() if p.name != "__pycache__"}
    stages = entries - {"__init__.py", "cli.py", "_version.py"}
    assert stages == {"catalog.py", "verdict.py", *(s for s in STAGES if s not in ("base", "top"))}
    for s in STAGES:
        if s not in ("base", "top"):
            assert (package_dir() / s / "__init__.py").read_text().startswith('"""'), s
