"""Where each failure happens (conditions.parquet): rules found on small planted trial tables
whose answer is known, their honesty, determinism, the file written and checked on load."""

import doctest
import itertools

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sweep.answers import conditions as cond
from sweep.results import reports
from sweep.answers.conditions import CONDITION_COLUMNS, CONDITIONS_FILE, Rule, describe, find_rule, load_conditions
from sweep.results.reports import ResultsError

CORNER = (("learning_rate", "range", (1.0, None)), ("optimizer", "in", ("sgd",)))


def grid_trials(**axes) -> pd.DataFrame:
    """Every combination of the given axis values, two seeds each, all stable."""
    axes = {"learning_rate": (0.01, 0.1, 1.0, 3.0), "optimizer": ("adam", "sgd"),
            "clipnorm": (None, 1.0), "activation": ("relu", "tanh"), "batch_size": (32, 128), **axes}
    rows = [dict(zip(axes, values), seed=seed)
            for values in itertools.product(*axes.values()) for seed in (0, 1)]
    df = pd.DataFrame(rows)
    df["study"], df["example"], df["status"] = "planted", "exploding_gradients", "stable"
    return df


def planted() -> pd.DataFrame:
    """nan exactly where learning rate >= 1 with sgd; stalled at the smallest learning rate."""
    df = grid_trials()
    df.loc[(df.learning_rate >= 1) & (df.optimizer == "sgd"), "status"] = "nan"
    df.loc[df.learning_rate == 0.01, "status"] = "stalled"
    return df


def test_module_docstring_examples_run():
    assert doctest.testmod(cond).failed == 0


def test_a_planted_corner_is_found_exactly():
    rows = cond.conditions(planted()).set_index("status")
    assert list(rows.index) == ["nan", "stalled"]
    nan = rows.loc["nan"]
    assert nan.conditions == "learning_rate >= 1 and optimizer in {sgd}"
    assert (nan.precision, nan.coverage, nan.n_runs, nan.n_matched, nan.n_terms) == (1.0, 1.0, 32, 32, 2)
    assert (nan.learning_rate_min, nan.optimizer_in.tolist()) == (1.0, ["sgd"])
    assert np.isnan(nan.learning_rate_max) and nan.clipnorm_in is None and nan.activation_in is None
    assert rows.loc["stalled"].conditions == "learning_rate <= 0.01"
    assert cond.rule_of(nan).terms == CORNER


def test_the_corner_rule_fails_when_the_corner_is_removed():
    """The same number of nan runs, at random places: no rule may claim them precisely."""
    df = grid_trials()
    rng = np.random.default_rng(0)
    df.loc[rng.choice(len(df), size=32, replace=False), "status"] = "nan"
    rule = find_rule(df, df.status == "nan")
    assert rule.terms != CORNER
    assert rule.precision < 0.9 or rule.coverage < 0.5


def test_a_status_spread_everywhere_gets_a_short_honest_rule():
    df = grid_trials(learning_rate=(0.001, 0.01, 0.1, 1.0, 3.0, 10.0))
    rng = np.random.default_rng(1)
    df.loc[rng.random(len(df)) < 0.3, "status"] = "stalled"
    target = (df.status == "stalled").to_numpy()
    rule = find_rule(df, target)
    assert len(rule.terms) <= 1
    matched = rule.mask(df)
    assert rule.n_matched == matched.sum() and rule.n_target == target.sum()
    assert rule.precision == pytest.approx(target[matched].mean())
    assert rule.coverage == pytest.approx(target[matched].sum() / target.sum())
    assert rule.precision < 0.5


def test_same_rule_for_the_same_trials_in_any_row_order():
    df = planted()
    df.loc[(df.activation == "tanh") & (df.batch_size == 128) & (df.learning_rate == 0.1), "status"] = "unstable"
    first = cond.conditions(df)
    again = cond.conditions(df)
    shuffled = cond.conditions(df.sample(frac=1, random_state=3))
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, shuffled)
    assert first.set_index("status").loc["unstable", "conditions"] == (
        "learning_rate = 0.1 and activation in {tanh} and batch_size in {128}")


def test_at_most_four_terms_and_max_terms_is_kept():
    df = grid_trials(scaler=("none", "standard"))
    corner = ((df.learning_rate >= 1) & (df.optimizer == "sgd") & (df.activation == "tanh")
              & (df.batch_size == 32) & (df.scaler == "none") & df.clipnorm.isna())
    rule = find_rule(df, corner)
    # two of the six planted axes (both with two values) stay free: a quarter of the matched runs
    assert len(rule.terms) == 4 and rule.coverage == 1.0 and rule.precision == 0.25
    short = find_rule(df, corner, max_terms=2)
    assert len(short.terms) <= 2
    assert find_rule(df, corner, max_terms=0).text() == "everywhere"


