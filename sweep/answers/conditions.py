"""Where each failure happens: the shortest conjunction of axis conditions that describes it.

For every failure status present in a study's trials, `conditions` finds a rule of at
most four terms, one per axis: a range of learning rates (`learning_rate >= a`,
`learning_rate <= b` or `a <= learning_rate <= b`, bounds from the grid's values) or a
set of values of any other axis (`optimizer in {sgd}`; numeric setting axes are sets
of their values too, absent clipping is "none"). Each rule carries its precision (the
share of the runs it matches that have the status) and its coverage (the share of the
status's runs it matches)::

    >>> import pandas as pd
    >>> from sweep.answers.conditions import conditions, describe
    >>> rows = [{"learning_rate": lr, "optimizer": opt, "clipnorm": clip, "seed": seed,
    ...          "status": "nan" if lr >= 1 and opt == "sgd" else "stable"}
    ...         for lr in (0.01, 0.1, 1.0, 3.0) for opt in ("adam", "sgd")
    ...         for clip in (None, 1.0) for seed in (0, 1)]
    >>> for _, row in conditions(pd.DataFrame(rows)).iterrows():
    ...     print(describe(row))
    nan where learning_rate >= 1 and optimizer in {sgd}: precision 100 %, covers 100 % of 8 nan runs

The search is a beam search of our own, not a library's: the rule learners on PyPI
(`wittgenstein`'s RIPPER, `imodels`' rule sets) learn a classifier made of several
rules, grow and prune them on random splits of the data and write terms their own way,
while the answer wanted here is one conjunction in the grid's terms, found the same
way every time. The trials are first counted per
cell (one cell per distinct combination of axis values), so the work does not grow
with the seeds; every candidate term is a 0/1 row over cells, and one matrix product
scores every one-term extension of a rule at once.

* Candidate terms: every learning-rate range between two grid values (one-sided at
  the grid's ends, never the whole grid); per other axis, every proper subset of its
  values when it has at most `MAX_EXHAUSTIVE` of them, else single values, their
  complements, and the prefixes of the values ordered by the status's share (for a
  two-class target the best split of a categorical lies among these, Breiman et al.
  1984, "Classification and Regression Trees", section 4.2).
* Objective: F1 of precision and coverage, 2 TP / (matched + status runs). It counts
  a run wrongly described as failing (precision) and a failing run left out
  (coverage) alike, so "everywhere" wins only when the status is spread everywhere.
  A floor on coverage with precision maximised instead rewards tiny pure corners and
  needs a second knob.
* Beam: `BEAM_WIDTH` rules per length, extended by one term on an unused axis that
  narrows the match and keeps some of the status's runs; rules matching the same
  cells as a kept one are dropped. Among rules within `TOLERANCE` of the best F1 the
  fewest terms win, then the higher F1, then the first in axis and value order
  (learning rate, then `spec.SETTING_AXES`), so the same trials give the same rule in
  any row order.

Runs with an orchestrator status (error, timeout) trained to no verdict: they are left
out of the rules of the training statuses (numerator and denominator); an error or
timeout rule is measured over all runs.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..results.maps import setting_axes
from ..results.reports import (CATEGORIES, MODEL_AXIS, ResultsError, added, arrow_table, model_fields, open_checked,
                               read_checked, write_atomic)
from ..spec import AXIS_DEFAULTS, SETTING_AXES, format_value
from ..verdict import ORCHESTRATOR_STATUSES, STATUSES

CONDITIONS_FILE = "conditions.parquet"

# The axes a rule may name, in the order its terms are written and ties are broken; a study's
# model knobs (`maps.setting_axes`) follow them.
RULE_AXES = ("learning_rate", *SETTING_AXES)
FAILURE_STATUSES = tuple(s for s in STATUSES if s != "stable")
MAX_TERMS = 4
BEAM_WIDTH = 12
# One F1 point: a term that improves the description by less is not worth reading.
TOLERANCE = 0.01
# An axis with at most this many values offers every proper subset (62 at 6 values).
MAX_EXHAUSTIVE = 6

CONDITION_COLUMNS = pa.schema([
    ("study", pa.string()),
    ("example", pa.string()),
    ("status", pa.string()),
    ("conditions", pa.string()),  # Rule.text(): "learning_rate >= 0.3 and optimizer in {sgd}"
    ("n_terms", pa.int64()),
    ("learning_rate_min", pa.float64()),  # null: no lower bound
    ("learning_rate_max", pa.float64()),  # null: no upper bound
    # spec.format_value's text; null: any. An axis added since (`spec.AXIS_DEFAULTS`) came with schema 4.
    *[added(f"{a}_in", pa.list_(pa.string()), "4") if a in AXIS_DEFAULTS else (f"{a}_in", pa.list_(pa.string()))
      for a in SETTING_AXES],
    ("precision", pa.float64()),  # share of the matched runs that have the status
    ("coverage", pa.float64()),  # share of the status's runs that are matched
    ("n_runs", pa.int64()),  # runs with the status
    ("n_matched", pa.int64()),  # runs the rule matches
    ("n_considered", pa.int64()),  # runs the rule was measured over (training statuses: no error/timeout)
])


def condition_schema(knobs: Sequence[str]) -> pa.Schema:
    """The conditions columns of a study with these model knobs: a `<knob>_in` each, marked as a
    knob's (`reports.MODEL_AXIS`), after the sweep's own axes' conditions."""
    i = CONDITION_COLUMNS.get_field_index(f"{SETTING_AXES[-1]}_in") + 1
    fields = list(CONDITION_COLUMNS)
    extra = [pa.field(f"{k}_in", pa.list_(pa.string()), metadata=MODEL_AXIS) for k in knobs]
    return pa.schema(fields[:i] + extra + fields[i:], metadata=CONDITION_COLUMNS.metadata)


