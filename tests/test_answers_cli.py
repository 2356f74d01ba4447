"""The answers where people look: `sweep effects`, `sweep map` on a study of many settings,
the effects and conditions files written by every session, and their plots.

The study is planted: an engine that trains nothing returns, per configuration, the outcome
a rule says, so the right answers are known. Edge at learning rate 0.1 with adam and 10 with
sgd (x100); sigmoid stalls at the smallest learning rate (too slow, not too fast); above the
edge adam without clipping goes NaN, everything else diverges. 48 settings, 2 seeds."""

import re

import numpy as np
import pytest
from click.testing import CliRunner
from rich.cells import cell_len

import sweep
from sweep.driver import session as driver
from sweep.cli import main
from sweep.engines import Outcome
from sweep.driver.pool import LocalPool
from sweep.spec import parse

PLANTED = """
[study]
name = "planted"
example = "exploding_gradients"
epochs = 3
seeds = [0, 1]
[grid]
learning_rate = [0.001, 0.01, 0.1, 1.0, 10.0]
optimizer = ["adam", "sgd"]
activation = ["relu", "tanh", "sigmoid"]
batch_size = [16, 32, 128, 1000]
clipnorm = ["none", 1.0]
"""
N_SETTINGS = 48


def planted_status(c) -> str:
    edge = 0.1 if c.optimizer == "adam" else 10.0
    if c.learning_rate >= edge:
        return "nan" if c.optimizer == "adam" and c.clipnorm is None else "diverged"
    if c.activation == "sigmoid" and c.learning_rate == 0.001:
        return "stalled"
    return "stable"


LOSSES = {"stable": [0.6, 0.4, 0.3], "stalled": [0.69, 0.69, 0.68], "diverged": [5.0, 20.0, 30.0],
          "nan": [0.6, float("nan")]}


class PlantedEngine:
    name = "planted"
    batched = False

    def train(self, study, runs):
        out = []
        for run in runs:
            status = planted_status(run.config)
            losses = LOSSES[status]
            out.append(Outcome(initial_loss=0.69, initial_accuracy=0.5, epoch_loss=losses,
                               epoch_accuracy=[0.5] * len(losses), epoch_grad_norm_max=[1.0] * len(losses),
                               epoch_learning_rate=[run.config.learning_rate] * len(losses),
                               grad_norms=np.ones(len(losses)), engine="planted",
                               first_nonfinite_step=10 if status == "nan" else None))
        return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    s = parse(PLANTED, "planted.toml")
    driver.run(s, results, pool=LocalPool(s, PlantedEngine()))
    return results / "planted"


def test_a_session_writes_effects_and_conditions(planted):
    e, c = sweep.load_effects(planted), sweep.load_conditions(planted)
    sgd = e[(e["axis"] == "optimizer") & (e["value"] == "sgd")].iloc[0]
    assert sgd["reference"] == "adam" and sgd["edge_shift"] == pytest.approx(100) and sgd["n_pairs"] == 24
    clip = e[e["axis"] == "clipnorm"].iloc[0]
    assert clip["edge_shift"] == pytest.approx(1) and clip["share_same"] == 1
    assert set(e["axis"]) == {"optimizer", "activation", "batch_size", "clipnorm"}
    nan = c[c["status"] == "nan"].iloc[0]
    assert "optimizer in {adam}" in nan["conditions"] and "clipnorm in {none}" in nan["conditions"]
    assert nan["precision"] == 1 and nan["coverage"] == 1
    assert set(c["status"].astype(str)) == {"nan", "diverged", "stalled"}


def test_a_session_with_no_runs_writes_empty_answers(tmp_path):
    s = parse(PLANTED, "planted.toml")
    driver.run(s, tmp_path, max_trials=0, pool=LocalPool(s, PlantedEngine()))
    assert sweep.load_effects(tmp_path / "planted").empty
    assert sweep.load_conditions(tmp_path / "planted").empty


def test_a_study_varying_no_axis_has_no_effects_but_conditions(tmp_path):
    s = parse("[study]\nname='lr'\nexample='exploding_gradients'\nepochs=3\nseeds=[0]\n"
              "[grid]\nlearning_rate=[0.01, 1.0]\n", "lr.toml")
    driver.run(s, tmp_path, pool=LocalPool(s, PlantedEngine()))
    assert sweep.load_effects(tmp_path / "lr").empty
    assert list(sweep.load_conditions(tmp_path / "lr")["status"].astype(str)) == ["nan"]


def test_sweep_effects_prints_and_writes(planted):
    for name in ("effects.parquet", "conditions.parquet"):
        (planted / name).unlink()
    result = CliRunner().invoke(main, ["effects", str(planted)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  "))
    # Sorted by how far the edge moves: the optimizer first, clipping (no move) later.
    assert lines[first].startswith("  optimizer=sgd vs adam: edge x100")
    assert any(line.startswith("  clipnorm=1 vs none: edge x1 ") for line in lines[first + 1:])
    assert "nan where learning_rate >= 0.1 and" in result.output
    assert sweep.load_effects(planted)["n_pairs"].sum() > 0
    assert len(sweep.load_conditions(planted)) == 3
    assert all(cell_len(line) <= 100 for line in lines if not line.startswith("wrote "))
    assert "wrote " + str(planted / "effects.parquet") in lines


def test_sweep_effects_of_a_bad_directory_names_it(tmp_path):
    result = CliRunner().invoke(main, ["effects", str(tmp_path / "nope")])
    assert result.exit_code == 2 and str(tmp_path / "nope") in result.output


@pytest.mark.parametrize("columns", [80, 100])
def test_sweep_map_of_many_settings_fits_the_terminal(planted, columns):
    result = CliRunner().invoke(main, ["map", str(planted)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(cell_len(line) for line in lines) <= columns
    assert len(lines) < 60
    # The pivot: optimizer moves the edge (x100), then activation (ties broken in axis order).
    assert "The axes that move the edge most: optimizer and activation" in result.output
    rows = {tuple(line.split()[:2]): line.split() for line in lines if re.match(r"\s*(adam|sgd) ", line)}
    assert len(rows) == 6
    assert rows["adam", "relu"][2:5] == ["8", "++...", "[0.01,"]  # 8 settings, whole strip, median edge
    assert rows["sgd", "sigmoid"][2:4] == ["8", ".+++."]
    assert "nan where learning_rate >= 0.1 and" in result.output


def test_sweep_map_all_prints_every_setting(planted):
    result = CliRunner().invoke(main, ["map", str(planted), "--all"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    strips = [line for line in result.output.splitlines() if re.search(r" [+\-N^]{5} ", line)]
    assert len(strips) == N_SETTINGS
    assert max(cell_len(line) for line in result.output.splitlines()) <= 120


def test_answer_plots_are_written(planted):
    from sweep.plots.figures import write_plots

    written = {p.name for p in write_plots(planted)}
    assert {"effects.png", "pstable_by_optimizer.png"} <= written
    for name in ("effects.png", "pstable_by_optimizer.png"):
        assert (planted / "plots" / name).stat().st_size > 10_000
