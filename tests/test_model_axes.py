"""Model knobs as axes ([grid.model]): every bad name or value refused by field, every builder
call given its knobs, and a planted effect measured end to end: `builders.rescaled_linear_model`,
whose `depth` halves the stable learning rate per layer, through trials, map, boundary, effects
and conditions, read with pandas and DuckDB."""

import hashlib
import json
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import sweep
from sweep.answers.conditions import load_conditions
from sweep.answers.effects import load_effects
from sweep.catalog import EXAMPLES
from sweep.driver import session
from sweep.driver.pool import LocalPool
from sweep.engines import problem
from sweep.engines.population import PopulationEngine, initial_model
from sweep.results.repro import script
from sweep.spec import AXIS_DEFAULTS, SpecError, config_from_dict, load, parse

from builders import rescaled_linear_data

TESTS = Path(__file__).parent
CATALOG = '[study]\nname = "m"\nexample = "exploding_gradients"\n'
USER = '[study]\nname = "m"\nexample = "builders:rescaled_linear_model"\n'


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse(text, str(TESTS / "bad.toml"))
    return info.value.problems


@pytest.mark.parametrize("text, field, words", [
    (CATALOG + "[grid.model]\nwidth = [8]\n", "grid.model.width", "allowed: depth, kernel_initializer, l1, l2"),
    (USER + "[grid.model]\nwidth = [8]\n", "grid.model.width", "allowed: depth"),
    (CATALOG + "[grid.model]\ndepth = [[2, 4]]\n", "grid.model.depth", "not a TOML scalar"),
    (CATALOG + "[grid.model]\ndepth = [{a = 1}]\n", "grid.model.depth", "not a TOML scalar"),
    (USER + "[grid.model]\ndepth = [1, 2.0]\n", "grid.model.depth", "mixes float and int"),
    (USER + "[grid.model]\ndepth = [nan]\n", "grid.model.depth", "not finite"),
    (USER + "[grid.model]\ndepth = []\n", "grid.model.depth", "empty"),
    (USER + "[grid.model]\ndepth = [1, 1]\n", "grid.model.depth", "duplicate"),
    (CATALOG + "[grid.model]\ndepth = [0]\n", "grid.model.depth", "an integer from 1 to 64"),
    (CATALOG + "[grid.model]\nkernel_initializer = ['he']\n", "grid.model.kernel_initializer", "he_normal"),
    (CATALOG + "[grid.model]\nactivation = ['tanh']\n", "grid.model.activation", "set it in [grid]"),
    (USER + "[grid.model]\nseed = [1]\n", "grid.model.seed", "study.seeds"),
    (CATALOG + "[grid]\nmodel = [1]\n", "grid.model", "must be a table"),
])
def test_a_bad_model_axis_is_named(text, field, words):
    found = problems(text)
    assert [f for f, _ in found] == [field], found
    assert words in found[0][1], found


@pytest.mark.parametrize("name, words", [("order", "SQL keyword"), ("size", "pandas DataFrame attribute"),
                                         ("Depth", "plain column name"), ("lambda", "Python keyword")])
def test_a_knob_name_must_be_a_plain_column_name(name, words):
    # builders.any_knobs takes **knobs: any name reaches the column rules.
    text = USER.replace("rescaled_linear_model", "any_knobs") + f"[grid.model]\n{name} = [1]\n"
    [(field, message)] = problems(text)
    assert field == f"grid.model.{name}" and words in message


def test_validate_and_run_exit_2_naming_the_knob_and_write_nothing(tmp_path):
    cases = {"unknown.toml": (USER + "[grid.model]\nwidth = [8]\n", "grid.model.width"),
             "nested.toml": (USER + "[grid.model]\ndepth = [[1]]\n", "grid.model.depth"),
             # a name the builder takes but that a report column has already
             "column.toml": (USER.replace("rescaled_linear_model", "any_knobs") + "[grid.model]\nstatus = [1]\n",
                             "grid.model.status")}
    for name, (text, field) in cases.items():
        (tmp_path / name).write_text(text)
        for command in (["validate", name], ["run", name, "--results", "out"]):
            proc = subprocess.run([sys.executable, "-m", "sweep.cli", *command], cwd=tmp_path, capture_output=True,
                                  text=True, env=_env())
            assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
            assert f"{name}: {field}:" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def _env() -> dict:
    import os

    # The worktree's package first, then the tests' builders (as a user's module beside the study).
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def test_a_study_without_knobs_keeps_its_ids_and_digest():
    s = parse(CATALOG + "[grid]\nlearning_rate = [0.01, 0.1]\n", "m.toml")
    for c in s.configs():
        # the id before knobs, momentum and nesterov existed
        old = {k: v for k, v in asdict(c).items() if k != "model" and k not in AXIS_DEFAULTS}
        assert c.config_id == hashlib.sha1(json.dumps(old, sort_keys=True, default=repr).encode()).hexdigest()[:12]
    with_knob = parse(CATALOG + "[grid]\nlearning_rate = [0.01, 0.1]\n[grid.model]\ndepth = [2]\n", "m.toml")
    # Naming a knob, even at its default, is another plan: its runs carry the knob's column.
    assert with_knob.plan_digest() != s.plan_digest()
    assert {c.config_id for c in with_knob.configs()}.isdisjoint(c.config_id for c in s.configs())


