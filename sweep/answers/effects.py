"""Effects: which knob moves the stability edge, and by how much.

For every setting axis a study varies (a model knob of `[grid.model]` too), each of its
values is compared with the axis's *reference* (no clipping for the clip axes, scaler
"none", otherwise the example's default, a catalog knob's declared default included; the
study's most common value when the reference was not swept, ties to the first in order,
which is always so for a user builder's knobs, whose defaults are not read) over *pairs*
of settings that differ in that axis only:

* the edge shift of a pair is edge(with the value) / edge(with the reference),
  the edge being a setting's `lr_unstable_min`. An open bracket is censored,
  never a number: a setting stable to the end of its grid has an edge above
  its `lr_stable_max`, a setting with nothing stable an edge at or below its
  smallest trained learning rate. A pair's shift is therefore an interval
  [low, high], exact when both edges are known, open (0 or inf) otherwise;
  its direction is up / down when the interval excludes 1, same when both
  edges are known and equal, unknown otherwise. A setting that stalls at every
  learning rate (too slow, not too fast) also has nothing stable, so the pairs
  whose value side has nothing stable are counted with their most common
  `edge_status` (`n_never_stable`, `never_stable_status`);
* the stable range of a setting is log10(lr_stable_max / lr_stable_min), the
  decades of learning rate that train stably up to the edge, within the grid
  tried (undefined when nothing is stable); a pair's range change is the
  value's range minus the reference's;
* a *failing cell* is a (reference setting, learning rate) whose seeds are not
  stable by majority (`maps.is_stable`) and whose paired cell (same other
  axes, same learning rate) trained; it is *rescued* when that paired cell is
  stable. The rescue rate is rescued / failing over all pairs.

Per (axis, value) the median shift over pairs is taken twice, with every
censored pair at its low end and at its high end; when the two agree the
median is exact, otherwise only a bound is reported (`edge_shift_censored`
">=" or "<="; "between" or "unknown" leave `edge_shift` null and the two
medians in `edge_shift_min` / `edge_shift_max`). Its 95 % interval is a
bootstrap over pairs (2000 resamples, fixed seed): the 2.5 % point of the
low-end medians and the 97.5 % point of the high-end medians::

    >>> import pandas as pd
    >>> from sweep.answers import effects
    >>> from sweep.results import maps
    >>> trials = pd.DataFrame({
    ...     "study": "d", "example": "exploding_gradients", "activation": "relu", "scaler": "none",
    ...     "optimizer": "adam", "loss": "binary_crossentropy", "schedule": "constant", "batch_size": 32,
    ...     "global_clipnorm": None, "clipvalue": None, "seed": 0, "initial_loss": 0.7, "final_loss": 0.3,
    ...     "clipnorm": [None, None, None, 1.0, 1.0, 1.0],
    ...     "learning_rate": [0.01, 0.1, 1.0, 0.01, 0.1, 1.0],
    ...     "status": ["stable", "nan", "nan", "stable", "stable", "nan"]})
    >>> m, b = maps.build(trials)
    >>> print(effects.describe(effects.effects(m, b).iloc[0]))
    clipnorm=1 vs none: edge x10 [10, 10] over 1 pair (up 100 %, down 0 %, same 0 %); stable range +1.00 decades; rescues 50 % of 2 failing cells
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..catalog import EXAMPLES
from ..results.maps import frame, is_stable, modal_status, setting_axes, table, typed_map
from ..results.tables import edge_move
from ..results.reports import ResultsError, open_checked, write_atomic
from ..spec import CATEGORICAL_AXES, CLIP_AXES, example_defaults, format_value

EFFECTS_FILE = "effects.parquet"

# Bootstrap of the median shift: resamples and seed fixed so that a report is reproducible.
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0

EFFECT_COLUMNS = pa.schema([
    ("study", pa.string()),
    ("example", pa.string()),
    ("axis", pa.string()),
    ("value", pa.string()),  # spec.format_value: absent clipping is "none"
    ("reference", pa.string()),
    ("reference_source", pa.string()),  # default | most common (default not swept) | given
    ("n_pairs", pa.int64()),  # settings differing from a reference setting in this axis only
    ("n_censored", pa.int64()),  # pairs with an open edge bracket on either side
    ("edge_shift", pa.float64()),  # median of lr_unstable_min ratios; a bound when censored
    ("edge_shift_censored", pa.string()),  # "" exact | ">=" | "<=" | "between" | "unknown" (edge_shift null)
    ("edge_shift_min", pa.float64()),  # the median with every censored pair at its low end
    ("edge_shift_max", pa.float64()),  # ... and at its high end
    ("edge_shift_low", pa.float64()),  # bootstrap 95 % interval over pairs (0 / inf: open)
    ("edge_shift_high", pa.float64()),
    ("share_up", pa.float64()),  # shares of n_pairs; unknown: the interval contains 1
    ("share_down", pa.float64()),
    ("share_same", pa.float64()),
    ("share_unknown", pa.float64()),
    ("n_range_pairs", pa.int64()),  # pairs where both settings have a stable learning rate
    ("range_decades", pa.float64()),  # median log10(lr_stable_max / lr_stable_min) with the value
    ("range_decades_reference", pa.float64()),  # ... with the reference
    ("range_change", pa.float64()),  # median over pairs of the difference, in decades
    ("n_never_stable", pa.int64()),  # pairs whose setting with the value has no stable learning rate
    ("never_stable_status", pa.string()),  # their most common edge_status (e.g. stalled: too slow, not too fast)
    ("n_failing_cells", pa.int64()),
    ("n_rescued", pa.int64()),
    ("rescue_rate", pa.float64()),  # n_rescued / n_failing_cells
])

# The reference of an axis when the example's default is not the question: no clipping, no scaling.
_RULE_REFERENCE = {**{a: None for a in CLIP_AXES}, "scaler": "none"}


def _key(axis: str, v) -> str:
    """An axis value as an exact text key (clipping: repr of the float; absent: "none"; a
    boolean knob as TOML writes it)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if axis in CLIP_AXES:
        return "none" if isinstance(v, str) and v.lower() == "none" else repr(float(v))
    if axis == "batch_size":
        return str(int(v))
    if axis == "momentum":
        return repr(float(v))
    if isinstance(v, (bool, np.bool_)):
        return format_value(v)
    return str(v)