@dataclass(frozen=True)
class Rule:
    """A conjunction of terms `(axis, "range", (low|None, high|None))` or `(axis, "in", (values...))`,
    values as `spec.format_value` writes them, with what it scored on the trials it was found on."""

    terms: tuple
    precision: float
    coverage: float
    n_target: int
    n_matched: int

    def text(self) -> str:
        return " and ".join(_term_text(t) for t in self.terms) or "everywhere"

    def mask(self, trials: pd.DataFrame) -> np.ndarray:
        """Which rows of `trials` the rule matches."""
        keep = np.ones(len(trials), dtype=bool)
        for axis, kind, arg in self.terms:
            if kind == "range":
                values = trials[axis].to_numpy(dtype=float)
                low, high = arg
                if low is not None:
                    keep &= values >= low
                if high is not None:
                    keep &= values <= high
            else:
                keep &= _labels(trials[axis]).isin(arg).to_numpy()
        return keep


def _term_text(term: tuple) -> str:
    axis, kind, arg = term
    if kind == "in":
        return f"{axis} in {{{', '.join(arg)}}}"
    low, high = (None if v is None else format_value(float(v)) for v in arg)
    if low == high:
        return f"{axis} = {low}"
    if high is None:
        return f"{axis} >= {low}"
    if low is None:
        return f"{axis} <= {high}"
    return f"{low} <= {axis} <= {high}"


def _labels(column: pd.Series) -> pd.Series:
    """An axis column as the text rules compare: `spec.format_value` of each value."""
    codes, uniques = pd.factorize(column.astype(object), use_na_sentinel=False)
    text = np.array([format_value(v) for v in uniques] or [""], dtype=object)
    return pd.Series(text[codes], index=column.index)


def _value_order(column: pd.Series) -> list[str]:
    """An axis's values present in `column`, in a fixed order: absent clipping and then
    numbers ascending; names in the spec's order (unknown names sorted after)."""
    present = column.dropna().unique()
    if pd.api.types.is_numeric_dtype(column):
        ordered = ["none"] * bool(column.isna().any()) + [format_value(v) for v in sorted(present)]
        return list(dict.fromkeys(ordered))
    names = {str(v) for v in present}
    known = CATEGORIES.get(str(column.name), ())
    return [v for v in known if v in names] + sorted(names - set(known))


@dataclass(frozen=True)
class _Space:
    """The trials counted per cell, and every candidate term as a 0/1 row over cells."""

    runs: np.ndarray  # runs per cell
    hits: np.ndarray  # runs with the target per cell
    terms: list  # candidate terms, in tie-break order
    axis_of: np.ndarray  # index into the rule axes (RULE_AXES, then the knobs) of each term
    rows: np.ndarray  # terms x cells, 0 / 1


