"""`sweep reproduce`: every document claim next to what was measured, and where it holds.

For each catalog example three studies are trained (`studies`: the document's
configurations with a short learning-rate sweep, the same configurations exactly on the
keras engine, and the example's wider space on the population engine), then per claim:

(a) the claim, in the document's words;
(b) what was measured at the document's configuration: the keras engine's runs decide
    (`measured_failure`, `measured_fix`, `reproduced`), the sweep study's runs at the same
    configurations and its edges are reported beside them (`sweep_failure`, `sweep_fix`);
(c) where in the wider space the claimed failure does occur: the shortest conjunction of
    axis conditions (`conditions.find_rule`) over the space's runs whose status is one the
    claim names, with its precision and coverage, or "nowhere in this space" and the space
    written out (`failure_where`, `space`);
(d) what the document's fix does there: on the axis the fix changes (`fix_change`), its
    rescue rate on the failing map cells inside the failure's region and its edge shift with
    a 95 % interval (`effects.axis_effect`; the region is the rule of (c) without its terms
    on that axis, so that both sides of a pair lie in it); over the whole space when the
    failure occurs nowhere.

A failure claim reproduces when a strict majority of the failure configuration's seeds end
in one of the example's `claimed_failure` statuses, and the claim as a whole when, in
addition, a majority of the fix configuration's seeds are stable. Nothing is tuned to make
a claim hold. `log_of_zero` also gets the document's direct evaluation of its hand-written
loss on fixed arrays. `DIR/claims.parquet` holds one row per claim, `DIR/REPORT.md` the
report (`sweep.claims.report`)::

    >>> from sweep.claims.reproduce import CLAIM_COLUMNS
    >>> CLAIM_COLUMNS.names[:4]
    ['example', 'document', 'claim', 'headline']
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import EXAMPLES, Example, direct_evaluation
from ..probes import lrfind_study
from ..results import maps, reports
from ..spec import SETTING_AXES, Study, config_from_dict, load, parse
from ..spec import format_value as _fmt
from ..verdict import ORCHESTRATOR_STATUSES, STATUSES
from .report import share
from .studies import KINDS, describe, fix_change, space_text, study_toml

CLAIMS_FILE = "claims.parquet"
# The document's direct evaluation draws 100 predictions; with 20 draws, a few contain an exact zero.
DIRECT_SEEDS = tuple(range(20))

CLAIM_COLUMNS = pa.schema([
    ("example", pa.string()),
    ("document", pa.string()),
    ("claim", pa.string()),
    ("headline", pa.string()),  # the claim in a few words
    ("verdict", pa.string()),  # `short_verdict`: holds / does not hold / the opposite / only where ... / half
    ("evidence", pa.string()),  # the one measured number that carries the verdict
    ("failure_reproduced", pa.bool_()),  # (b): a majority of the failure configuration's seeds fail as claimed
    ("fix_reproduced", pa.bool_()),  # (b): a majority of the fix configuration's seeds are stable
    ("failure_config", pa.string()),
    ("fix_config", pa.string()),
    ("claimed_failure", pa.string()),
    ("measured_failure", pa.string()),  # (b) on `measured_engine`, at the document's exact configuration
    ("claimed_fix", pa.string()),
    ("measured_fix", pa.string()),
    ("reproduced", pa.bool_()),
    ("note", pa.string()),
    ("study", pa.string()),  # the study directory under DIR of measured_failure / measured_fix
    ("measured_engine", pa.string()),
    ("sweep_study", pa.string()),  # (b) again: the learning-rate sweep around the document's configurations
    ("sweep_engine", pa.string()),
    ("sweep_failure", pa.string()),
    ("sweep_fix", pa.string()),
    ("space_study", pa.string()),  # (c), (d): the wider space, on the population engine
    ("space", pa.string()),  # the space written out: varied axes and values, seeds, epochs, runs
    ("failure_runs", pa.int64()),  # runs of the space with a claimed failure status
    ("space_runs", pa.int64()),  # runs of the space that trained to a verdict
    ("failure_where", pa.string()),  # Rule.text() of where they occur, or "nowhere in this space"
    ("failure_where_precision", pa.float64()),
    ("failure_where_coverage", pa.float64()),
    ("fix_axis", pa.string()),  # the axis the document's fix changes, its value and the failure's
    ("fix_value", pa.string()),
    ("fix_reference", pa.string()),
    ("fix_failing_cells", pa.int64()),  # reference map cells not stable by majority, inside the region
    ("fix_rescued_cells", pa.int64()),  # ... whose fixed partner is stable
    ("fix_rescue_rate", pa.float64()),
    ("fix_pairs", pa.int64()),  # settings pairs (reference, fix) the edge shift is the median over
    ("fix_edge_shift", pa.float64()),  # edge with the fix / edge without it (a ratio of learning rates)
    ("fix_edge_shift_censored", pa.string()),  # "" exact, ">=" / "<=" a bound, else edge_shift is null
    ("fix_edge_shift_low", pa.float64()),  # bootstrap 95 % interval over pairs
    ("fix_edge_shift_high", pa.float64()),
    ("failure_runs_without_fix", pa.int64()),  # runs with a claimed status in the region, axis = reference
    ("failure_runs_with_fix", pa.int64()),  # ... axis = the fix's value
    ("fix_note", pa.string()),
])


@dataclass
class Measured:
    """The seeds of one configuration: status counts and the median final-loss ratio."""

    counts: dict[str, int]
    n: int
    median_ratio: float

    def majority(self, statuses) -> bool:
        trained = sum(c for s, c in self.counts.items() if s not in ORCHESTRATOR_STATUSES)
        return trained > 0 and 2 * sum(self.counts.get(s, 0) for s in statuses) > trained

    def text(self) -> str:
        if not self.n:
            return "not run"
        parts = ", ".join(f"{s} {self.counts[s]}/{self.n}" for s in STATUSES if self.counts.get(s))
        return f"{parts} (median final loss / l0 {self.median_ratio:.3g})"


def measure(trials: pd.DataFrame, axes: dict) -> Measured:
    runs = trials[trials["config_id"] == config_from_dict(axes).config_id]
    counts = runs["status"].astype(str).value_counts().to_dict()
    ratio = (runs["final_loss"] / runs["initial_loss"]).astype(float)
    ratio = ratio.where(ratio.notna() & (ratio.abs() != math.inf), math.inf)
    return Measured(counts, len(runs), float(ratio.median()) if len(runs) else math.nan)


def _edge_text(boundary: pd.DataFrame, axes: dict) -> str:
    row = boundary
    for a in SETTING_AXES:
        row = row[row[a].isna()] if axes[a] is None else row[row[a] == axes[a]]
    if row.empty:
        return "not run"
    b = row.iloc[0]
    if pd.isna(b["lr_stable_min"]):
        return f"stable at no learning rate of the sweep (mostly {b['edge_status']})"
    if pd.isna(b["lr_unstable_min"]):
        return f"stable from {_fmt(b['lr_stable_min'])} to the sweep's end"
    return (f"stable {_fmt(b['lr_stable_min'])}..{_fmt(b['lr_stable_max'])}, "
            f"{b['edge_status']} from {_fmt(b['lr_unstable_min'])}")


def _engines(trials: pd.DataFrame) -> str:
    return ", ".join(sorted(str(e) for e in trials["engine"].dropna().unique())) if "engine" in trials else ""


def judge_claim(ex: Example, reference: pd.DataFrame, sweep: pd.DataFrame, boundary: pd.DataFrame) -> dict:
    """(a) and (b) of one claim: the reference runs at the document's configurations decide;
    the sweep's runs at the same configurations and its edges (`boundary`) are reported beside."""
    fail_axes, fix_axes = ex.config(ex.failure), ex.config(ex.fix)
    fail, fix = measure(reference, fail_axes), measure(reference, fix_axes)
    sweep_fail, sweep_fix = measure(sweep, fail_axes), measure(sweep, fix_axes)
    failure_ok = fail.majority(ex.claimed_failure)
    fix_ok = fix.majority(("stable",))
    reproduced = failure_ok and fix_ok
    edges = (f"edge in the learning-rate sweep ({_engines(sweep) or '-'}) without the fix: "
             f"{_edge_text(boundary, fail_axes)}; with it: {_edge_text(boundary, fix_axes)}")
    if reproduced:
        note = f"failure as claimed; fix stable. {edges}"
    elif not failure_ok:
        why = ""
        if fail.counts.get("nan", 0) == 0 and "nan" in ex.claimed_failure:
            why = "no run turned non-finite"
            if fail_axes["loss"] == "binary_crossentropy":
                why += " (Keras computes binary cross-entropy on a sigmoid output from its logits)"
            why += "; "
        worse = "" if fix_ok else "; the fix configuration is not stable either"
        note = f"the failure configuration does not fail as claimed: {why}{edges}{worse}"
    else:
        note = f"the failure reproduces but the fix is not stable. {edges}"
    if sweep_fail.n and (sweep_fail.majority(ex.claimed_failure), sweep_fix.majority(("stable",))) != (failure_ok, fix_ok):
        note += f" ({_engines(sweep)} at the same configurations decides otherwise: see sweep_failure, sweep_fix)"
    return {
        "example": ex.id, "document": ex.document, "claim": ex.claim, "headline": ex.headline,
        "failure_reproduced": failure_ok, "fix_reproduced": fix_ok,
        "failure_config": describe(ex.failure), "fix_config": describe(ex.fix),
        "claimed_failure": " or ".join(ex.claimed_failure), "measured_failure": fail.text(),
        "claimed_fix": "stable", "measured_fix": fix.text(), "reproduced": reproduced, "note": note,
        "measured_engine": _engines(reference), "sweep_engine": _engines(sweep),
        "sweep_failure": sweep_fail.text(), "sweep_fix": sweep_fix.text(),
    }


