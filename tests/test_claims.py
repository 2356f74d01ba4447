"""`sweep reproduce`: claim studies, the claim rule, the direct evaluation, claims.parquet, REPORT.md."""

import doctest
import math

import pandas as pd
import pytest
from click.testing import CliRunner

import sweep
from sweep.claims import report
from sweep.claims import reproduce as claims
from sweep.claims import studies as claim_studies
from sweep.probes import lrfind_study
from sweep.catalog import EXAMPLES
from sweep.cli import main
from sweep.spec import config_from_dict, load


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_claim_studies_hold_the_document_configurations_and_the_wider_space(example):
    ex = EXAMPLES[example]
    failure, fix = (config_from_dict(ex.config(axes)).config_id for axes in (ex.failure, ex.fix))
    axis, value, reference = claim_studies.fix_change(ex)
    assert ex.config(ex.fix)[axis] == value and ex.config(ex.failure)[axis] == reference
    for quick in (True, False):
        studies = claim_studies.claim_studies(example, quick)
        sweep, keras, space = (studies[k] for k in ("sweep", "keras", "space"))
        for study in (sweep, keras):
            ids = {c.config_id for c in study.configs()}
            assert {failure, fix} <= ids
        assert len(sweep.seeds) >= (2 if quick else 5) and max(sweep.grid["learning_rate"]) >= 1.0
        assert keras.engine == "keras" and len(keras.configs()) <= 4 and space.engine == "population"
        assert {value, reference} <= set(space.grid[axis])
        if not quick:
            assert len(keras.seeds) >= 5 and keras.epochs == ex.epochs
            assert {failure, fix} <= {c.config_id for c in space.configs()}
            assert max(space.grid["learning_rate"]) >= 10 and min(space.grid["learning_rate"]) <= 1e-4
            assert set(space.grid["optimizer"]) == {"adam", "sgd", "rmsprop"}
            assert len(space.grid["batch_size"]) >= 3 and len(space.grid["activation"]) >= 2
            assert len(space.seeds) == 3
            written = claim_studies.space_text(space)
            assert f"{axis} " in written and "rmsprop" in written and f"({len(space.plan())} runs)" in written


def test_docstring_examples_run():
    for module in (claim_studies, claims, report):
        assert doctest.testmod(module).failed == 0, module.__name__


def _trials(example, fail_statuses, fix_statuses):
    ex = EXAMPLES[example]
    rows = []
    for axes, statuses in ((ex.config(ex.failure), fail_statuses), (ex.config(ex.fix), fix_statuses)):
        for seed, status in enumerate(statuses):
            rows.append({**axes, "config_id": config_from_dict(axes).config_id, "seed": seed, "status": status,
                         "final_loss": 0.3 if status == "stable" else math.nan, "initial_loss": 0.7,
                         "engine": "keras"})
    return pd.DataFrame(rows)


def test_a_claim_reproduces_only_with_a_majority_failing_and_the_fix_stable():
    ex = EXAMPLES["exploding_gradients"]
    boundary = pd.DataFrame(columns=list(claims.SETTING_AXES))
    stable = _trials(ex.id, ["stable"] * 5, ["stable"] * 5)
    row = claims.judge_claim(ex, _trials(ex.id, ["nan"] * 3 + ["stable"] * 2, ["stable"] * 5), stable, boundary)
    assert row["reproduced"] and row["measured_failure"].startswith("nan 3/5") and row["measured_engine"] == "keras"
    assert row["sweep_failure"].startswith("stable 5/5") and "decides otherwise" in row["note"]
    row = claims.judge_claim(ex, _trials(ex.id, ["nan"] * 2 + ["stable"] * 3, ["stable"] * 5), stable, boundary)
    assert not row["reproduced"] and "does not fail as claimed" in row["note"] and "otherwise" not in row["note"]
    row = claims.judge_claim(ex, _trials(ex.id, ["nan"] * 5, ["stable"] * 2 + ["diverged"] * 3), stable, boundary)
    assert not row["reproduced"] and "fix is not stable" in row["note"]
    row = claims.judge_claim(ex, _trials(ex.id, ["stalled"] * 5, ["stable"] * 5), stable, boundary)
    assert not row["reproduced"] and "from its logits" in row["note"]


