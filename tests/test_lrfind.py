"""`sweep lrfind`: the range test's schedule, smoothing, stop and suggestion rules against hand
computations, then the command end to end on a tiny study (trials from a scripted engine, the
range test on real Keras), the boundary column, and bad input."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scripted_engine import ScriptedEngine
from sweep.probes import lrfind, lrfind_study
from sweep.results import maps, rangetest, reports
from sweep.driver import session as driver
from sweep.cli import main
from sweep.probes.lrfind import RULES, Tracker, schedule, suggest, trace
from sweep.driver.pool import LocalPool
from sweep.spec import parse

FASTAI, LIGHTNING = RULES["fastai"], RULES["lightning"]


def test_fastai_schedule_is_start_times_ratio_to_the_i_over_n():
    lrs = schedule(FASTAI)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[50] == pytest.approx(1e-3)  # halfway in the exponent: 1e-7 * 1e8 ** 0.5
    assert lrs[99] == pytest.approx(10 ** 0.92)  # never reaches end_lr: the last batch is i = 99
    assert np.allclose(lrs[1:] / lrs[:-1], 1e8 ** 0.01)


def test_lightning_schedule_skips_the_first_exponent_and_reaches_max_lr():
    lrs = schedule(LIGHTNING)
    assert lrs[0] == pytest.approx(1e-8)
    assert lrs[1] == pytest.approx(1e-8 * 1e8 ** 0.02)
    assert lrs[99] == pytest.approx(1.0)


def test_smoothing_bias_correction_of_each_tool():
    fastai, lightning = Tracker(FASTAI), Tracker(LIGHTNING)
    for _ in range(3):
        fastai.add(2.0)
        lightning.add(2.0)
    assert fastai.smoothed == pytest.approx([2.0, 2.0, 2.0])  # count = batches: exact for a constant
    # Lightning divides by 1 - beta ** (global_step + 1), global_step already counting the batch.
    expected = [2.0 * (1 - 0.98 ** n) / (1 - 0.98 ** (n + 1)) for n in (1, 2, 3)]
    assert lightning.smoothed == pytest.approx(expected)


def _by_hand(losses, factor=4.0, beta=0.98):
    """fastai's stop rule written out: the 0-based batch after which it stops, else None."""
    avg, best = 0.0, math.inf
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        best = min(best, s)
        if s > factor * best:
            return i
    return None


def test_divergence_stop_where_the_smoothed_loss_passes_four_times_its_best():
    # Loss 1 up to lr 1e-3, then growing as lr**2: it blows up within the schedule.
    def loss_at(lr):
        return 1.0 if lr < 1e-3 else (lr / 1e-3) ** 2

    curve = trace(FASTAI, loss_at)
    expected = _by_hand([loss_at(lr) for lr in schedule(FASTAI)])
    assert expected is not None and curve.stopped_on_divergence
    assert curve.steps == expected + 1 and len(curve.lrs) == curve.steps
    flat = trace(FASTAI, lambda lr: 1.0)
    assert not flat.stopped_on_divergence and flat.steps == 100


def test_a_nan_stops_training_and_the_curve_records_nan_to_the_end():
    curve = trace(FASTAI, lambda lr: math.nan if lr > 1e-2 else 1.0)
    first = int(np.argmax(schedule(FASTAI) > 1e-2))
    assert curve.steps == first + 1 and curve.first_nonfinite_step == first
    assert not curve.stopped_on_divergence  # NaN > 4 * best is false: fastai's rule never fires
    assert len(curve.smoothed) == 100 and np.isnan(curve.smoothed[first:]).all()
    assert curve.suggestion is not None and curve.suggestion < 1e-2


