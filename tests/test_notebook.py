"""docs/query.ipynb and the README's pandas lines still run: the notebook executed top to
bottom (nbclient, an ipykernel kernel) on two small studies, every cell without error, and
the README's Results block executed on one of them."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from scripted_engine import ScriptedEngine
from sweep.driver import session as driver
from sweep.driver.pool import LocalPool
from sweep.spec import parse

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "query.ipynb"
# Two studies (the DuckDB query reads across them): stable, error (the scripted engine raises at
# 0.5) and nan (1.0) runs, so that the map, the edges, the effects and the conditions all have rows.
STUDY = """
[study]
name = "{name}"
example = "exploding_gradients"
epochs = 3
seeds = [0, 1]
engine = "keras"
[grid]
learning_rate = [0.001, 0.1, 0.5, 1.0]
clipnorm = ["none", 1.0]
optimizer = {optimizers}
"""


class ScriptedPool(LocalPool):
    def __enter__(self):
        return self


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook")
    for name, optimizers in (("small", '["adam"]'), ("small-sgd", '["adam", "sgd"]')):
        path = root / f"{name}.toml"
        path.write_text(STUDY.format(name=name, optimizers=optimizers))
        study = parse(path.read_text(), str(path))
        driver.run(study, root / "results", pool=ScriptedPool(study, ScriptedEngine(raise_at=(0.5,))))
    return root / "results"


def outputs(cell) -> str:
    """A code cell's printed and displayed text."""
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebook_runs_on_a_study(results, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_RESULTS", str(results))
    monkeypatch.setenv("SWEEP_STUDY", str(results / "small-sgd"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = [outputs(c) for c in nb.cells if c.cell_type == "code"]
    assert "small-sgd" in text[0]
    assert "32 runs of exploding_gradients: {'stable': 16, 'nan': 8, 'error': 8}" in text[1]
    pivot = next(t for t in text if "p_stable" not in t and "learning_rate" in t and "optimizer" in t)
    assert "none" in pivot and "sgd" in pivot  # absent clipping is a row of its own
    assert "4 settings: 4 with an edge inside the grid" in "\n".join(text)
    duckdb_table = next(t for t in text if "share_stable" in t)
    assert re.search(r"small\s+16\s+0\.5\s+4", duckdb_table) and re.search(r"small-sgd\s+32\s+0\.5\s+8", duckdb_table)
    plot = nb.cells[-1].outputs
    assert any("image/png" in o.get("data", {}) for o in plot)


def test_the_readme_queries_run(results):
    """The README's pandas lines (Results section), on a study of the suite's own."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import sweep\n.*?)```", readme, re.S).group(1)
    block = block.replace('"results/quickstart"', repr(str(results / "small"))).replace(
        '"results/reproduce-exploding_gradients"', repr(str(results / "small")))
    assert str(results) in block
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert {"t", "b"} <= set(scope) and len(scope["t"]) == 16 and len(scope["b"]) == 2