def _space(status_of):
    """A planted space of exploding_gradients: learning rate x optimizer x clipnorm x 3 seeds."""
    ex = EXAMPLES["exploding_gradients"]
    rows = []
    for lr in (0.01, 0.1, 1.0, 3.0, 10.0):
        for optimizer in ("adam", "sgd"):
            for clip in (None, 1.0):
                for seed in range(3):
                    axes = {**ex.defaults, "learning_rate": lr, "optimizer": optimizer, "clipnorm": clip}
                    status = status_of(lr, optimizer, clip)
                    rows.append({**axes, "study": "s", "example": ex.id, "seed": seed, "status": status,
                                 "config_id": config_from_dict(axes).config_id, "initial_loss": 0.7,
                                 "final_loss": 0.3 if status == "stable" else math.nan})
    return ex, pd.DataFrame(rows)


def test_where_the_claimed_failure_occurs_and_what_the_fix_does_there():
    # nan with sgd at lr >= 3 without clipping; clipnorm 1 makes those cells stable; adam diverges
    # at lr 10 with or without clipping (not the claimed status, and not rescued).
    def status(lr, optimizer, clip):
        if optimizer == "sgd" and lr >= 3:
            return "nan" if clip is None else "stable"
        return "diverged" if lr == 10 else "stable"

    ex, trials = _space(status)
    row = claims.answer_space(ex, trials, "the planted space")
    assert row["failure_runs"] == 6 and row["space_runs"] == len(trials) == 60
    assert row["failure_where"] == "nan where learning_rate >= 3 and optimizer in {sgd} and clipnorm in {none}"
    assert row["failure_where_precision"] == 1.0 and row["failure_where_coverage"] == 1.0
    assert (row["fix_axis"], row["fix_value"], row["fix_reference"]) == ("clipnorm", "1", "none")
    # The region drops the clipnorm term: sgd at lr 3 and 10, both rescued; adam's lr-10 cell is outside.
    assert row["fix_failing_cells"] == 2 and row["fix_rescued_cells"] == 2 and row["fix_rescue_rate"] == 1.0
    # One pair (sgd): the edge goes from 3 to beyond the grid's end, a lower bound of 10/3.
    assert row["fix_pairs"] == 1 and row["fix_edge_shift_censored"] == ">="
    assert row["fix_edge_shift"] == pytest.approx(10 / 3)
    assert row["fix_note"].startswith("in the failure's region (learning_rate >= 3 and optimizer in {sgd})")
    assert (row["failure_runs_without_fix"], row["failure_runs_with_fix"]) == (6, 0)
    assert row["fix_note"].endswith("runs ending nan there: 6 of 6 without the fix, 0 of 6 with it (which end stable 6)")
    assert report.where_text({**row, "space_study": "s"}).endswith("(precision 100 %, coverage 100 %; 6 of 60 runs)")


def test_a_failure_that_only_the_fix_brings_is_named_so():
    ex, trials = _space(lambda lr, optimizer, clip: "nan" if lr >= 3 and optimizer == "sgd" and clip else "stable")
    row = claims.answer_space(ex, trials, "the planted space")
    assert row["failure_where"] == "nan where learning_rate >= 3 and optimizer in {sgd} and clipnorm in {1}"
    assert row["fix_note"].startswith("the claimed failure occurs with the fix, not without it")
    # Nothing fails without the fix there, so there is nothing to rescue; the edge moves down.
    assert row["fix_failing_cells"] == 0 and row["fix_edge_shift_censored"] == "<="
    assert (row["failure_runs_without_fix"], row["failure_runs_with_fix"]) == (0, 6)


def test_a_failure_that_happens_nowhere_says_so_and_the_fix_is_measured_over_the_whole_space():
    ex, trials = _space(lambda lr, optimizer, clip: "stalled" if lr == 10 and clip is None else "stable")
    row = claims.answer_space(ex, trials, "the planted space")
    assert row["failure_runs"] == 0 and row["failure_where"] == "nowhere in this space"
    assert math.isnan(row["failure_where_precision"])
    assert row["fix_failing_cells"] == 2 and row["fix_rescue_rate"] == 1.0 and row["fix_pairs"] == 2
    assert row["fix_note"].startswith("over the whole space (no run ends nan)")
    assert row["fix_note"].endswith("0 of 30 without the fix, 0 of 30 with it (which end stable 30)")
    assert report.where_text({**row, "space_study": "s"}) == "nowhere in this space (0 of 60 runs): the planted space"


