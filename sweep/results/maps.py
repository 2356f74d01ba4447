"""Stability maps: P(stable) per (setting, learning rate) and each setting's edge.

A *setting* is every axis but learning rate (`spec.SETTING_AXES` and the study's model knobs,
`reports.model_axes`); its runs at
one learning rate are its seeds. Two reports come from the trials of a study:

* `map.parquet`, one row per (setting, learning rate): how many seeds ran,
  how many were stable, P(stable) with its 95 % Wilson interval, the most
  common status and the median final-loss ratio (final loss / l0);
* `boundary.parquet`, one row per setting: the edge bracket
  [`lr_stable_max`, `lr_unstable_min`] (the first non-stable learning rate
  above the smallest stable one, and the largest stable one below it; a
  learning rate is stable when a strict majority of its seeds are),
  `lr_stable_min` (below it, learning is too slow or nothing is stable),
  `edge_status` (what happens beyond the edge), `n_runs`, and
  `lr_sensitivity` (Wortsman et al. 2023, "Small-scale proxies for
  large-scale Transformer training instabilities": the mean over the
  learning-rate grid of min(final loss, l0) minus the best final loss),
  and, with `[telemetry] sharpness`, the edge the curvature predicts
  (`lr_predicted_init`, `lr_predicted_early`: `predicted_edges`).

Both are rebuilt from `trials/` at the end of every study session and
written atomically with `schema_version` metadata::

    >>> import pandas as pd
    >>> from sweep.results.maps import build
    >>> trials = pd.DataFrame({
    ...     "study": "d", "example": "exploding_gradients", "activation": "relu", "scaler": "none",
    ...     "optimizer": "adam", "loss": "binary_crossentropy", "schedule": "constant",
    ...     "batch_size": 32, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
    ...     "learning_rate": [0.001, 0.001, 0.01, 0.01, 0.1, 0.1],
    ...     "seed": [0, 1, 0, 1, 0, 1],
    ...     "status": ["stable", "stable", "stable", "stable", "stalled", "stable"],
    ...     "initial_loss": 0.7, "final_loss": [0.5, 0.5, 0.3, 0.3, 0.7, 0.4]})
    >>> m, b = build(trials)
    >>> m[["learning_rate", "n_stable", "p_stable", "modal_status"]].values.tolist()
    [[0.001, 2, 1.0, 'stable'], [0.01, 2, 1.0, 'stable'], [0.1, 1, 0.5, 'stalled']]
    >>> b[["lr_stable_min", "lr_stable_max", "lr_unstable_min", "edge_status", "n_runs"]].values.tolist()
    [[0.001, 0.01, 0.1, 'stalled', 6]]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..spec import AXES, AXIS_DEFAULTS, SETTING_AXES, SGD_AXES, SpecError, Study
from ..verdict import ORCHESTRATOR_STATUSES, STATUSES
from . import faults
from .rangetest import LRFIND_COLUMNS, with_suggestions
from .reports import (CATEGORIES, CURVE_COLUMNS, SCHEMA_VERSION, TRIAL_COLUMNS, ResultsError, added, arrow_table,
                      load_trials, model_axes, model_field, model_fields, open_checked, read_checked, typed,
                      with_model_fields, write_atomic)

# The trials columns the maps are built from (`write` reads no others: a study holds millions of rows).
# The curvature columns feed the predicted edge (`predicted_edges`).
CURVATURE_INPUT = ("sharpness_init", "precond_sharpness_init", "sharpness_early", "precond_sharpness_early")
MAP_INPUT = ("trial", "study", "example", *AXES, "status", "initial_loss", "final_loss", *CURVATURE_INPUT)
MAP_FILE = "map.parquet"
BOUNDARY_FILE = "boundary.parquet"

# z of a two-sided 95 % interval.
WILSON_Z = 1.959963984540054

# Axis columns keep the trials' Arrow types: one place for each column's type.
_IDENTITY = [TRIAL_COLUMNS.field("study"), TRIAL_COLUMNS.field("example")]
_AXIS_FIELDS = [TRIAL_COLUMNS.field(a) for a in AXES]
_SETTING_FIELDS = [TRIAL_COLUMNS.field(a) for a in SETTING_AXES]

MAP_COLUMNS = pa.schema(_IDENTITY + _AXIS_FIELDS + [
    ("n_seeds", pa.int64()),  # runs that trained to a verdict (error/timeout excluded)
    ("n_stable", pa.int64()),
    ("p_stable", pa.float64()),
    ("p_low", pa.float64()),  # 95 % Wilson interval of p_stable
    ("p_high", pa.float64()),
    ("modal_status", pa.string()),  # most common status; ties go to the earlier of verdict.STATUSES
    ("median_final_loss_ratio", pa.float64()),  # a non-finite final loss counts as +inf
])

BOUNDARY_COLUMNS = pa.schema(_IDENTITY + _SETTING_FIELDS + [
    ("lr_stable_min", pa.float64()),  # smallest stable learning rate (null: none stable)
    ("lr_stable_max", pa.float64()),  # largest stable learning rate below the edge
    ("lr_unstable_min", pa.float64()),  # first non-stable learning rate above lr_stable_min (null: no edge)
    ("edge_status", pa.string()),  # modal status at lr_unstable_min; with nothing stable, of all runs
    ("n_runs", pa.int64()),
    ("lr_sensitivity", pa.float64()),
    # The LR range test's suggestion (sweep lrfind); null where it was not run.
    added("lr_rangetest_suggestion", pa.float64(), "2"),
    # The edge the curvature predicts (`predicted_edges`); null without [telemetry] sharpness.
    added("lr_predicted_init", pa.float64(), "2"),
    added("lr_predicted_early", pa.float64(), "2"),
])


def map_schemas(knobs: Sequence[pa.Field]) -> tuple[pa.Schema, pa.Schema]:
    """The map and boundary columns of a study whose knobs have these columns (after its own axes)."""
    return (with_model_fields(MAP_COLUMNS, knobs, SETTING_AXES[-1]),
            with_model_fields(BOUNDARY_COLUMNS, knobs, SETTING_AXES[-1]))


# Every column of the reports that hold axes, but the knobs': no knob may take one of these
# names (its column would clash, or be taken for that column), so they also tell a frame's knob
# columns from its own (`setting_axes`).
REPORT_COLUMNS = frozenset(n for schema in (TRIAL_COLUMNS, CURVE_COLUMNS, MAP_COLUMNS, BOUNDARY_COLUMNS,
                                            LRFIND_COLUMNS) for n in schema.names)


def check_knob_names(study: Study) -> None:
    """Refuse (`SpecError` on `grid.model.<name>`) a knob named as a column the reports hold."""
    problems = [(f"grid.model.{k}", f"{k!r} is a column the reports hold already; rename the builder's "
                 "parameter (a knob's name is its column's name)") for k in study.model if k in REPORT_COLUMNS]
    if problems:
        raise SpecError(study.path, problems)


def setting_axes(frame: pd.DataFrame) -> tuple[str, ...]:
    """The setting axes of a trials, map or boundary frame: the sweep's own, then its model knobs."""
    return (*SETTING_AXES, *model_axes(frame.columns, REPORT_COLUMNS))