def test_valley_on_a_v_shaped_curve():
    # Falling for 60 points, rising after: fastai drops the first 10 and last 5 points, so the
    # valley is points 10..59 of the curve, 50 long, ending at 49 of the cut curve; fastai puts
    # its start at 49 - 50 = -1 and picks -1 + int(50/3) + int(50/3/2) = 23, i.e. point 33.
    losses = np.r_[np.linspace(2.0, 1.0, 60), np.linspace(1.1, 3.0, 40)]
    assert suggest(FASTAI, schedule(FASTAI), losses) == 33
    # A NaN cuts the curve there (fastai drops from the first NaN).
    cut = losses.copy()
    cut[40:] = math.nan
    assert suggest(FASTAI, schedule(FASTAI), cut) == 10 + (-1 + 10 + 5)  # run of 30 ending at 29


def test_lightning_steepest_is_in_the_learning_rate_not_its_log():
    lrs = schedule(LIGHTNING)
    # Linear in log(lr): d loss / d lr = -1 / lr, steepest at the smallest lr kept (skip_begin=10).
    losses = 5.0 - np.log10(lrs)
    assert suggest(LIGHTNING, lrs, losses) == 10
    # On a flat curve, a cliff between points 60 and 61.
    cliff = 5.0 - 100.0 * (np.arange(100) > 60)
    assert suggest(LIGHTNING, lrs, cliff) in (60, 61)
    assert lrfind.steepest(np.array([1.0, 2, 3, 4, 5, 6]), np.array([5, 5, 4, 1, 0.5, 0.5])) == 2


def test_placement_against_the_edge():
    b = {"lr_stable_min": 1e-3, "lr_stable_max": 0.01, "lr_unstable_min": 0.03}
    assert lrfind_study.placement(0.01, b) == "stable side"
    assert lrfind_study.placement(1e-4, b) == "below the stable range"
    assert lrfind_study.placement(1e-4, b, grid_min=1e-3) == "below the grid"
    assert lrfind_study.placement(0.03, b) == "beyond the edge"
    assert lrfind_study.placement(1.0, {**b, "lr_unstable_min": None}) == "above the grid"
    assert lrfind_study.placement(0.01, {**b, "lr_stable_min": None}) == "nothing stable"
    assert lrfind_study.placement(None, b) == "no suggestion"
    assert lrfind_study.placement(0.01, None) == "not measured"


TINY = """
[study]
name = "tiny"
example = "exploding_gradients"
epochs = 1
seeds = [0]
engine = "keras"
[grid]
learning_rate = [0.001, 0.1, 1.0]
clipnorm = ["none", 1.0]
schedule = ["constant", "plateau"]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A study measured by the scripted engine (edge [0.1, 1] everywhere), then `sweep lrfind`."""
    root = tmp_path_factory.mktemp("lrfind")
    path = root / "tiny.toml"
    path.write_text(TINY)
    study = parse(TINY, str(path))
    driver.run(study, root / "results", pool=LocalPool(study, ScriptedEngine()))
    result = CliRunner().invoke(main, ["lrfind", str(path), "--results", str(root / "results")])
    assert result.exit_code == 0, result.output
    return root, path, result


def test_lrfind_writes_one_row_per_setting_and_prints_the_comparison(tiny):
    root, _, result = tiny
    out = root / "results" / "tiny"
    table = pq.read_table(out / rangetest.LRFIND_FILE)
    assert table.schema.metadata[b"schema_version"] == reports.SCHEMA_VERSION.encode()
    df = rangetest.load_lrfind(out)
    assert len(df) == 4 and set(df["rule"]) == {"fastai"} and set(df["seed"]) == {0}
    assert (df["steps"] <= 100).all() and df["suggestion"].notna().all()
    assert all(len(c) == 100 for c in df["curve_lr"]) and all(len(c) == 100 for c in df["curve_smoothed_loss"])
    # The learning rate grows every batch (at a constant 1e-7 the loss would stay near l0), and the
    # setting's clipping is the optimizer's: the curves with and without clipnorm differ.
    assert all(np.nanmax(c) > 3 * c[0] for c in df["curve_loss"])
    by_clip = {clip: c for clip, c in zip(df["clipnorm"].fillna(0), df["curve_loss"])}
    assert not np.array_equal(by_clip[0], by_clip[1.0], equal_nan=True)
    # The schedule is not part of the range test: the two schedules of a setting share one curve.
    for _, pair in df.groupby(df["clipnorm"].isna()):
        assert np.array_equal(pair["curve_loss"].iloc[0], pair["curve_loss"].iloc[1], equal_nan=True)
    assert "[0.1, 1]" in result.output and "P(stable)" in result.output
    assert "suggestion at or below the largest stable learning rate in 4 of 4 settings" in result.output
    assert "where: stable side 4" in result.output