def answer_space(ex: Example, trials: pd.DataFrame, space: str = "") -> dict:
    """(c) where the claimed failure occurs among the space's runs and (d) what the fix does there."""
    from ..answers.conditions import find_rule
    from ..answers.effects import axis_effect
    from ..answers.effects import describe as describe_effect

    trained = trials[~trials["status"].astype(str).isin(ORCHESTRATOR_STATUSES)].reset_index(drop=True)
    target = trained["status"].astype(str).isin(ex.claimed_failure).to_numpy()
    map_df, boundary_df = maps.build(trials)
    axis, value, reference = fix_change(ex)
    row = {"space": space, "failure_runs": int(target.sum()), "space_runs": len(trained),
           "fix_axis": axis, "fix_value": _fmt(value), "fix_reference": _fmt(reference)}
    claimed = " or ".join(ex.claimed_failure)
    region = None
    if target.any():
        rule = find_rule(trained, target)
        where = f"where {rule.text()}" if rule.terms else "everywhere in the space"
        row.update(failure_where=f"{claimed} {where}", failure_where_precision=rule.precision,
                   failure_where_coverage=rule.coverage)
        # The region on the other axes: a term on the fix's own axis would keep its fixed partners out.
        own = [t for t in rule.terms if t[0] == axis]
        region = dataclasses.replace(rule, terms=tuple(t for t in rule.terms if t[0] != axis))
        there = (f"in the failure's region ({region.text()})" if region.terms
                 else f"over the whole space (the failure's conditions name no axis but {axis})")
        if own and _fmt(reference) not in own[0][2]:
            there = f"the claimed failure occurs with the fix, not without it ({rule.text()}); {there}"
    else:
        row.update(failure_where="nowhere in this space", failure_where_precision=math.nan,
                   failure_where_coverage=math.nan)
        there = f"over the whole space (no run ends {claimed})"
    cells = pd.Series(region.mask(map_df), index=map_df.index) if region and region.terms else None
    effect = axis_effect(map_df, boundary_df, axis, value, reference, cells=cells)
    # The claimed status itself, with and without the fix, in the same region: a fix can remove
    # it without making the cell stable (a nan that becomes a divergence).
    inside = region.mask(trained) if region else np.ones(len(trained), dtype=bool)
    side = trained[axis].astype(object).map(_fmt).to_numpy()
    counts = {v: (int((target & inside & (side == _fmt(v))).sum()), int((inside & (side == _fmt(v))).sum()))
              for v in (reference, value)}
    fixed = trained.loc[inside & (side == _fmt(value)), "status"].astype(str).value_counts()
    ends = ", ".join(f"{s} {fixed[s]}" for s in STATUSES if fixed.get(s))
    row.update(fix_failing_cells=effect["n_failing_cells"], fix_rescued_cells=effect["n_rescued"],
               fix_rescue_rate=effect["rescue_rate"], fix_pairs=effect["n_pairs"],
               fix_edge_shift=effect["edge_shift"], fix_edge_shift_censored=effect["edge_shift_censored"],
               fix_edge_shift_low=effect["edge_shift_low"], fix_edge_shift_high=effect["edge_shift_high"],
               failure_runs_without_fix=counts[reference][0], failure_runs_with_fix=counts[value][0],
               fix_note=f"{there}: {describe_effect(effect)}; runs ending {claimed} there: "
                        f"{counts[reference][0]} of {counts[reference][1]} without the fix, {counts[value][0]} "
                        f"of {counts[value][1]} with it (which end {ends or 'nowhere'})")
    return row