def wilson(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (NaN, NaN when n is 0).

    >>> [round(v, 3) for v in wilson(5, 5)]
    [0.566, 1.0]
    """
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound is exactly 0 or 1; the formula leaves rounding dust.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def modal_status(statuses: pd.Series) -> str | None:
    """The most common status; ties go to the status checked first by the verdict rules."""
    counts = statuses.astype(str).value_counts()
    if counts.empty:
        return None
    top = counts.max()
    return next(s for s in STATUSES if counts.get(s, 0) == top)


def _codes(trials: pd.DataFrame, axes: tuple[str, ...]) -> np.ndarray:
    """One integer per row naming its values of `axes`, numbered in order of first appearance
    (an absent clipping value is a value of its own)."""
    key = np.zeros(len(trials), np.int64)
    for a in axes:
        codes, uniques = pd.factorize(trials[a].astype(object), use_na_sentinel=False)
        key = key * max(1, len(uniques)) + codes
        key = pd.factorize(key)[0]  # renumbered, so that the product never overflows
    return key


def build(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The map and boundary rows of a study's trials (as `load_trials` returns them)."""
    map_table, boundary_table = _tables(trials)
    return typed_map(map_table), typed_map(boundary_table)


def _tables(trials: pd.DataFrame) -> tuple[pa.Table, pa.Table]:
    """`build`'s reports as Arrow tables. The cells (setting, learning rate) are summed with numpy
    over all rows at once (a study holds tens of thousands of them); each setting's edge is then
    found from its few cells (`edge`, `lr_sensitivity`)."""
    # A frame made before an axis was added (or by hand) has it at its default, as older files read.
    trials = trials.reset_index(drop=True).assign(**{a: v for a, v in AXIS_DEFAULTS.items() if a not in trials})
    axes = setting_axes(trials)
    knobs = axes[len(SETTING_AXES):]
    map_schema, boundary_schema = map_schemas([model_field(k, trials[k].dtype) for k in knobs])
    if trials.empty:
        return table([], map_schema), table([], boundary_schema)
    setting = _codes(trials, axes)
    lr = trials["learning_rate"].astype(float).to_numpy()
    # Cells in the order of their setting's first row, then by learning rate.
    order = np.lexsort((lr, setting))
    cell_of_sorted = np.r_[0, np.cumsum((np.diff(setting[order]) != 0) | (np.diff(lr[order]) != 0))]
    cell = np.empty(len(trials), np.int64)
    cell[order] = cell_of_sorted
    n_cells = int(cell_of_sorted[-1]) + 1
    first = np.full(n_cells, len(trials), np.int64)
    np.minimum.at(first, cell, np.arange(len(trials)))

    status = trials["status"].astype(str).to_numpy()
    status_code = pd.Categorical(status, categories=STATUSES).codes
    counts = np.zeros((n_cells, len(STATUSES)), np.int64)
    np.add.at(counts, (cell, status_code), 1)
    trained = ~np.isin(status, ORCHESTRATOR_STATUSES)
    n = counts[:, [STATUSES.index(s) for s in STATUSES if s not in ORCHESTRATOR_STATUSES]].sum(axis=1)
    k = counts[:, STATUSES.index("stable")]
    modal = np.array(STATUSES, dtype=object)[counts.argmax(axis=1)]  # ties: the earlier status

    l0 = trials["initial_loss"].astype(float).to_numpy()
    final = trials["final_loss"].astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = final / l0
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    median = _medians(cell[trained], ratio[trained], n_cells)
    capped = np.where(np.isfinite(final), np.minimum(final, l0), l0)
    capped_mean = np.bincount(cell[trained], capped[trained], n_cells) / np.maximum(n, 1)
    low, high = _wilson(k, n)

    cells = trials.iloc[first]
    columns = {name: cells[name].astype(object).to_numpy() for name in ("study", "example", *AXES, *knobs)}
    columns.update(n_seeds=n, n_stable=k, p_stable=np.where(n > 0, k / np.maximum(n, 1), np.nan), p_low=low,
                   p_high=high, modal_status=modal, median_final_loss_ratio=median)
    map_table = _columns_table(columns, n_cells, map_schema)

    # Settings: runs of cells in cell order (cells are sorted by setting, then learning rate).
    cell_setting = setting[first]
    starts = np.flatnonzero(np.r_[True, cell_setting[1:] != cell_setting[:-1]])
    runs_per_cell = counts.sum(axis=1)
    lrs, ns, ks, modals = lr[first].tolist(), n.tolist(), k.tolist(), modal.tolist()
    boundary = []
    for i, j in zip(starts, np.r_[starts[1:], n_cells]):
        per_lr = [{"learning_rate": lrs[c], "n_seeds": ns[c], "n_stable": ks[c], "modal_status": modals[c]}
                  for c in range(i, j)]
        means = capped_mean[i:j][n[i:j] > 0]
        boundary.append({**edge(per_lr), "n_runs": int(runs_per_cell[i:j].sum()),
                         "lr_sensitivity": float(means.mean() - means.min()) if len(means) else math.nan,
                         "lr_rangetest_suggestion": None})
    columns = {name: columns[name][starts] for name in ("study", "example", *axes)}
    curvature = {c: trials[c].astype(float).to_numpy() if c in trials else np.full(len(trials), np.nan)
                 for c in CURVATURE_INPUT}
    boundary_of_cell = np.cumsum(np.r_[True, cell_setting[1:] != cell_setting[:-1]]) - 1
    stable_max = np.array([np.nan if b["lr_stable_max"] is None else b["lr_stable_max"] for b in boundary])
    predicted = predicted_edges(boundary_of_cell[cell], lr, trials["optimizer"].astype(str).to_numpy(), curvature,
                                stable_max, *(trials[a].to_numpy() if a in trials else None for a in SGD_AXES))
    for i, b in enumerate(boundary):
        b.update({name: values[i] for name, values in predicted.items()})
    columns.update({name: [b[name] for b in boundary] for name in boundary[0]})
    return map_table, _columns_table(columns, len(starts), boundary_schema)


def predicted_edges(setting: np.ndarray, lr: np.ndarray, optimizer: np.ndarray, curvature: dict[str, np.ndarray],
                    stable_max: np.ndarray, momentum: np.ndarray | None = None,
                    nesterov: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per setting, the learning rate at which the measured curvature sits on the optimizer's
    stability threshold (`sharpness.stability_threshold`: 2/λ_max for SGD, (2 + 2β)/λ_max with
    momentum β, 38/λ_max(P⁻¹H) for Adam, 2/λ_max(P⁻¹H) for RMSprop), from the rows' setting
    index, learning rate, optimizer (momentum, Nesterov) and curvature columns, and each
    setting's `lr_stable_max` (NaN: none):

    * `lr_predicted_init`: from the initialised model, the median over the setting's runs of
      `*_init` (it depends on the seed and scaler only, not on the learning rate);
    * `lr_predicted_early`: from early training, the median over the seeds at the setting's
      largest stable learning rate of `*_early` (the first measured epoch after 0). Cohen et
      al. (2021) find that a stable full-batch run's sharpness rises until it reaches its own
      threshold 2/η; so this equals `lr_stable_max` when the run at the edge already trains at
      the edge of stability by then, and is larger while its sharpness is still rising.

    NaN where nothing was measured.

    >>> nan = float("nan")
    >>> curv = {"sharpness_init": np.array([1.0, 1.0, 3.0]), "precond_sharpness_init": np.full(3, nan),
    ...         "sharpness_early": np.array([1.5, 2.0, 30.0]), "precond_sharpness_early": np.full(3, nan)}
    >>> out = predicted_edges(np.zeros(3, int), np.array([0.1, 1.0, 10.0]), np.array(["sgd"] * 3), curv,
    ...                       np.array([1.0]))
    >>> out["lr_predicted_init"].tolist(), out["lr_predicted_early"].tolist()
    ([2.0], [1.0])
    """
    from ..engines.sharpness import stability_threshold

    n_settings = len(stable_max)
    sgd = optimizer == "sgd"
    momentum = np.zeros(len(lr)) if momentum is None else np.asarray(momentum, dtype=float)
    nesterov = np.zeros(len(lr), bool) if nesterov is None else np.asarray(nesterov, dtype=bool)
    threshold = np.ones(len(lr))
    kinds = pd.DataFrame({"optimizer": optimizer, "momentum": momentum, "nesterov": nesterov})
    for (name, beta, nest), rows in kinds.groupby(["optimizer", "momentum", "nesterov"]).indices.items():
        threshold[rows] = stability_threshold(str(name), float(beta), bool(nest))
    setting_threshold = np.full(n_settings, np.nan)
    setting_threshold[setting] = threshold  # every row of a setting has its optimizer
    out = {}
    for name, when, rows in (("lr_predicted_init", "init", np.ones(len(lr), bool)),
                             ("lr_predicted_early", "early", lr == stable_max[setting])):
        value = np.where(sgd, curvature[f"sharpness_{when}"], curvature[f"precond_sharpness_{when}"])
        keep = rows & np.isfinite(value) & (value > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = setting_threshold / _medians(setting[keep], value[keep], n_settings)
    return out


def _medians(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """The median of `values` per group (NaN for a group without values), as np.median gives it."""
    order = np.lexsort((values, groups))
    groups, values = groups[order], values[order]
    size = np.bincount(groups, minlength=n_groups)
    start = np.r_[0, np.cumsum(size)[:-1]]
    out = np.full(n_groups, np.nan)
    has = size > 0
    lo = values[(start + (size - 1) // 2)[has]]
    hi = values[(start + size // 2)[has]]
    with np.errstate(invalid="ignore"):
        out[has] = np.where(lo == hi, lo, (lo + hi) / 2)  # inf and inf: inf, not nan
    return out


def _wilson(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`wilson` over arrays."""
    pairs = [wilson(int(a), int(b)) for a, b in zip(k, n)] if len(k) else []
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _columns_table(columns: dict, n: int, schema: pa.Schema) -> pa.Table:
    arrays = [pa.array(list(columns[f.name]) if n else [], type=f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema).replace_schema_metadata({"schema_version": SCHEMA_VERSION})


def is_stable(cell: dict) -> bool:
    """A (setting, learning rate) is stable when a strict majority of its seeds are."""
    return cell["n_seeds"] > 0 and 2 * cell["n_stable"] > cell["n_seeds"]


def edge(cells: list[dict]) -> dict:
    """The edge bracket of one setting from its cells sorted by learning rate.

    >>> c = lambda lr, k, s: {"learning_rate": lr, "n_seeds": 3, "n_stable": k, "modal_status": s}
    >>> edge([c(1e-4, 0, "stalled"), c(1e-3, 3, "stable"), c(1e-2, 2, "stable"), c(0.1, 0, "nan")])
    {'lr_stable_min': 0.001, 'lr_stable_max': 0.01, 'lr_unstable_min': 0.1, 'edge_status': 'nan'}
    """
    stable = [c for c in cells if is_stable(c)]
    if not stable:
        counts = pd.Series([c["modal_status"] for c in cells if c["modal_status"]])
        return {"lr_stable_min": None, "lr_stable_max": None, "lr_unstable_min": None,
                "edge_status": modal_status(counts)}
    low = stable[0]["learning_rate"]
    beyond = next((c for c in cells if c["learning_rate"] > low and c["n_seeds"] > 0 and not is_stable(c)), None)
    if beyond is None:
        return {"lr_stable_min": low, "lr_stable_max": stable[-1]["learning_rate"], "lr_unstable_min": None,
                "edge_status": None}
    below = [c["learning_rate"] for c in stable if c["learning_rate"] < beyond["learning_rate"]]
    return {"lr_stable_min": low, "lr_stable_max": below[-1], "lr_unstable_min": beyond["learning_rate"],
            "edge_status": beyond["modal_status"]}


def lr_sensitivity(runs: pd.DataFrame) -> float:
    """Wortsman et al. (2023): mean over learning rates of min(final loss, l0) minus the best.

    Per learning rate the loss is the mean over seeds of min(final loss, l0), a
    non-finite final loss counting as l0 (it learned nothing); the best is the
    lowest of these. 0 means every learning rate reaches the best loss.

    >>> runs = pd.DataFrame({"learning_rate": [0.01, 0.1, 1.0], "status": "stable",
    ...                      "final_loss": [0.2, 0.3, float("nan")], "initial_loss": 0.7})
    >>> round(lr_sensitivity(runs), 6)
    0.2
    """
    ok = ~runs["status"].astype(str).isin(ORCHESTRATOR_STATUSES)
    runs = runs[ok]
    if runs.empty:
        return math.nan
    l0 = runs["initial_loss"].astype(float).to_numpy()
    final = runs["final_loss"].astype(float).to_numpy()
    capped = np.where(np.isfinite(final), np.minimum(final, l0), l0)
    per_lr = pd.Series(capped, index=runs.index).groupby(runs["learning_rate"].to_numpy()).mean()
    return float(per_lr.mean() - per_lr.min())


# The map files' categoricals: the trials' axes with their fixed categories, and the
# status columns over the verdict's statuses, so that every study and session agrees.
MAP_CATEGORIES = {**{a: c for a, c in CATEGORIES.items() if a in AXES},
                  "modal_status": STATUSES, "edge_status": STATUSES}


def typed_map(arrow: pa.Table) -> pd.DataFrame:
    """A report table as pandas: axes and statuses as categoricals with their fixed categories."""
    df = arrow.to_pandas()
    for col, cats in MAP_CATEGORIES.items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col], categories=list(cats))
    df["example"] = df["example"].astype("category")
    return df


def frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    """Report rows as a typed frame (`typed_map`) of `schema`."""
    return typed_map(table(rows, schema))


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Report rows as a table of `schema`, absent values (None, NaN, pd.NA) as nulls."""
    return arrow_table([{n: _plain(r.get(n)) for n in schema.names} for r in rows], schema)


def _plain(v):
    # pandas NA / NaN in an axis column is an absent value (clipping); floats stay floats.
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def recorded(study_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The study's trials, typed (all columns, or `columns`); an empty frame of the trials'
    columns when none are recorded yet."""
    out = Path(study_dir)
    return load_trials(out, columns) if (out / "trials").is_dir() else typed(TRIAL_COLUMNS.empty_table())


def write(study_dir: str | os.PathLike, trials: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild `map.parquet` and `boundary.parquet` from the study's trials (`trials`, else its
    MAP_INPUT columns read with `recorded`); returns both."""
    out = Path(study_dir)
    # A session that recorded nothing yet still leaves (empty) maps, so readers find the files.
    map_table, boundary_table = _tables(recorded(out, MAP_INPUT) if trials is None else trials)
    boundary_table = with_suggestions(out, boundary_table)  # lrfind.parquet's, when the study has one
    write_atomic(map_table, out / MAP_FILE)
    faults.point("maps")
    write_atomic(boundary_table, out / BOUNDARY_FILE)
    return typed_map(map_table), typed_map(boundary_table)


def _load(path: Path, schema: pa.Schema) -> pd.DataFrame:
    if not path.is_file():
        raise ResultsError(f"{path}: no such file; a finished study writes it (or run `sweep map {path.parent}`)")
    pf = open_checked(path, schema)
    return typed_map(read_checked(pf, with_model_fields(schema, model_fields(pf.schema_arrow), SETTING_AXES[-1])))


def load_map(path: str | os.PathLike) -> pd.DataFrame:
    """`map.parquet` of a study directory, typed like `load_trials` (categorical axes and status)."""
    return _load(Path(path) / MAP_FILE, MAP_COLUMNS)


def load_boundary(path: str | os.PathLike) -> pd.DataFrame:
    """`boundary.parquet` of a study directory, typed like `load_trials`."""
    return _load(Path(path) / BOUNDARY_FILE, BOUNDARY_COLUMNS)
