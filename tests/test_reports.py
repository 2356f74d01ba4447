"""Parquet reports: the columns of docs/design.md and dtypes, atomic parts, orphan tidying, refusal of bad parts."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import sweep
from sweep.results import reports
from sweep.results.rejudge import rejudge
from sweep.engines import Outcome
from sweep.spec import parse

DESIGN_TRIAL_COLUMNS = """study, trial, config_id, seed, example, engine, learning_rate, clipnorm,
global_clipnorm, clipvalue, batch_size, activation, scaler, optimizer, loss, epochs, status,
first_nonfinite_step, initial_loss, final_loss, best_loss, max_loss_ratio, final_loss_ratio,
loss_spikes, grad_norm_p50, grad_norm_p90, grad_norm_max, clip_fraction, final_accuracy,
wall_seconds, worker, node, started_at, tf_version, keras_version, sweep_version, sharpness_init,
sharpness_early, sharpness_max, sharpness_final, precond_sharpness_init, precond_sharpness_early,
precond_sharpness_max, precond_sharpness_final"""
DESIGN_CURVE_COLUMNS = ("study, trial, seed, epoch, loss, accuracy, grad_norm_max, learning_rate, sharpness, "
                        "precond_sharpness")

STUDY = parse("""
[study]
name = "rt"
example = "exploding_gradients"
epochs = 3
seeds = [0]
[grid]
learning_rate = [0.001, 1.0]
clipnorm = ["none", 1.0]
""", "rt.toml")


def outcome(losses, nonfinite=None) -> Outcome:
    return Outcome(initial_loss=1.0, initial_accuracy=0.5, epoch_loss=list(losses),
                   epoch_accuracy=[0.6] * len(losses), epoch_grad_norm_max=[2.0] * len(losses),
                   epoch_learning_rate=[0.001] * len(losses),
                   grad_norms=np.array([1.0, 2.0, 3.0, 4.0]), clipped_steps=1,
                   first_nonfinite_step=nonfinite, wall_seconds=0.5, engine="keras")


def batch():
    plan = STUDY.plan()
    made = [reports.rows_for(STUDY, plan[0], outcome([0.8, 0.6, 0.4])),
            reports.rows_for(STUDY, plan[1], outcome([0.8, math.nan], nonfinite=5)),
            reports.rows_for(STUDY, plan[2], outcome([0.99, 0.98, 0.97])),
            reports.rows_for(STUDY, plan[3], RuntimeError("boom"))]
    return [r for r, _ in made], [c for _, cs in made for c in cs]


def test_round_trip_columns_and_dtypes(tmp_path):
    rows, curves = batch()
    reports.write_batch(tmp_path / "rt", rows, curves)
    t = sweep.load_trials(tmp_path / "rt")
    want = [c.strip() for c in DESIGN_TRIAL_COLUMNS.split(",")]
    assert set(want) <= set(t.columns)
    assert len(t) == 4
    for col in ("activation", "scaler", "optimizer", "loss", "schedule", "status", "example", "engine"):
        assert isinstance(t[col].dtype, pd.CategoricalDtype), col
    assert list(t["status"]) == ["stable", "nan", "stalled", "error"]
    assert t["clipnorm"].isna().tolist() == [True, True, False, False]  # absent clipping is null
    assert t["first_nonfinite_step"].dtype == "Int64"
    assert t["first_nonfinite_step"].tolist()[:3] == [pd.NA, 5, pd.NA]
    assert t["learning_rate"].dtype == "float64" and t["batch_size"].dtype == "int64"
    assert str(t["started_at"].dtype).startswith("datetime64") and str(t["started_at"].dt.tz) == "UTC"
    assert t.loc[3, "message"] == "RuntimeError: boom"
    assert t.loc[0, "grad_norm_p50"] == 2.5 and t.loc[0, "clip_fraction"] == 0.25
    assert t.loc[0, "max_loss_ratio"] == 0.8 and t.loc[0, "final_loss_ratio"] == 0.4

    c = sweep.load_curves(tmp_path / "rt")
    assert set(c.columns) == {x.strip() for x in DESIGN_CURVE_COLUMNS.split(",")}
    # epoch 0 is the initialised model, then one row per trained epoch; the error run has none
    assert c.groupby("trial").epoch.max().to_dict() == {0: 3, 1: 2, 2: 3}
    assert c["loss"].dtype == "float64"
    assert c[c.trial == 0].loss.tolist() == [1.0, 0.8, 0.6, 0.4]
    assert math.isnan(c[c.trial == 1].loss.iloc[-1])


def test_schema_version_in_every_file(tmp_path):
    rows, curves = batch()
    reports.write_batch(tmp_path / "rt", rows, curves)
    for part in (tmp_path / "rt").rglob("*.parquet"):
        assert pq.read_schema(part).metadata[b"schema_version"] == reports.SCHEMA_VERSION.encode()


def test_categories_are_fixed_across_parts(tmp_path):
    rows, curves = batch()
    reports.write_batch(tmp_path / "rt", rows[:1], curves[:1])
    reports.write_batch(tmp_path / "rt", rows[1:], curves[1:])
    t = sweep.load_trials(tmp_path / "rt")
    assert list(t["status"].cat.categories) == list(sweep.verdict.STATUSES)


def test_no_temporary_files_remain(tmp_path):
    rows, curves = batch()
    reports.write_batch(tmp_path / "rt", rows, curves)
    assert not [p for p in (tmp_path / "rt").rglob("*") if p.name.startswith(".")]


def test_tidy_removes_orphan_curves_and_temporaries(tmp_path):
    rows, curves = batch()
    stem = reports.write_batch(tmp_path / "rt", rows, curves)
    # a crash between the curves part and its trials part leaves an orphan
    orphan = tmp_path / "rt" / "curves" / "part-orphan.parquet"
    orphan.write_bytes((tmp_path / "rt" / "curves" / f"{stem}.parquet").read_bytes())
    (tmp_path / "rt" / "trials" / ".part-x.parquet.0123abcd.tmp").write_bytes(b"half")
    with pytest.raises(reports.ResultsError, match="without a trials record"):
        sweep.load_curves(tmp_path / "rt")
    removed = reports.tidy(tmp_path / "rt")
    assert len(removed) == 2 and not orphan.exists()
    assert len(sweep.load_curves(tmp_path / "rt")) == 11


def test_foreign_or_truncated_part_is_refused_by_name(tmp_path):
    rows, curves = batch()
    stem = reports.write_batch(tmp_path / "rt", rows, curves)
    part = tmp_path / "rt" / "trials" / f"{stem}.parquet"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(reports.ResultsError, match=part.name):
        sweep.load_trials(tmp_path / "rt")


def test_not_a_study_dir(tmp_path):
    with pytest.raises(reports.ResultsError, match="not a study results directory"):
        sweep.load_trials(tmp_path)


@pytest.mark.parametrize("intruder", ["notes.txt", "trials.parquet", "part-x.csv", ".part-x.parquet",
                                      ".hidden.parquet", ".part-x.parquet.tmp"])
def test_foreign_file_is_refused_by_name(tmp_path, intruder):
    rows, curves = batch()
    reports.write_batch(tmp_path / "rt", rows, curves)
    (tmp_path / "rt" / "trials" / intruder).write_text("not ours")
    with pytest.raises(reports.ResultsError, match=intruder):
        sweep.load_trials(tmp_path / "rt")


def test_part_of_another_schema_version_is_refused(tmp_path):
    rows, curves = batch()
    stem = reports.write_batch(tmp_path / "rt", rows, curves)
    part = tmp_path / "rt" / "trials" / f"{stem}.parquet"
    table = pq.read_table(part).replace_schema_metadata({"schema_version": "0"})
    pq.write_table(table, part)
    with pytest.raises(reports.ResultsError, match="schema_version 0"):
        sweep.load_trials(tmp_path / "rt")


def test_a_schema_1_part_loads_with_the_curvature_columns_null(tmp_path):
    """Parts written before the curvature telemetry (schema 1, without its columns) still load:
    those columns read as null; every other column is still required. Their verdicts predate the
    baseline (schema 3): the trials are refused until judged again (`rejudge`), the curves not."""
    rows, curves = batch()
    for r in rows:
        r.update(sharpness_init=1.5, precond_sharpness_init=40.0)
    stem = reports.write_batch(tmp_path / "rt", rows, curves)
    for sub, schema in (("trials", reports.TRIAL_COLUMNS), ("curves", reports.CURVE_COLUMNS)):
        part = tmp_path / "rt" / sub / f"{stem}.parquet"
        old = [f.name for f in schema if (f.metadata or {}).get(b"since") is None]
        pq.write_table(pq.read_table(part, columns=old).replace_schema_metadata({"schema_version": "1"}), part)
    with pytest.raises(reports.ResultsError, match="schema_version 1.*judges every run again"):
        sweep.load_trials(tmp_path / "rt")
    rejudge(tmp_path / "rt", STUDY)
    t, c = sweep.load_trials(tmp_path / "rt"), sweep.load_curves(tmp_path / "rt")
    assert t["baseline_loss"].notna().sum() == 3  # the three trained runs; the error row has none
    assert t["sharpness_init"].isna().all() and t["precond_sharpness_final"].isna().all()
    assert c["sharpness"].isna().all() and len(c) == len(curves)
    part = tmp_path / "rt" / "trials" / f"{stem}.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["final_loss"]), part)
    with pytest.raises(reports.ResultsError, match="missing columns.*final_loss"):
        sweep.load_trials(tmp_path / "rt")


def test_curvature_by_epoch_becomes_curve_and_trial_columns(tmp_path):
    o = outcome([0.8, 0.6, 0.4])
    o.sharpness, o.precond_sharpness = {0: 1.0, 2: 3.0}, {0: 50.0, 2: math.nan}
    row, curves = reports.rows_for(STUDY, STUDY.plan()[0], o)
    assert [c["sharpness"] for c in curves] == [1.0, None, 3.0, None]
    assert [c["precond_sharpness"] for c in curves] == [50.0, None, None, None]  # not finite: null
    assert (row["sharpness_init"], row["sharpness_early"], row["sharpness_max"], row["sharpness_final"]) == \
        (1.0, 3.0, 3.0, 3.0)
    assert (row["precond_sharpness_init"], row["precond_sharpness_max"], row["precond_sharpness_final"]) == \
        (50.0, 50.0, None)
    reports.write_batch(tmp_path / "rt", [row], curves)
    assert sweep.load_curves(tmp_path / "rt")["sharpness"].tolist()[2] == 3.0
