"""Stability maps: map.parquet and boundary.parquet written by every study session, typed on load,
the edge rule, the Wilson interval, LR sensitivity, `sweep map` and its plots."""

import math
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import sweep
from sweep.results import maps, reports
from sweep.driver import session as driver
from sweep.cli import main
from sweep.driver.pool import LocalPool
from sweep.spec import AXES, SETTING_AXES, SpecError, parse
from sweep.verdict import STATUSES

TINY = """
[study]
name = "tiny"
example = "exploding_gradients"
epochs = 2
seeds = [0, 1]
[grid]
learning_rate = [0.001, 0.01]
clipnorm = ["none", 1.0]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A study run in two sessions: 3 runs, then the rest (a resume)."""
    results = tmp_path_factory.mktemp("results")
    s = parse(TINY, "tiny.toml")
    driver.run(s, results, max_trials=3, pool=LocalPool(s, "keras"))
    first = sweep.load_map(results / "tiny")
    driver.run(s, results, pool=LocalPool(s, "keras"))
    return results / "tiny", first


def test_map_files_are_written_by_each_session_and_cover_every_run(tiny):
    study_dir, after_first_session = tiny
    assert after_first_session["n_seeds"].sum() == 3
    m, b = sweep.load_map(study_dir), sweep.load_boundary(study_dir)
    trials = sweep.load_trials(study_dir)
    assert m["n_seeds"].sum() == len(trials) == 8
    assert len(m) == 4 and len(b) == 2
    assert b["n_runs"].tolist() == [4, 4]
    for name in (maps.MAP_FILE, maps.BOUNDARY_FILE):
        meta = pq.ParquetFile(study_dir / name).schema_arrow.metadata
        assert meta[b"schema_version"] == reports.SCHEMA_VERSION.encode()


def test_map_dtypes_match_the_trials(tiny):
    study_dir, _ = tiny
    m, b, t = sweep.load_map(study_dir), sweep.load_boundary(study_dir), sweep.load_trials(study_dir)
    for axis in AXES:
        assert m[axis].dtype == t[axis].dtype, axis
    for axis in SETTING_AXES:
        assert b[axis].dtype == t[axis].dtype, axis
    assert list(m["modal_status"].cat.categories) == list(STATUSES)
    assert list(b["edge_status"].cat.categories) == list(STATUSES)
    assert b["clipnorm"].isna().sum() == 1  # absent clipping is null, not a magic number
    assert set(maps.MAP_COLUMNS.names) <= set(m.columns)
    assert set(maps.BOUNDARY_COLUMNS.names) <= set(b.columns)


def test_map_agrees_with_the_trials(tiny):
    study_dir, _ = tiny
    m, t = sweep.load_map(study_dir), sweep.load_trials(study_dir)
    for _, row in m.iterrows():
        runs = t[(t["learning_rate"] == row["learning_rate"])
                 & ((t["clipnorm"] == row["clipnorm"]) | (t["clipnorm"].isna() & pd.isna(row["clipnorm"])))]
        assert row["n_seeds"] == len(runs)
        assert row["n_stable"] == (runs["status"] == "stable").sum()
        assert row["p_low"] <= row["p_stable"] <= row["p_high"]


def test_edge_rule():
    def cell(lr, k, status, n=3):
        return {"learning_rate": lr, "n_seeds": n, "n_stable": k, "modal_status": status}

    # Too slow at the bottom, stable in the middle, a lone non-stable rate, then collapse.
    cells = [cell(1e-4, 0, "stalled"), cell(1e-3, 3, "stable"), cell(1e-2, 2, "stable"),
             cell(3e-2, 1, "unstable"), cell(0.1, 3, "stable"), cell(1.0, 0, "nan")]
    assert maps.edge(cells) == {"lr_stable_min": 1e-3, "lr_stable_max": 1e-2, "lr_unstable_min": 3e-2,
                                "edge_status": "unstable"}
    assert maps.edge([cell(1e-3, 2, "stable"), cell(1e-2, 3, "stable")])["lr_unstable_min"] is None
    nothing = maps.edge([cell(1e-3, 0, "stalled"), cell(1e-2, 0, "diverged"), cell(0.1, 1, "diverged")])
    assert nothing["lr_stable_min"] is None and nothing["edge_status"] == "diverged"
    # A tie between seeds is not a majority.
    assert not maps.is_stable(cell(1e-3, 1, "stable", n=2))


def test_wilson_interval():
    low, high = maps.wilson(0, 3)
    assert low == 0.0 and high == pytest.approx(0.5615, abs=1e-3)
    low, high = maps.wilson(50, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-3), pytest.approx(0.5962, abs=1e-3))
    assert all(math.isnan(v) for v in maps.wilson(0, 0))


def test_lr_sensitivity_caps_at_l0_and_subtracts_the_best():
    runs = pd.DataFrame({"learning_rate": [0.01, 0.01, 0.1, 1.0], "status": "stable",
                         "final_loss": [0.1, 0.3, 5.0, float("inf")], "initial_loss": 0.7})
    # per lr: mean(0.1, 0.3) = 0.2, min(5, 0.7) = 0.7, inf -> 0.7; mean 0.5333 - best 0.2
    assert maps.lr_sensitivity(runs) == pytest.approx(1.6 / 3 - 0.2)


def test_load_map_refuses_another_schema_version(tiny, tmp_path):
    study_dir, _ = tiny
    table = pq.read_table(study_dir / maps.MAP_FILE).replace_schema_metadata({"schema_version": "0"})
    (tmp_path / "trials").mkdir()
    pq.write_table(table, tmp_path / maps.MAP_FILE)
    with pytest.raises(reports.ResultsError, match="schema_version 0"):
        sweep.load_map(tmp_path)


def test_sweep_map_prints_one_row_per_setting_and_writes_plots(tiny):
    study_dir, _ = tiny
    result = CliRunner().invoke(main, ["map", str(study_dir), "--png"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "edge" in result.output and "strip" in result.output
    rows = [line for line in result.output.splitlines() if re.match(r"\s*(-|1) [+~\-^N!?.]{2} ", line)]
    assert len(rows) == 2  # clipnorm none (-) and 1, each with its two-mark strip
    for png in ("pstable.png", "curves.png"):
        assert (study_dir / "plots" / png).stat().st_size > 10_000
    assert CliRunner().invoke(main, ["map", str(study_dir / "nope")]).exit_code == 2


def test_boundary_section_is_validated():
    base = '[study]\nname="b"\nexample="exploding_gradients"\nsampler="boundary"\n[boundary]\n'
    assert parse(base + "resolution = 3.5\n").resolution == 3.5
    for bad, field in (("resolution = 1.0", "boundary.resolution"), ('resolution = "fine"', "boundary.resolution"),
                       ("steps = 3", "boundary.steps")):
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse(base + bad + "\n", "b.toml")