def test_boundary_takes_the_suggestion_and_keeps_it_when_rebuilt(tiny):
    root, _, _ = tiny
    out = root / "results" / "tiny"
    tests = rangetest.load_lrfind(out)
    for boundary in (maps.load_boundary(out), maps.write(out)[1]):  # as written, then as a session rebuilds it
        joined = boundary.merge(tests, on=["clipnorm", "schedule"])
        assert len(joined) == 4
        assert np.allclose(joined["lr_rangetest_suggestion"], joined["suggestion"])
    assert maps.build(maps.recorded(out))[1]["lr_rangetest_suggestion"].isna().all()  # no file, no column values


def test_second_lrfind_reuses_the_recorded_tests(tiny):
    root, path, _ = tiny
    before = pq.read_table(root / "results" / "tiny" / rangetest.LRFIND_FILE)
    result = CliRunner().invoke(main, ["lrfind", str(path), "--results", str(root / "results")])
    assert result.exit_code == 0, result.output
    assert "4 settings already in" in result.output
    assert pq.read_table(root / "results" / "tiny" / rangetest.LRFIND_FILE).equals(before)
    assert lrfind_study.complete(parse(TINY, str(path)), root / "results")
    assert not lrfind_study.complete(parse(TINY, str(path)), root / "results", "lightning")


def test_bad_input_exits_2_naming_what_is_wrong(tiny, tmp_path):
    root, path, _ = tiny
    run = CliRunner().invoke
    missing = run(main, ["lrfind", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "nope.toml" in missing.output and "no such file" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("epochs = 1", "epochs = 0"))
    wrong = run(main, ["lrfind", str(bad)])
    assert wrong.exit_code == 2 and "study.epochs" in wrong.output and "1 to 10000" in wrong.output
    rule = run(main, ["lrfind", str(path), "--rule", "keras"])
    assert rule.exit_code == 2 and "fastai" in rule.output and "lightning" in rule.output
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace("seeds = [0]", "seeds = [1]"))
    conflict = run(main, ["lrfind", str(other), "--results", str(root / "results")])
    assert conflict.exit_code == 2 and "different plan" in conflict.output
    damaged = tmp_path / "results" / "tiny"
    damaged.mkdir(parents=True)
    (damaged / rangetest.LRFIND_FILE).write_bytes(b"not parquet")
    broken = run(main, ["lrfind", str(path), "--results", str(tmp_path / "results")])
    assert broken.exit_code == 2 and rangetest.LRFIND_FILE in broken.output


@pytest.mark.slow
def test_every_catalog_example_runs_the_range_test(request):
    """Each example's default setting (log_of_zero: its hand-written loss; plateau_schedule: its
    schedule ignored) on real Keras; --quick: a 20-batch test."""
    import dataclasses

    from sweep.catalog import EXAMPLES

    quick = request.config.getoption("--quick")
    for rule in RULES.values():
        rule = dataclasses.replace(rule, num_it=20) if quick else rule
        for example in EXAMPLES:
            study = parse(f'[study]\nname="x"\nexample="{example}"\nseeds=[0]', "x.toml")
            curve = lrfind.range_test(study, study.configs()[0], 0, rule)
            assert 1 <= curve.steps <= rule.num_it and len(curve.smoothed) == len(curve.lrs)
            assert np.isfinite(curve.losses[0]), example