def test_an_axis_with_many_values_offers_subsets_by_share():
    acts = ("relu", "tanh", "sigmoid", "gelu", "elu", "selu", "softplus", "swish")
    df = grid_trials(activation=acts)
    df.loc[df.activation.isin(["sigmoid", "elu", "swish"]), "status"] = "diverged"
    rule = find_rule(df, df.status == "diverged")
    assert rule.text() == "activation in {sigmoid, elu, swish}"
    assert (rule.precision, rule.coverage) == (1.0, 1.0)


def test_error_and_timeout_runs_leave_the_training_statuses_denominators():
    df = planted()
    corner = (df.learning_rate >= 1) & (df.optimizer == "sgd")
    df.loc[corner & (df.seed == 0), "status"] = "error"  # half the corner crashed
    df.loc[(df.learning_rate == 0.1) & (df.seed == 1) & (df.batch_size == 32), "status"] = "timeout"
    rows = cond.conditions(df).set_index("status")
    assert list(rows.index) == ["nan", "stalled", "error", "timeout"]
    nan = rows.loc["nan"]
    assert (nan.conditions, nan.precision, nan.n_runs, nan.n_matched) == (
        "learning_rate >= 1 and optimizer in {sgd}", 1.0, 16, 16)
    assert nan.n_considered == len(df) - 16 - 8
    error = rows.loc["error"]
    assert error.n_considered == len(df) and error.n_runs == 16 and error.coverage == 1.0


def test_describe_is_one_line_and_never_rounds_a_miss_to_100():
    rule = Rule((("clipnorm", "in", ("none",)),), 0.996, 0.004, 12_345, 50)
    assert describe(("diverged", rule)) == (
        "diverged where clipnorm in {none}: precision 99 %, covers 1 % of 12,345 diverged runs")
    assert describe(("stalled", Rule((), 0.4, 1.0, 40, 100))) == (
        "stalled everywhere: precision 40 %, covers 100 % of 40 stalled runs")
    text = Rule((("learning_rate", "range", (0.01, 0.3)),), 1, 1, 1, 1).text()
    assert text == "0.01 <= learning_rate <= 0.3"


def test_find_rule_refuses_a_target_that_never_holds_or_does_not_fit():
    df = grid_trials()
    with pytest.raises(ValueError, match="nowhere"):
        find_rule(df, np.zeros(len(df), bool))
    with pytest.raises(ValueError, match="one per row"):
        find_rule(df, np.ones(3, bool))


def test_write_and_load_round_trip(tmp_path):
    df = planted()
    written = cond.write(tmp_path, df)
    loaded = load_conditions(tmp_path)
    pd.testing.assert_frame_equal(written, loaded)
    pd.testing.assert_frame_equal(loaded, cond.conditions(df))
    meta = pq.read_schema(tmp_path / CONDITIONS_FILE).metadata
    assert meta[b"schema_version"] == reports.SCHEMA_VERSION.encode()
    assert list(loaded.columns) == CONDITION_COLUMNS.names
    row = loaded.set_index("status").loc["nan"]
    assert describe(loaded.iloc[0]) == (
        "nan where learning_rate >= 1 and optimizer in {sgd}: precision 100 %, covers 100 % of 32 nan runs")
    assert cond.rule_of(row).mask(df).sum() == 32
    # queryable with pandas: where does sgd appear in a rule?
    assert loaded[loaded.optimizer_in.map(lambda v: v is not None and "sgd" in v)].status.tolist() == ["nan"]


def test_no_failures_no_rows_and_a_missing_or_foreign_file_is_refused(tmp_path):
    assert cond.conditions(grid_trials()).empty
    assert cond.write(tmp_path, pd.DataFrame()).empty
    assert load_conditions(tmp_path).empty
    with pytest.raises(ResultsError, match="no such file"):
        load_conditions(tmp_path / "elsewhere")
    table = pq.read_table(tmp_path / CONDITIONS_FILE).replace_schema_metadata({"schema_version": "0"})
    pq.write_table(table, tmp_path / CONDITIONS_FILE)
    with pytest.raises(ResultsError, match="schema_version 0"):
        load_conditions(tmp_path)