def short_verdict(c: dict) -> tuple[str, str]:
    """A claim's verdict in a few words and the one number that carries it, from its row
    (`judge_claim` and `answer_space`, or `direct_claim`):

    * "holds": the document's failure configuration fails as claimed and its fix is stable;
    * "the opposite": the claimed failure is more frequent with the fix than without it, or the
      fix moves the edge down (the bootstrap interval of the edge ratio below 1);
    * "only where ...": the failure configuration does not fail as claimed, but runs of the
      wider space do, in the region the rule names;
    * "does not hold": no run of the space fails as claimed;
    * "the failure holds, not the fix": the failure reproduces, the fix is not stable.

    >>> verdict, evidence = short_verdict({"reproduced": False, "failure_reproduced": False, "fix_reproduced": True,
    ...                "space_study": "s", "failure_runs": 3, "space_runs": 2673, "claimed_failure": "nan",
    ...                "failure_where": "nan where learning_rate >= 10", "failure_runs_with_fix": 0,
    ...                "failure_runs_without_fix": 3, "fix_edge_shift_high": 1.0, "measured_failure": "stable 5/5"})
    >>> verdict
    'only where learning_rate >= 10'
    >>> print(evidence)
    stable 5/5 at the document's configuration; nan in 3 of 2673 runs of the space
    """
    failure, fix = c["measured_failure"].split(" (median")[0], c.get("measured_fix", "").split(" (median")[0]
    if not c.get("space_study"):  # the direct evaluation: no space to look in
        return ("holds" if c["reproduced"] else "does not hold"), "; ".join(failure.split("; ")[:2])
    claimed, runs = c["claimed_failure"], f"{c['failure_runs']} of {c['space_runs']} runs of the space"
    worse = (c["failure_runs_with_fix"] > c["failure_runs_without_fix"]
             or (c.get("fix_edge_shift_high") is not None and c["fix_edge_shift_high"] < 1))
    if worse:
        return "the opposite", (f"{claimed} in {c['failure_runs_with_fix']} runs with the fix, "
                                f"{c['failure_runs_without_fix']} without")
    if c["reproduced"]:
        return "holds", f"{failure} at the document's configuration, {fix} with its fix"
    if c["failure_reproduced"]:
        return "the failure holds, not the fix", f"{fix} with the fix; rescues {share(c.get('fix_rescue_rate'))} of failing cells"
    if not c["failure_runs"]:
        return "does not hold", f"{failure} at the document's configuration; never {claimed} in {runs}"
    where = c["failure_where"].split(" where ", 1)[1] if " where " in c["failure_where"] else "everywhere"
    return f"only where {where}", f"{failure} at the document's configuration; {claimed} in {runs}"