def _space(trials: pd.DataFrame, target: np.ndarray) -> _Space:
    rule_axes = ("learning_rate", *setting_axes(trials))
    axes = [a for a in rule_axes if a in trials.columns]
    codes, values = [], []
    for axis in axes:
        if axis == "learning_rate":
            lr = trials[axis].to_numpy(dtype=float)
            grid = np.unique(lr)
            codes.append(np.searchsorted(grid, lr))
            values.append([float(v) for v in grid])
        else:
            order = _value_order(trials[axis])
            codes.append(pd.Categorical(_labels(trials[axis]), categories=order).codes.astype(np.int64))
            values.append(order)
    # np.unique sorts the cells, so the row order of the trials does not matter.
    cells, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    runs = np.bincount(inverse, minlength=len(cells))
    hits = np.bincount(inverse[target], minlength=len(cells))

    terms, axis_of, rows = [], [], []
    for k, axis in enumerate(axes):
        code = cells[:, k]
        if axis == "learning_rate":
            grid = values[k]
            for lo, hi in itertools.combinations_with_replacement(range(len(grid)), 2):
                if (lo, hi) == (0, len(grid) - 1):
                    continue
                bounds = (None if lo == 0 else grid[lo], None if hi == len(grid) - 1 else grid[hi])
                terms.append((axis, "range", bounds))
                rows.append((code >= lo) & (code <= hi))
                axis_of.append(rule_axes.index(axis))
        else:
            for subset in _subsets(code, runs, hits, len(values[k])):
                terms.append((axis, "in", tuple(values[k][i] for i in subset)))
                rows.append(np.isin(code, subset))
                axis_of.append(rule_axes.index(axis))
    # Integer products are exact and run in numpy's own loops: a BLAS thread pool on a busy
    # machine made the float form ten times slower.
    matrix = np.array(rows, dtype=np.int64).reshape(len(rows), len(cells))
    return _Space(runs, hits, terms, np.array(axis_of, dtype=int), matrix)


def _subsets(code: np.ndarray, runs: np.ndarray, hits: np.ndarray, n_values: int) -> list[tuple[int, ...]]:
    """The value subsets (as sorted value indices) an axis offers as terms."""
    everything = tuple(range(n_values))
    if n_values <= MAX_EXHAUSTIVE:
        return [s for r in range(1, n_values) for s in itertools.combinations(everything, r)]
    share = (np.bincount(code, weights=hits, minlength=n_values)
             / np.bincount(code, weights=runs, minlength=n_values))
    by_share = np.argsort(-share, kind="stable")
    found = [(v,) for v in everything] + [tuple(i for i in everything if i != v) for v in everything]
    found += [tuple(sorted(by_share[:r].tolist())) for r in range(2, n_values - 1)]
    return list(dict.fromkeys(found))


def find_rule(trials: pd.DataFrame, target: np.ndarray | pd.Series, max_terms: int = MAX_TERMS) -> Rule:
    """The shortest conjunction of at most `max_terms` axis terms that describes where `target`
    (one bool per row of `trials`, by position) holds; precision and coverage over these rows.

    Every row counts: leave out the rows that should not (`conditions` leaves out error and
    timeout runs for the training statuses). ValueError when no row has the target."""
    target = np.asarray(target, dtype=bool).reshape(-1)
    if len(target) != len(trials):
        raise ValueError(f"target has {len(target)} values for {len(trials)} trials; give one per row")
    n_target = int(target.sum())
    if n_target == 0:
        raise ValueError("no run has the target: it happens nowhere in these trials")
    if not isinstance(max_terms, int) or max_terms < 0:
        raise ValueError(f"max_terms is {max_terms!r}; allowed: an integer >= 0")
    space = _space(trials, target)
    key, mask = _search(space, n_target, max_terms)
    tp, matched = int(space.hits[mask].sum()), int(space.runs[mask].sum())
    return Rule(tuple(space.terms[t] for t in key), tp / matched, tp / n_target, n_target, matched)


