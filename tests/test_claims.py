"""`sweep reproduce`: claim studies, the claim rule, the direct evaluation, claims.parquet, REPORT.md."""

import math

import pandas as pd
import pytest
from click.testing import CliRunner

from sweep import claims
from sweep.catalog import EXAMPLES
from sweep.cli import main
from sweep.spec import config_from_dict


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_claim_study_holds_the_failure_and_fix_configurations(example):
    ex = EXAMPLES[example]
    for quick in (True, False):
        study = claims.reproduce_study(example, quick)
        ids = {c.config_id for c in study.configs()}
        assert config_from_dict(ex.config(ex.failure)).config_id in ids
        assert config_from_dict(ex.config(ex.fix)).config_id in ids
        assert len(study.seeds) >= (2 if quick else 5)
        lrs = study.grid["learning_rate"]
        assert len(lrs) >= 3 and max(lrs) >= 1.0


def _trials(example, fail_statuses, fix_statuses):
    ex = EXAMPLES[example]
    rows = []
    for axes, statuses in ((ex.config(ex.failure), fail_statuses), (ex.config(ex.fix), fix_statuses)):
        for seed, status in enumerate(statuses):
            rows.append({**axes, "config_id": config_from_dict(axes).config_id, "seed": seed, "status": status,
                         "final_loss": 0.3 if status == "stable" else math.nan, "initial_loss": 0.7})
    return pd.DataFrame(rows)


def test_a_claim_reproduces_only_with_a_majority_failing_and_the_fix_stable():
    ex = EXAMPLES["exploding_gradients"]
    boundary = pd.DataFrame(columns=list(claims.SETTING_AXES))
    row = claims.judge_claim(ex, "s", _trials(ex.id, ["nan"] * 3 + ["stable"] * 2, ["stable"] * 5), boundary)
    assert row["reproduced"] and row["measured_failure"].startswith("nan 3/5")
    row = claims.judge_claim(ex, "s", _trials(ex.id, ["nan"] * 2 + ["stable"] * 3, ["stable"] * 5), boundary)
    assert not row["reproduced"] and "does not fail as claimed" in row["note"]
    row = claims.judge_claim(ex, "s", _trials(ex.id, ["nan"] * 5, ["stable"] * 2 + ["diverged"] * 3), boundary)
    assert not row["reproduced"] and "fix is not stable" in row["note"]
    row = claims.judge_claim(ex, "s", _trials(ex.id, ["stalled"] * 5, ["stable"] * 5), boundary)
    assert not row["reproduced"] and "from its logits" in row["note"]


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
    report = (tmp_path / "REPORT.md").read_text()
    for example in EXAMPLES:
        assert f"## {example}:" in report
        assert (tmp_path / f"reproduce-quick-{example}" / "map.parquet").is_file()
    assert "claims reproduced" in result.output