def direct_claim(seeds=DIRECT_SEEDS) -> tuple[dict, pd.DataFrame]:
    """log_of_zero as the document runs it: its two losses on fixed random arrays, per seed."""
    ex = EXAMPLES["log_of_zero"]
    evals = pd.DataFrame([direct_evaluation(s) for s in seeds])
    with_zero = evals[evals["zeros_in_y_pred"] > 0]
    inc = evals["loss_incorrect"]
    n_nan, n_inf = int(inc.isna().sum()), int((inc.abs() == math.inf).sum())
    nonfinite_with_zero = int((~with_zero["loss_incorrect"].map(math.isfinite)).sum())
    corrected_finite = int(evals["loss_corrected"].map(math.isfinite).sum())
    measured = (f"{len(with_zero)}/{len(evals)} draws contain an exact zero; in those the loss is "
                f"non-finite {nonfinite_with_zero}/{len(with_zero)} (NaN {n_nan}, +inf {n_inf} over all draws); "
                f"finite in the {len(evals) - len(with_zero)} draws without a zero")
    reproduced = len(with_zero) > 0 and nonfinite_with_zero == len(with_zero) and corrected_finite == len(evals)
    kind = "NaN" if n_nan else "+inf, not NaN (y_true > 0 times log(0) = -inf; nothing makes 0 x inf)"
    p_zero = 1 - 0.999 ** 100
    note = (f"log(0) does break the loss, but as {kind}, and the document's arrays rarely contain a zero: "
            f"{len(with_zero)} of {len(evals)} seeds (expected {p_zero:.1%}: 100 draws below 0.001)")
    row = {
        "example": ex.id, "document": ex.document, "failure_reproduced": reproduced, "fix_reproduced": reproduced,
        "headline": "log(0) in a hand-written loss gives NaN; clipping predictions fixes it (no training)",
        "claim": "custom_loss_incorrect on y_pred with values below 0.001 set to 0.0: 'Loss function "
                 "calculation will result in a NaN if y_pred is 0 or 1'; custom_loss_corrected clips to [1e-7, 1-1e-7].",
        "failure_config": "direct evaluation as written: y_true ~ U(0,1), y_pred ~ U(0,1) 100x1, "
                          f"values < 0.001 set to 0.0, seeds {seeds[0]}-{seeds[-1]}",
        "fix_config": "the same arrays through custom_loss_corrected",
        "claimed_failure": "nan", "measured_failure": measured, "claimed_fix": "finite",
        "measured_fix": f"finite in {corrected_finite}/{len(evals)} draws",
        "reproduced": reproduced, "note": note, "study": "", "measured_engine": "tensorflow (no training)",
    }
    return row, evals