def test_knobs_sorted_so_the_plan_does_not_depend_on_the_files_order():
    a = parse(CATALOG + "[grid.model]\nkernel_initializer = ['he_normal', 'glorot_uniform']\ndepth = [1, 3]\n", "m")
    b = parse(CATALOG + "[grid.model]\ndepth = [1, 3]\nkernel_initializer = ['he_normal', 'glorot_uniform']\n", "m")
    assert a.axes[-3:] == ("depth", "kernel_initializer", "learning_rate")
    assert [r.key for r in a.plan()] == [r.key for r in b.plan()] and a.plan_digest() == b.plan_digest()


def test_every_catalog_build_receives_the_knobs():
    s = parse(CATALOG + "[grid.model]\ndepth = [1, 4]\nkernel_initializer = ['he_normal']\n", "m.toml")
    for config in s.configs():
        model = problem(s, config, seed=0).model
        assert len(model.layers) == config.knobs["depth"] + 1
        assert {type(layer.kernel_initializer).__name__ for layer in model.layers} == {"HeNormal"}
    # unnamed knobs keep the documents' model
    plain = parse(CATALOG, "m.toml")
    assert [layer.units for layer in problem(plain, plain.configs()[0], 0).model.layers] == [128, 64, 1]
    assert set(EXAMPLES["exploding_gradients"].knobs) == {"depth", "kernel_initializer", "l1", "l2"}