def test_direct_evaluation_is_reported_as_measured():
    row, evals = claims.direct_claim()
    with_zero = evals[evals["zeros_in_y_pred"] > 0]
    # y_true ~ U(0,1) > 0, so y_true * log(0) = -inf and the loss is +inf: non-finite, not NaN.
    assert (with_zero["loss_incorrect"] == math.inf).all()
    assert evals.loc[evals["zeros_in_y_pred"] == 0, "loss_incorrect"].map(math.isfinite).all()
    assert evals["loss_corrected"].map(math.isfinite).all()
    assert f"{len(with_zero)}/{len(evals)} draws contain an exact zero" in row["measured_failure"]
    assert "not NaN" in row["note"]


@pytest.mark.slow
def test_reproduce_quick_covers_every_example(tmp_path):
    """`sweep reproduce --quick` end to end (it is the CI form already)."""
    result = CliRunner().invoke(main, ["reproduce", "--quick", "--results", str(tmp_path)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = claims.load_claims(tmp_path)
    assert set(table["example"].astype(str)) == set(EXAMPLES)
    assert list(table.columns) == claims.CLAIM_COLUMNS.names
    report_text = (tmp_path / "REPORT.md").read_text()
    for example in EXAMPLES:
        assert f"## {example}:" in report_text
        for kind in ("", "-keras", "-space"):
            study_dir = tmp_path / f"reproduce-quick-{example}{kind}"
            assert (study_dir / "map.parquet").is_file() and (study_dir / "study.toml").is_file()
            for png in (study_dir / "plots").glob("*.png"):
                assert f"]({study_dir.name}/plots/{png.name})" in report_text
        # The LR range test of every setting of the learning-rate sweep, in the report beside the edge.
        assert lrfind_study.complete(load(tmp_path / f"reproduce-quick-{example}" / "study.toml"), tmp_path)
    assert report_text.count("| range test (fastai) | curvature, init | curvature, early | measured edge |") \
        == len(EXAMPLES)
    for _, row in table[table["space_study"].notna()].iterrows():
        ex = EXAMPLES[str(row["example"])]
        assert (row["measured_engine"], row["sweep_engine"]) == ("keras", "population")
        space_dir = tmp_path / row["space_study"]
        space = sweep.load_trials(space_dir)
        assert row["space_runs"] == len(space) == len(load(space_dir / "study.toml").plan())
        assert row["failure_runs"] == space["status"].astype(str).isin(ex.claimed_failure).sum()
        assert (row["failure_where"] == "nowhere in this space") == (row["failure_runs"] == 0)
        assert row["fix_axis"] == claim_studies.fix_change(ex)[0] and row["fix_note"]
    assert "claims reproduced" in result.output


BASE = {"reproduced": False, "failure_reproduced": False, "fix_reproduced": True, "space_study": "s",
        "failure_runs": 0, "space_runs": 100, "claimed_failure": "nan", "failure_where": "nowhere in this space",
        "failure_runs_with_fix": 0, "failure_runs_without_fix": 0, "fix_edge_shift_high": 2.0,
        "fix_rescue_rate": 0.25, "measured_failure": "stable 5/5 (median final loss / l0 0.4)",
        "measured_fix": "stable 5/5 (median final loss / l0 0.7)"}


@pytest.mark.parametrize("change, verdict, evidence", [
    ({}, "does not hold", "stable 5/5 at the document's configuration; never nan in 0 of 100 runs of the space"),
    ({"reproduced": True, "failure_reproduced": True, "measured_failure": "nan 4/5, stable 1/5"}, "holds",
     "nan 4/5, stable 1/5 at the document's configuration, stable 5/5 with its fix"),
    ({"failure_runs": 7, "failure_where": "nan where learning_rate >= 3 and optimizer in {sgd}"},
     "only where learning_rate >= 3 and optimizer in {sgd}",
     "stable 5/5 at the document's configuration; nan in 7 of 100 runs of the space"),
    ({"failure_runs": 9, "failure_runs_with_fix": 6, "failure_runs_without_fix": 3}, "the opposite",
     "nan in 6 runs with the fix, 3 without"),
    ({"failure_runs": 1, "fix_edge_shift_high": 0.5}, "the opposite", "nan in 0 runs with the fix, 0 without"),
    ({"failure_reproduced": True, "fix_reproduced": False, "measured_fix": "stalled 5/5"},
     "the failure holds, not the fix", "stalled 5/5 with the fix; rescues 25 % of failing cells"),
    ({"space_study": "", "reproduced": True,
      "measured_failure": "1/20 draws contain an exact zero; in those non-finite 1/1; finite in the 19 without"},
     "holds", "1/20 draws contain an exact zero; in those non-finite 1/1"),
])
def test_the_short_verdict_of_a_claim(change, verdict, evidence):
    assert claims.short_verdict({**BASE, **change}) == (verdict, evidence)