def write_claims(rows: list[dict], path: Path) -> None:
    rows = [{**r, **dict(zip(("verdict", "evidence"), short_verdict(r)))} for r in rows]
    table = pa.Table.from_pylist([{n: r.get(n) for n in CLAIM_COLUMNS.names} for r in rows], schema=CLAIM_COLUMNS)
    reports.write_atomic(table.replace_schema_metadata({"schema_version": reports.SCHEMA_VERSION}), path)


def load_claims(results: str | os.PathLike) -> pd.DataFrame:
    """`claims.parquet` of a results directory (`sweep reproduce` writes it)."""
    path = Path(results) / CLAIMS_FILE
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise reports.ResultsError(f"{path}: cannot read ({exc}); `sweep reproduce` writes it") from None
    version = (pf.schema_arrow.metadata or {}).get(b"schema_version", b"?").decode()
    if version not in reports.READABLE_VERSIONS:
        raise reports.ResultsError(f"{path}: schema_version {version}, this sweep reads "
                                   f"{' and '.join(reports.READABLE_VERSIONS)}")
    if int(version) < int(reports.JUDGED_SINCE):
        raise reports.ResultsError(f"{path}: claims judged by the rules of schema_version {version} (`stalled` "
                                   "against l0 alone); run `sweep reproduce` again")
    missing = [n for n in CLAIM_COLUMNS.names if n not in pf.schema_arrow.names]
    if missing:
        raise reports.ResultsError(f"{path}: no column {', '.join(missing)}; `sweep reproduce` writes them")
    # Counts stay integers where the direct evaluation leaves them null.
    df = pf.read(columns=CLAIM_COLUMNS.names).cast(CLAIM_COLUMNS).to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    df["example"] = df["example"].astype("category")
    return df


def _train(out: Path, toml: str, quick: bool, on_study: Callable[[Study], None] | None) -> tuple[Study, pd.DataFrame]:
    """Run (or resume) one claim study under `out` and write its plots; the study and its trials."""
    from ..driver import session as driver
    from ..engines.population import PopulationEngine
    from ..plots.figures import write_plots
    from ..driver.pool import LocalPool

    # The study file goes next to its results, so study.json records it and
    # `sweep run DIR/<study>/study.toml` re-runs exactly this study.
    study_dir = out / parse(toml).name
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.toml").write_text(toml)
    s = load(study_dir / "study.toml")
    if on_study:
        on_study(s)
    # Trained in this process, without starting Ray for each: the population engine
    # already spreads a batch over the CPU's threads.
    engine = driver.engine_for(s, None)
    if engine == "population" and quick:
        # Without XLA: the quick form's populations are a few runs of two epochs, whose compile
        # never pays back.
        engine = PopulationEngine(jit=False)
    driver.run(s, out, pool=LocalPool(s, engine))
    write_plots(study_dir)
    return s, reports.load_trials(study_dir)


def reproduce(results: str | os.PathLike = "results", quick: bool = False, engine: str | None = None,
              on_study: Callable[[Study], None] | None = None, command: str = "") -> pd.DataFrame:
    """Run every claim's studies (resuming what is recorded), write claims.parquet and REPORT.md.
    `engine` is the engine of the learning-rate sweep studies (the reference is keras and the
    space population by definition)."""
    from .report import write_report

    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for example_id, ex in EXAMPLES.items():
        done = {kind: _train(out, study_toml(ex, kind, quick, engine), quick, on_study) for kind in KINDS}
        (sweep, sweep_trials), (keras, keras_trials), (space, space_trials) = (done[k] for k in KINDS)
        # The LR range test beside the edges the report shows; settings already tested are skipped.
        lrfind_study.run_study(sweep, out)
        row = judge_claim(ex, keras_trials, sweep_trials, maps.build(sweep_trials)[1])
        row.update(study=keras.name, sweep_study=sweep.name, space_study=space.name)
        row.update(answer_space(ex, space_trials, space_text(space)))
        rows.append(row)
        if example_id == "log_of_zero":
            rows.append(direct_claim()[0])
    write_claims(rows, out / CLAIMS_FILE)
    claims = load_claims(out)
    write_report(out, claims, quick=quick, command=command)
    return claims
