"""The committed reference results (results/): they load with the current schema, their maps are
what the current code computes from their trials, and re-training a few of their runs gives the
same verdicts."""

from pathlib import Path

import pandas as pd
import pytest

import sweep
from sweep.results import maps, rangetest
from sweep.catalog import EXAMPLES
from sweep.claims import report
from sweep.claims.reproduce import load_claims
from sweep.driver.workers import execute
from sweep.spec import Run, config_from_dict, load

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Per example: the learning-rate sweep, the keras reference and the wider space (sweep.claims.studies).
STUDIES = [RESULTS / f"reproduce-{example}{kind}" for example in EXAMPLES for kind in ("", "-keras", "-space")]


def test_claims_cover_every_example_and_the_report_links_existing_plots():
    claims = load_claims(RESULTS)
    assert set(claims["example"].astype(str)) == set(EXAMPLES)
    assert claims["reproduced"].dtype == bool
    assert claims[["claim", "measured_failure", "measured_fix", "note"]].notna().all().all()
    report = (RESULTS / "REPORT.md").read_text()
    assert "sweep reproduce --results results" in report
    for example in EXAMPLES:
        assert f"## {example}:" in report
    links = {link for link in pd.Series(report.split("](")[1:]).str.split(")").str[0] if link.endswith(".png")}
    for link in links:
        assert (RESULTS / link).is_file(), link
    for study_dir in STUDIES:
        for png in (study_dir / "plots").glob("*.png"):
            assert f"{study_dir.name}/plots/{png.name}" in links, png
    answered = claims[claims["space_study"].notna()]
    assert set(answered["example"].astype(str)) == set(EXAMPLES)
    assert (answered["measured_engine"] == "keras").all() and answered["failure_where"].notna().all()


@pytest.mark.parametrize("study_dir", STUDIES, ids=lambda p: p.name)
def test_committed_study_loads_and_its_maps_are_current(study_dir):
    trials = sweep.load_trials(study_dir)
    curves = sweep.load_curves(study_dir)
    assert len(trials) == len(load(study_dir / "study.toml").plan())
    assert set(curves["trial"]) == set(trials["trial"])
    stored_map, stored_boundary = sweep.load_map(study_dir), sweep.load_boundary(study_dir)
    fresh_map, fresh_boundary = maps.build(trials)
    pd.testing.assert_frame_equal(stored_map, fresh_map)
    # The range test's suggestion comes from lrfind.parquet (sweep lrfind), not from the trials.
    column = rangetest.BOUNDARY_COLUMN
    pd.testing.assert_frame_equal(stored_boundary.drop(columns=column), fresh_boundary.drop(columns=column))
    if (study_dir / rangetest.LRFIND_FILE).is_file():
        suggested = set(rangetest.load_lrfind(study_dir)["suggestion"].dropna())
        assert stored_boundary[column].notna().all() and set(stored_boundary[column]) <= suggested


@pytest.mark.parametrize("study_dir", STUDIES, ids=lambda p: p.name)
def test_no_committed_run_that_learned_ends_at_the_best_constant_predictions_loss(study_dir):
    trials = sweep.load_trials(study_dir)
    stall_ratio = load(study_dir / "study.toml").verdict.stall_ratio
    learned = trials[trials["status"].isin(["stable", "unstable"])]
    assert learned["baseline_loss"].notna().all()
    assert (learned["final_loss"] < stall_ratio * learned["baseline_loss"]).all()


def _picked(quick: bool) -> list[tuple[Path, int]]:
    """A stable and a non-stable run of short studies (quick), or of every study (full)."""
    chosen = []
    for study_dir in STUDIES if not quick else [RESULTS / "reproduce-categorical_clipnorm"]:
        trials = sweep.load_trials(study_dir)
        for stable in (True, False):
            pick = trials[(trials["status"] == "stable") == stable].sort_values("trial")
            if len(pick):
                chosen.append((study_dir, int(pick["trial"].iloc[0])))
    return chosen


@pytest.mark.slow
def test_rerunning_committed_runs_gives_the_same_verdicts(request):
    for study_dir, trial in _picked(request.config.getoption("--quick")):
        study = load(study_dir / "study.toml")
        row = sweep.load_trials(study_dir).set_index("trial").loc[trial]
        run = Run(trial, config_from_dict(row.to_dict()), int(row["seed"]))
        [(again, _curves)] = execute(study, [run], str(row["engine"]))
        print(f"{study_dir.name} trial {trial}: committed {row['status']} {row['final_loss']:.6g}, "
              f"re-run {again['status']} {again['final_loss']:.6g}")
        assert again["status"] == row["status"]
        assert again["final_loss"] == pytest.approx(row["final_loss"], rel=1e-4, nan_ok=True)


def test_the_report_opens_with_one_short_table_linking_each_section():
    table = load_claims(RESULTS)
    heading = report.heading(table.iloc[0])
    assert report.anchor(heading).startswith(str(table.iloc[0]["example"]))
    text = (RESULTS / "REPORT.md").read_text()
    first = text.split("\n\n| claim | verdict |", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(first) == 2 + len(table)  # the rest of the header, the separator, then a row per claim
    for (_, c), line in zip(table.iterrows(), first[2:]):
        assert line.startswith(f"| {c['headline']} | **{c['verdict']}** |")
        assert f"(#{report.anchor(report.heading(c))})" in line
        assert f"### {report.heading(c)}" in text