def _raw(axis: str, key: str):
    if axis in CLIP_AXES:
        return None if key == "none" else float(key)
    if axis == "momentum":
        return float(key)
    return int(key) if axis == "batch_size" else key


def _keys(col: pd.Series, axis: str) -> np.ndarray:
    codes, uniques = pd.factorize(col)  # nulls get code -1: the table's last entry
    lut = np.array([_key(axis, u) for u in uniques] + ["none"], dtype=object)
    return lut[codes]


def _sort_key(axis: str, key: str):
    if axis in CATEGORICAL_AXES:
        allowed = CATEGORICAL_AXES[axis]
        return (allowed.index(key) if key in allowed else len(allowed), key)
    if key == "none":
        return (-math.inf, key)
    try:
        return (float(key), key)
    except ValueError:  # a knob's text values, in text order after any number
        return (math.inf, key)



def _prepare(map_df: pd.DataFrame, boundary_df: pd.DataFrame, cells: pd.Series | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, settings): the map's and boundary's setting axes as text keys, with what effects need."""
    axes = list(setting_axes(boundary_df))
    ns = map_df["n_seeds"].to_numpy(dtype=np.int64)
    nk = map_df["n_stable"].to_numpy(dtype=np.int64)
    # maps.is_stable is the rule; it is looked up once per distinct (n_seeds, n_stable).
    combos, inverse = np.unique(np.stack([ns, nk], axis=1), axis=0, return_inverse=True)
    rule = np.array([is_stable({"n_seeds": int(a), "n_stable": int(b)}) for a, b in combos], dtype=bool)
    if cells is not None and not cells.index.equals(map_df.index):
        raise ValueError("cells must be a boolean mask over map_df's rows (the same index)")
    c = pd.DataFrame({a: _keys(map_df[a], a) for a in axes})
    c["learning_rate"] = map_df["learning_rate"].to_numpy(dtype=float)
    c["trained"] = ns > 0
    c["stable"] = rule[inverse.ravel()] if len(ns) else np.zeros(0, bool)
    c["masked"] = True if cells is None else cells.to_numpy(dtype=bool)

    s = pd.DataFrame({a: _keys(boundary_df[a], a) for a in axes})
    smin = boundary_df["lr_stable_min"].to_numpy(dtype=float)
    smax = boundary_df["lr_stable_max"].to_numpy(dtype=float)
    umin = boundary_df["lr_unstable_min"].to_numpy(dtype=float)
    first = (c[c["trained"]].groupby(axes)["learning_rate"].min()
             .rename("first_lr").reset_index())
    first_lr = s.merge(first, on=axes, how="left")["first_lr"].to_numpy(dtype=float)
    exact, to_end = ~np.isnan(umin), np.isnan(umin) & ~np.isnan(smin)
    # Edge bracket: exact; above lr_stable_max (stable to the grid's end); at or below the
    # smallest trained learning rate (nothing stable; nothing trained: anywhere).
    s["edge_low"] = np.where(exact, umin, np.where(to_end, smax, 0.0))
    s["edge_high"] = np.where(exact, umin, np.where(to_end, np.inf, np.nan_to_num(first_lr, nan=np.inf)))
    s["range_decades"] = np.log10(smax / smin)
    s["never_stable"] = np.isnan(smin)
    s["edge_status"] = boundary_df["edge_status"].astype(object).to_numpy()
    return c, s


def _pairs(prep: tuple[pd.DataFrame, pd.DataFrame], axis: str, vkey: str, rkey: str,
           masked_only: bool = False) -> pd.DataFrame:
    cells, settings = prep
    # The setting axes are the settings' columns before what `_prepare` adds (edge_low first).
    others = [a for a in settings.columns[:settings.columns.get_loc("edge_low")] if a != axis]
    ref = settings[settings[axis] == rkey].drop(columns=axis)
    val = settings[settings[axis] == vkey].drop(columns=axis)
    pairs = ref.merge(val, on=others, suffixes=("_reference", "_value"), validate="one_to_one")
    rc = cells[cells[axis] == rkey].drop(columns=axis)
    if masked_only:
        rc = rc[rc["masked"]]
        pairs = pairs.merge(rc[others].drop_duplicates(), on=others)
    vc = cells[cells[axis] == vkey].drop(columns=[axis, "masked"])
    cp = rc.merge(vc, on=[*others, "learning_rate"], suffixes=("_reference", "_value"))
    cp = cp[cp["trained_reference"] & cp["trained_value"]]
    cp = cp.assign(n_failing_cells=~cp["stable_reference"], n_rescued=~cp["stable_reference"] & cp["stable_value"])
    counts = cp.groupby(others)[["n_failing_cells", "n_rescued"]].sum().reset_index()
    pairs = pairs.merge(counts, on=others, how="left")
    for col in ("n_failing_cells", "n_rescued"):
        pairs[col] = pairs[col].fillna(0).astype(np.int64)

    with np.errstate(divide="ignore", invalid="ignore"):
        low = pairs["edge_low_value"].to_numpy() / pairs["edge_high_reference"].to_numpy()
        high = pairs["edge_high_value"].to_numpy() / pairs["edge_low_reference"].to_numpy()
    pairs["shift_low"], pairs["shift_high"] = low, high
    pairs["direction"] = np.select([(low == high) & (low == 1), low > 1, high < 1], ["same", "up", "down"],
                                   "unknown")
    pairs["range_change"] = pairs["range_decades_value"] - pairs["range_decades_reference"]
    pairs.insert(0, "axis", axis)
    pairs.insert(1, "value", format_value(_raw(axis, vkey)))
    pairs.insert(2, "reference", format_value(_raw(axis, rkey)))
    return pairs


def pair_shifts(map_df: pd.DataFrame, boundary_df: pd.DataFrame, axis: str, value, reference) -> pd.DataFrame:
    """One row per pair of settings differing in `axis` only (value vs reference): the shared
    axes (as text keys), both edge brackets, the shift interval `shift_low`..`shift_high`,
    `direction`, both stable ranges and `range_change` (decades), `n_failing_cells`, `n_rescued`."""
    _check_axis(axis, boundary_df)
    return _pairs(_prepare(map_df, boundary_df), axis, _key(axis, value), _key(axis, reference))


def _median_summary(low: np.ndarray, high: np.ndarray) -> dict:
    """The median shift over pairs with censoring, and its bootstrap interval over pairs."""
    m_lo, m_hi = float(np.median(low)), float(np.median(high))
    idx = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(low), size=(N_BOOTSTRAP, len(low)))
    # "lower"/"higher" pick actual resample medians: no interpolation between a bound and inf.
    ci_low = float(np.quantile(np.median(low[idx], axis=1), 0.025, method="lower"))
    ci_high = float(np.quantile(np.median(high[idx], axis=1), 0.975, method="higher"))
    if m_lo == m_hi:
        flag, shift = "", m_lo
    elif m_hi == math.inf and m_lo > 0:
        flag, shift = ">=", m_lo
    elif m_lo == 0 and m_hi < math.inf:
        flag, shift = "<=", m_hi
    else:
        flag, shift = ("unknown" if m_lo == 0 else "between"), math.nan
    return {"edge_shift": shift, "edge_shift_censored": flag, "edge_shift_min": m_lo, "edge_shift_max": m_hi,
            "edge_shift_low": ci_low, "edge_shift_high": ci_high}


def _summary(pairs: pd.DataFrame) -> dict:
    n = len(pairs)
    out = {"n_pairs": n, "n_censored": int((pairs["shift_low"] != pairs["shift_high"]).sum())}
    if n:
        out.update(_median_summary(pairs["shift_low"].to_numpy(float), pairs["shift_high"].to_numpy(float)))
    else:
        out.update(edge_shift=math.nan, edge_shift_censored="", edge_shift_min=math.nan, edge_shift_max=math.nan,
                   edge_shift_low=math.nan, edge_shift_high=math.nan)
    for d in ("up", "down", "same", "unknown"):
        out[f"share_{d}"] = float((pairs["direction"] == d).mean()) if n else math.nan
    ranged = pairs.dropna(subset=["range_decades_value", "range_decades_reference"])
    out["n_range_pairs"] = len(ranged)
    for col, src in (("range_decades", "range_decades_value"), ("range_decades_reference", "range_decades_reference"),
                     ("range_change", "range_change")):
        out[col] = float(ranged[src].median()) if len(ranged) else math.nan
    never = pairs.loc[pairs["never_stable_value"], "edge_status_value"].dropna()
    out.update(n_never_stable=int(pairs["never_stable_value"].sum()), never_stable_status=modal_status(never))
    failing, rescued = int(pairs["n_failing_cells"].sum()), int(pairs["n_rescued"].sum())
    out.update(n_failing_cells=failing, n_rescued=rescued, rescue_rate=rescued / failing if failing else math.nan)
    return out


def _check_axis(axis: str, boundary_df: pd.DataFrame) -> None:
    if axis not in (axes := setting_axes(boundary_df)):
        raise ValueError(f"axis {axis!r} is not a setting axis; allowed: {', '.join(axes)}")


def _identity(boundary_df: pd.DataFrame) -> dict:
    if boundary_df.empty:
        return {"study": None, "example": None}
    return {"study": str(boundary_df["study"].iloc[0]), "example": str(boundary_df["example"].iloc[0])}


def axis_effect(map_df: pd.DataFrame, boundary_df: pd.DataFrame, axis: str, value, reference,
                cells: pd.Series | None = None) -> dict:
    """One effects row (EFFECT_COLUMNS' names) of `axis`=`value` against `reference`.

    `cells`, a boolean mask over map_df's rows, restricts the failing cells to the masked
    reference cells and the pairs to those whose reference setting has a masked cell."""
    _check_axis(axis, boundary_df)
    vkey, rkey = _key(axis, value), _key(axis, reference)
    pairs = _pairs(_prepare(map_df, boundary_df, cells), axis, vkey, rkey, masked_only=cells is not None)
    return {**_identity(boundary_df), "axis": axis, "value": format_value(_raw(axis, vkey)),
            "reference": format_value(_raw(axis, rkey)), "reference_source": "given", **_summary(pairs)}


def _nominal(example: str, axes: tuple[str, ...]) -> dict:
    """The reference each axis has by rule: a catalog knob's declared default; a user builder's
    knob has none here (its signature is the user's code, which readers never import)."""
    defaults = {**example_defaults(example),
                **({k: knob.default for k, knob in EXAMPLES[example].knobs.items()} if example in EXAMPLES else {})}
    return {a: _RULE_REFERENCE.get(a, defaults.get(a)) for a in axes}


def reference_values(example: str, boundary_df: pd.DataFrame) -> dict[str, object]:
    """Each setting axis's reference: no clipping, scaler "none", otherwise the example's default;
    where the study did not sweep that value, the value most of its settings have."""
    axes = setting_axes(boundary_df)
    out = _nominal(example, axes)
    for axis in axes:
        keys = pd.Series(_keys(boundary_df[axis], axis)) if axis in boundary_df else pd.Series([], dtype=object)
        if keys.empty or (keys == _key(axis, out[axis])).any():
            continue
        counts = keys.value_counts()
        top = sorted(counts.index[counts == counts.max()], key=lambda k: _sort_key(axis, k))[0]
        out[axis] = _raw(axis, top)
    return out


def _effect_rows(map_df: pd.DataFrame, boundary_df: pd.DataFrame, reference: dict | None) -> list[dict]:
    if boundary_df.empty:
        return []
    identity = _identity(boundary_df)
    given = dict(reference or {})
    for axis in given:
        _check_axis(axis, boundary_df)
    axes = setting_axes(boundary_df)
    refs = {**reference_values(identity["example"], boundary_df), **given}
    nominal = _nominal(identity["example"], axes)
    prep = _prepare(map_df, boundary_df)
    rows = []
    for axis in axes:
        present = sorted(set(prep[1][axis]), key=lambda k: _sort_key(axis, k))
        rkey = _key(axis, refs[axis])
        if len(present) < 2:
            continue
        if rkey not in present:
            raise ValueError(f"reference {axis}={format_value(_raw(axis, rkey))} is not in the study; "
                             f"its values: {', '.join(format_value(_raw(axis, k)) for k in present)}")
        source = "given" if axis in given else ("default" if rkey == _key(axis, nominal[axis]) else "most common")
        for vkey in present:
            if vkey != rkey:
                rows.append({**identity, "axis": axis, "value": format_value(_raw(axis, vkey)),
                             "reference": format_value(_raw(axis, rkey)), "reference_source": source,
                             **_summary(_pairs(prep, axis, vkey, rkey))})
    return rows


def effects(map_df: pd.DataFrame, boundary_df: pd.DataFrame, reference: dict | None = None) -> pd.DataFrame:
    """Every value of every setting axis the study varies, against its reference (`reference`
    overrides `reference_values` per axis); one row each, typed like `load_effects`."""
    return frame(_effect_rows(map_df, boundary_df, reference), EFFECT_COLUMNS)


def _g(v: float) -> str:
    return f"{v:.3g}"


def describe(row) -> str:
    """One line of plain words for one effects row (a dict or a DataFrame row)."""
    head = f"{row['axis']}={row['value']} vs {row['reference']}"
    if row["reference_source"] == "most common":
        head += " (most common; the default was not swept)"
    n = int(row["n_pairs"])
    if n == 0:
        return f"{head}: no pairs (no setting differs from a reference setting in {row['axis']} only)"
    flag = row["edge_shift_censored"]
    if flag in ("", ">=", "<="):
        shift = f"x{flag}{_g(row['edge_shift'])}"
    elif flag == "between":
        shift = f"x{_g(row['edge_shift_min'])} to {_g(row['edge_shift_max'])}"
    else:
        shift = "x? (unknown: censored both ways)"
    pct = lambda s: f"{100 * s:.0f} %"  # noqa: E731
    censored = f", {int(row['n_censored'])} censored" if row["n_censored"] else ""
    line = (f"{head}: edge {shift} [{_g(row['edge_shift_low'])}, {_g(row['edge_shift_high'])}] over {n} "
            f"pair{'s' if n != 1 else ''}{censored} (up {pct(row['share_up'])}, down {pct(row['share_down'])}, "
            f"same {pct(row['share_same'])})")
    if row["n_never_stable"]:
        status = f" ({row['never_stable_status']})" if isinstance(row["never_stable_status"], str) else ""
        line += f"; nothing stable with the value in {int(row['n_never_stable'])} pairs{status}"
    if row["n_range_pairs"]:
        line += f"; stable range {row['range_change']:+.2f} decades"
    failing = int(row["n_failing_cells"])
    if failing:
        line += f"; rescues {pct(row['rescue_rate'])} of {failing} failing cells"
    else:
        line += "; no failing cells to rescue"
    return line


def write(study_dir: str | os.PathLike, map_df: pd.DataFrame, boundary_df: pd.DataFrame) -> pd.DataFrame:
    """Write `effects.parquet` of a study atomically; returns the frame."""
    rows = _effect_rows(map_df, boundary_df, None)
    write_atomic(table(rows, EFFECT_COLUMNS), Path(study_dir) / EFFECTS_FILE)
    return frame(rows, EFFECT_COLUMNS)


def load_effects(study_dir: str | os.PathLike) -> pd.DataFrame:
    """`effects.parquet` of a study directory, checked (schema_version, columns)."""
    path = Path(study_dir) / EFFECTS_FILE
    if not path.is_file():
        raise ResultsError(f"{path}: no such file; `sweep effects {path.parent}` writes it")
    return typed_map(open_checked(path, EFFECT_COLUMNS).read(columns=EFFECT_COLUMNS.names).cast(EFFECT_COLUMNS))


def lines(effects_df: pd.DataFrame) -> list[str]:
    """Every effect in plain words, the largest move of the edge first."""
    moved = sorted(effects_df.to_dict("records"), key=lambda e: -edge_move(e))
    return [describe(e) for e in moved] or ["no axis varies: nothing to compare"]


def strongest(effects_df: pd.DataFrame, axis: str) -> str:
    """The effect of `axis`'s value that moves the edge most, in plain words."""
    rows = effects_df[effects_df["axis"] == axis]
    moved = [edge_move(e) for _, e in rows.iterrows()]
    return describe(rows.iloc[moved.index(max(moved))]) if moved else f"{axis}: no paired settings"