def test_runs_with_knobs_train_on_the_population_engine():
    """Each knob value builds its own model (here 3 hidden layers instead of 2), trained like any."""
    s = parse(CATALOG + "[grid.model]\ndepth = [3]\n", "m.toml")
    PopulationEngine.check(s, s.plan()[0])
    assert session.engine_for(s, None) == "population" and session.engine_line(s, None) == "engine: population"
    arch, _ = initial_model(s, s.plan()[0].config, 0)
    assert len(arch.shapes) == 4


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted study, run on the population engine: depth 0, 1, 2 over a learning-rate grid of
    factors of 2 that puts the depth-0 threshold 2/λ_max midway (in log) between two values."""
    x, _ = rescaled_linear_data(0)
    lam = np.linalg.eigvalsh(2 / len(x) * x.astype(float).T @ x.astype(float)).max()
    lrs = [float(2 / lam / 2 ** 0.5 * 2.0 ** k) for k in range(-3, 2)]
    text = textwrap.dedent(f"""
        [study]
        name = "planted"
        example = "builders:rescaled_linear_model"
        epochs = 20
        seeds = [0]
        [grid]
        learning_rate = {lrs}
        optimizer = ["sgd"]
        batch_size = [{len(x)}]
        [grid.model]
        depth = [0, 1, 2]
        """)
    results = tmp_path_factory.mktemp("results")
    (results / "planted.toml").write_text(text)  # the study file the results keep (`sweep repro` reads it)
    study = load(results / "planted.toml")
    session.run(study, results, pool=LocalPool(study, session.engine_for(study, None)))
    return results / "planted", lrs


def test_the_planted_depth_effect_is_measured_end_to_end(planted):
    out, lrs = planted
    trials = sweep.load_trials(out)
    assert trials.depth.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and set(trials.engine) == {"population"}
    boundary = sweep.load_boundary(out).sort_values("depth")
    # 2/λ_max lies between lrs[3] and lrs[4] at depth 0; each layer of depth halves it: one grid step
    assert boundary.lr_unstable_min.tolist() == [lrs[4], lrs[3], lrs[2]]
    assert boundary.lr_stable_max.tolist() == [lrs[3], lrs[2], lrs[1]]
    m = sweep.load_map(out)
    assert m.groupby("depth").p_stable.sum().tolist() == [4.0, 3.0, 2.0]
    effects = load_effects(out).set_index("value")
    assert effects.axis.unique().tolist() == ["depth"] and set(effects.reference) == {"0"}
    assert effects.edge_shift.to_dict() == {"1": 0.5, "2": 0.25}
    conditions = load_conditions(out)
    assert "depth_in" in conditions.columns
    nan = conditions[conditions.status == "nan"].iloc[0]
    assert list(nan.depth_in) == ["2"] and nan.learning_rate_min == lrs[4]


def test_knob_columns_read_without_quoting_in_duckdb(planted):
    duckdb = pytest.importorskip("duckdb")
    out, lrs = planted
    rows = duckdb.sql(f"""
        SELECT depth, lr_unstable_min FROM read_parquet('{out}/boundary.parquet')
        WHERE depth >= 1 ORDER BY depth""").fetchall()
    assert rows == [(1, lrs[3]), (2, lrs[2])]
    per_depth = duckdb.sql(f"""
        SELECT depth, count(*) FILTER (WHERE status = 'stable') AS stable
        FROM read_parquet('{out}/trials/*.parquet') GROUP BY depth ORDER BY depth""").fetchall()
    assert per_depth == [(0, 4), (1, 3), (2, 2)]


def test_a_knob_run_reproduces_with_its_knob(planted):
    out, _ = planted
    trials = sweep.load_trials(out)
    run = trials[(trials.depth == 2)].iloc[0]
    text = script(out, int(run.trial))
    assert "rescaled_linear_model(activation='relu', seed=0, depth=2)" in text
    # a row back to its configuration, the knob's type as the study file wrote it
    config = config_from_dict(run.to_dict(), ["depth"])
    assert config.model == (("depth", 2),) and type(config.knobs["depth"]) is int
    assert config.config_id == run.config_id


def test_the_map_table_and_runs_list_show_the_knob(planted):
    from rich.console import Console

    from sweep.results.tables import map_table, runs_table

    out, lrs = planted
    console = Console(width=200, record=True)
    console.print(map_table(sweep.load_map(out), sweep.load_boundary(out), lrs, "planted"))
    console.print(runs_table(sweep.load_trials(out), "planted"))
    text = console.export_text()
    assert text.count("depth") == 2  # a column of each table: the only setting axis that varies
    assert "++++^" in text and "+++^^" in text and "++^^N" in text  # each depth's strip, one step apart


def test_tensorboard_takes_the_knob_as_a_hyperparameter(planted, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_multiplexer
    from tensorboard.plugins.hparams import metadata

    from sweep.plots.tensorboard import Board

    out, _ = planted
    board = Board(out, tmp_path / "logs")
    assert board.sync() == 15
    assert all(",depth=" in p.name for p in (tmp_path / "logs").iterdir() if p.is_dir())
    m = event_multiplexer.EventMultiplexer()
    m.AddRunsFromDirectory(str(tmp_path / "logs"))
    m.Reload()
    content = m.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content["."][metadata.EXPERIMENT_TAG])
    depth = next(h for h in experiment.hparam_infos if h.name == "depth")
    assert [v.number_value for v in depth.domain_discrete.values] == [0.0, 1.0, 2.0] and depth.differs


def test_lrfind_keeps_one_test_per_knob_setting_and_joins_it_to_the_boundary(planted):
    from sweep.probes import lrfind_study
    from sweep.results import maps, rangetest

    out, _ = planted
    study = load(out.parent / "planted.toml")
    lrfind_study.run_study(study, out.parent)
    tests = rangetest.load_lrfind(out)
    assert sorted(tests.depth) == [0, 1, 2] and tests.suggestion.notna().all()
    boundary = maps.load_boundary(out).merge(tests[["depth", "suggestion"]], on="depth")
    assert (boundary.lr_rangetest_suggestion == boundary.suggestion).all()
    comparison = lrfind_study.compare(out)
    assert comparison.knobs == ("depth",) and lrfind_study.varying(comparison.rows, comparison.knobs) == ["depth"]


def test_tpe_asks_optuna_for_knob_values():
    import optuna

    from sweep.driver.optuna_study import distributions
    from sweep.driver.samplers.tpe import TPESampler

    s = parse(CATALOG + 'sampler = "tpe"\nn_trials = 3\nseeds = [0]\n[grid]\nlearning_rate = [0.01, 0.1]\n'
              "[grid.model]\ndepth = [1, 2, 3]\nkernel_initializer = ['he_normal', 'zeros']\n", "m.toml")
    assert set(distributions(s)) == {"depth", "kernel_initializer", "learning_rate"}
    ostudy = optuna.create_study()
    runs = TPESampler(ostudy, seed=0).propose(s, {})
    [trial] = ostudy.get_trials()
    assert runs[0].config.knobs == {k: trial.params[k] for k in ("depth", "kernel_initializer")}
