"""`stalled` against the best constant prediction: the baseline loss, the rule, and studies judged
by the rule before it.

A run that starts worse than a constant and ends at one learned nothing; under the rule of
schema 2 (final loss against l0 alone) it passed as stable. These tests fail on that rule."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from sweep.driver import session as driver
from sweep.driver.pool import LocalPool
from sweep.engines import baseline
from sweep.engines.runtime import import_tensorflow
from sweep.results import reports
from sweep.results.rejudge import outdated
from sweep.spec import parse
from sweep.verdict import judge


def _study(tmp_path, builder: str, epochs: int, lr: float, batch: int):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\nexample = "builders:{builder}"\nepochs = {epochs}\nseeds = [0]\n'
                    f'[grid]\nlearning_rate = [{lr}]\nbatch_size = [{batch}]\nactivation = ["tanh"]\n')
    return parse(path.read_text(), str(path))


def _run(tmp_path, study):
    driver.run(study, tmp_path / "results", pool=LocalPool(study, "keras"))
    return reports.load_trials(tmp_path / "results" / study.name).iloc[0]


@pytest.fixture(scope="module")
def tf():
    return import_tensorflow()


@pytest.mark.parametrize("loss, activation, y", [
    ("binary_crossentropy", "sigmoid", (np.random.default_rng(0).random((500, 1)) < 0.3).astype("float32")),
    ("binary_crossentropy", "sigmoid", np.random.default_rng(1).random((500, 1)).astype("float32")),  # soft targets
    ("categorical_crossentropy", "softmax", np.eye(4, dtype="float32")[np.random.default_rng(2).integers(0, 4, 500)]),
    ("mse", None, np.random.default_rng(3).normal(2.0, 3.0, (500, 2)).astype("float32")),
])
def test_numeric_baseline_equals_the_closed_form(tf, loss, activation, y):
    import keras

    fn = keras.losses.get(loss)
    assert baseline.numeric(fn, y, activation) == pytest.approx(baseline.closed_form(loss, y), rel=1e-5)


def test_numeric_baseline_of_the_hand_written_loss_is_the_binary_one(tf):
    from sweep.catalog import handwritten_cross_entropy

    y = (np.random.default_rng(4).random((300, 1)) < 0.6).astype("float32")
    assert baseline.numeric(handwritten_cross_entropy, y, "sigmoid") == pytest.approx(
        baseline.closed_form("binary_crossentropy", y), rel=1e-5)


def test_a_model_that_learns_only_the_mean_from_a_bad_start_is_stalled(tmp_path, tf):
    row = _run(tmp_path, _study(tmp_path, "mean_only_model", epochs=15, lr=0.05, batch=32))
    assert row["initial_loss"] > 10 * row["baseline_loss"]            # a start far worse than a constant
    assert row["baseline_loss"] == pytest.approx(0.16, rel=0.15)      # the noise's variance
    assert row["final_baseline_ratio"] > 0.95 and row["status"] == "stalled"
    # The rule of schema 2 took it for a run that learned.
    assert row["final_loss"] < 0.95 * row["initial_loss"]


def test_a_net_that_memorises_random_labels_below_the_baseline_is_stable(tmp_path, tf):
    row = _run(tmp_path, _study(tmp_path, "memorizer_model", epochs=30, lr=0.01, batch=16))
    assert row["final_baseline_ratio"] < 0.9 and row["status"] == "stable"


def test_judge_uses_the_lower_of_l0_and_the_baseline():
    assert judge(1.0, [0.5], None, baseline_loss=0.52) == "stalled"
    assert judge(1.0, [0.5], None, baseline_loss=0.53) == "stable"
    assert judge(0.4, [0.39], None, baseline_loss=0.7) == "stalled"   # l0 below the baseline: l0 decides
    assert judge(1.0, [0.5], None, baseline_loss=float("nan")) == "stable"
    # diverged still compares with l0: a loss that ends at 10 x the baseline but below l0 is not diverged
    assert judge(5.0, [4.0], None, baseline_loss=0.1) == "stalled"


def _as_schema_2(study_dir, old_status):
    """Rewrite a study's trials as the previous version wrote them: no baseline columns, the old
    verdict, schema_version 2."""
    for part in (study_dir / "trials").glob("part-*.parquet"):
        table = pq.read_table(part).drop_columns(["baseline_loss", "final_baseline_ratio"])
        table = table.set_column(table.schema.get_field_index("status"), "status",
                                 [[old_status] * table.num_rows])
        pq.write_table(table.replace_schema_metadata({"schema_version": "2"}), part)


def test_a_study_judged_by_the_old_rule_is_refused_then_judged_again_on_resume(tmp_path, tf):
    study = _study(tmp_path, "mean_only_model", epochs=15, lr=0.05, batch=32)
    out = tmp_path / "results" / "s"
    _run(tmp_path, study)
    _as_schema_2(out, "stable")

    with pytest.raises(reports.ResultsError, match=r"judged by the rules of schema_version 2.*sweep run"):
        reports.load_trials(out)
    assert outdated(out)

    summary = driver.run(study, tmp_path / "results", pool=LocalPool(study, "keras"))
    assert summary.ran == 0                                          # judged again, not trained again
    assert not outdated(out)
    row = reports.load_trials(out).iloc[0]
    assert row["status"] == "stalled" and row["final_baseline_ratio"] > 0.95
    meta = pq.read_schema(next((out / "trials").glob("part-*.parquet"))).metadata
    assert meta[b"schema_version"] == reports.SCHEMA_VERSION.encode()
    # The Optuna copy was taken again from the re-judged record.
    statuses = [json.loads(line) for line in (out / "study.journal").read_text().splitlines()]
    assert "stalled" in json.dumps(statuses) and '"stable"' not in json.dumps(statuses)