def _search(space: _Space, n_target: int, max_terms: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The beam search of the module docstring: the chosen rule as term indices, and its cells."""
    everywhere = np.ones(len(space.runs), dtype=bool)
    found = [((), everywhere, 2 * n_target / (space.runs.sum() + n_target))]
    beam, seen = [((), everywhere)], {everywhere.tobytes()}
    for _ in range(max_terms):
        children: dict[tuple[int, ...], float] = {}
        for key, mask in beam:
            tp = space.rows @ (space.hits * mask)
            matched = space.rows @ (space.runs * mask)
            usable = (tp > 0) & (matched < space.runs[mask].sum()) & ~np.isin(space.axis_of, space.axis_of[list(key)])
            for t in np.flatnonzero(usable):
                children.setdefault(tuple(sorted((*key, int(t)))), 2 * tp[t] / (matched[t] + n_target))
        beam = []
        for key, score in sorted(children.items(), key=lambda kv: (-kv[1], kv[0])):
            mask = np.all(space.rows[list(key)] > 0, axis=0)
            if mask.tobytes() in seen:  # the same runs as a rule already kept (shorter, or first in order)
                continue
            seen.add(mask.tobytes())
            found.append((key, mask, score))
            beam.append((key, mask))
            if len(beam) == BEAM_WIDTH:
                break
        if not beam:
            break
    best = max(score for _, _, score in found)
    key, mask, _ = min((f for f in found if f[2] >= best - TOLERANCE), key=lambda f: (len(f[0]), -f[2], f[0]))
    return key, mask


def conditions(trials: pd.DataFrame, max_terms: int = MAX_TERMS) -> pd.DataFrame:
    """One row per failure status present in `trials` (in `verdict.STATUSES` order): its rule."""
    return _typed(arrow_table(_condition_rows(trials, max_terms), _schema_of(trials)))


def _schema_of(trials: pd.DataFrame) -> pa.Schema:
    return condition_schema(setting_axes(trials)[len(SETTING_AXES):])


def _condition_rows(trials: pd.DataFrame, max_terms: int) -> list[dict]:
    trials = trials.reset_index(drop=True)
    rows: list[dict] = []
    if trials.empty:
        return rows
    status = trials["status"].astype(str).to_numpy()
    trained = ~np.isin(status, ORCHESTRATOR_STATUSES)
    identity = {c: str(trials[c].iloc[0]) if c in trials.columns else None for c in ("study", "example")}
    for s in FAILURE_STATUSES:
        if not (status == s).any():
            continue
        considered = np.ones(len(trials), dtype=bool) if s in ORCHESTRATOR_STATUSES else trained
        rule = find_rule(trials[considered], status[considered] == s, max_terms)
        rows.append({**identity, **_row(s, rule), "n_considered": int(considered.sum())})
    return rows


def _row(status: str, rule: Rule) -> dict:
    row: dict[str, Any] = {"status": status, "conditions": rule.text(), "n_terms": len(rule.terms),
                           "precision": rule.precision, "coverage": rule.coverage,
                           "n_runs": rule.n_target, "n_matched": rule.n_matched}
    for axis, kind, arg in rule.terms:
        if kind == "range":
            row[f"{axis}_min"], row[f"{axis}_max"] = arg
        else:
            row[f"{axis}_in"] = list(arg)
    return row


def rule_of(row: Any) -> Rule:
    """The Rule of a conditions row (a `conditions` / `load_conditions` row, Series or dict)."""
    def given(v: Any) -> bool:
        return v is not None and not (np.isscalar(v) and pd.isna(v))

    terms = []
    low, high = row.get("learning_rate_min"), row.get("learning_rate_max")
    if given(low) or given(high):
        terms.append(("learning_rate", "range", (float(low) if given(low) else None,
                                                 float(high) if given(high) else None)))
    knobs = [k[:-3] for k in row.keys() if k.endswith("_in") and k not in CONDITION_COLUMNS.names]
    for axis in (*SETTING_AXES, *knobs):
        values = row.get(f"{axis}_in")
        if given(values):
            terms.append((axis, "in", tuple(str(v) for v in values)))
    return Rule(tuple(terms), float(row["precision"]), float(row["coverage"]), int(row["n_runs"]),
                int(row["n_matched"]))


def _percent(share: float) -> str:
    """A share in whole percent that never rounds a miss to 100 % nor a hit to 0 %."""
    if math.isnan(share):
        return "?"
    p = round(100 * share)
    if 0 < share < 1:
        p = min(max(p, 1), 99)
    return str(p)


def describe(row_or_status_and_rule: Any) -> str:
    """One line: a conditions row, or a `(status, Rule)` pair, explained.

    >>> describe(("nan", Rule((("learning_rate", "range", (0.3, None)), ("optimizer", "in", ("sgd",))),
    ...                       0.94, 0.88, 412, 386)))
    'nan where learning_rate >= 0.3 and optimizer in {sgd}: precision 94 %, covers 88 % of 412 nan runs'
    """
    x = row_or_status_and_rule
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], Rule):
        status, rule = x
    else:
        status, rule = str(x["status"]), rule_of(x)
    where = f"where {rule.text()}" if rule.terms else "everywhere"
    return (f"{status} {where}: precision {_percent(rule.precision)} %, "
            f"covers {_percent(rule.coverage)} % of {rule.n_target:,} {status} runs")


def _typed(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    df["status"] = pd.Categorical(df["status"], categories=list(STATUSES))
    return df


def write(study_dir: str | os.PathLike, trials: pd.DataFrame) -> pd.DataFrame:
    """`conditions.parquet` of a study directory, rebuilt from its trials (atomically); returns it."""
    table = arrow_table(_condition_rows(trials, MAX_TERMS), _schema_of(trials))
    write_atomic(table, Path(study_dir) / CONDITIONS_FILE)
    return _typed(table)


def load_conditions(path: str | os.PathLike) -> pd.DataFrame:
    """`conditions.parquet` of a study directory, checked (schema version, columns) and typed."""
    p = Path(path) / CONDITIONS_FILE
    if not p.is_file():
        raise ResultsError(f"{p}: no such file; it is written from the study's trials with its maps")
    pf = open_checked(p, CONDITION_COLUMNS)
    return _typed(read_checked(pf, condition_schema([f.name[:-3] for f in model_fields(pf.schema_arrow)])))


def lines(conditions_df: pd.DataFrame) -> list[str]:
    """Where each failure occurs, in plain words."""
    return [describe(c) for _, c in conditions_df.iterrows()] or ["no run failed"]
