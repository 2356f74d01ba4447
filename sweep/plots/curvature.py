"""Curvature figures (PNG): the edge the sharpness predicts against the edge measured, and the
sharpness through training against each learning rate's stability threshold.

`write_plots` calls them when the study has `[telemetry] sharpness` data:

* `predicted_edge.png`: per setting, the predicted edge (`lr_predicted_init`, `lr_predicted_early`
  of boundary.parquet) against the measured bracket [lr_stable_max, lr_unstable_min], log-log,
  with the line y = x and the band within a factor of 2 of it;
* `sharpness.png`: per optimizer, the median over seeds of the (preconditioned) sharpness at
  every measured epoch, one line per learning rate, with its threshold 2/η (38/η for Adam)
  dashed in the same colour: the picture of Cohen et al. (2021), Figure 1.

    >>> from sweep.plots.curvature import predicted_edge
    >>> predicted_edge(boundary_df, "plots/predicted_edge.png", "title")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..engines.sharpness import stability_threshold
from ..results import maps
from ..spec import format_value

PREDICTIONS = {"lr_predicted_init": ("o", "from the initialised model"),
               "lr_predicted_early": ("s", "from early training, at the last stable learning rate")}


def has_curvature(boundary_df: pd.DataFrame) -> bool:
    return any(c in boundary_df and boundary_df[c].notna().any() for c in PREDICTIONS)


def _label(row, axes: list[str]) -> str:
    return ", ".join(f"{a}={format_value(row[a])}" for a in axes) or "the study's setting"


def predicted_edge(boundary_df: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """Predicted against measured edge per setting; None without curvature data or measured edges."""
    df = boundary_df[boundary_df["lr_stable_max"].notna()]
    if not has_curvature(boundary_df) or df.empty:
        return None
    varying = [a for a in maps.setting_axes(boundary_df) if boundary_df[a].astype(object).nunique(dropna=False) > 1]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    lo = df["lr_stable_max"].to_numpy(float)
    hi = df["lr_unstable_min"].to_numpy(float)
    values = np.concatenate([lo, hi[np.isfinite(hi)], *(df[c].dropna().to_numpy(float) for c in PREDICTIONS)])
    span = np.array([values.min() / 3, values.max() * 3])
    ax.fill_between(span, span / 2, span * 2, color="#ddd", label="within a factor of 2")
    ax.plot(span, span, color="#777", lw=1, label="predicted = measured")
    colours = [f"C{i}" for i in range(10)]
    for i, (_, row) in enumerate(df.iterrows()):
        colour = colours[i % len(colours)]
        low, high = float(row["lr_stable_max"]), float(row["lr_unstable_min"])
        censored = not np.isfinite(high)
        x = low if censored else float(np.sqrt(low * high))
        for column, (marker, _) in PREDICTIONS.items():
            y = row[column]
            if pd.isna(y):
                continue
            ax.plot([x], [y], marker, color=colour, ms=7, mfc="none" if column == "lr_predicted_early" else colour)
            ax.plot([low, x if censored else high], [y, y], "-", color=colour, lw=1.5, alpha=0.6)
        ax.plot([], [], "-", color=colour, label=_label(row, varying))
    for column, (marker, text) in PREDICTIONS.items():
        ax.plot([], [], marker, color="k", mfc="none" if column == "lr_predicted_early" else "k", label=text)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*span)
    ax.set_ylim(*span)
    ax.set_xlabel("measured edge: bar from the last stable to the first non-stable learning rate")
    ax.set_ylabel("predicted edge: threshold / sharpness\n(2/λ_max for SGD, 38/λ_max(P⁻¹H) for Adam)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)


def sharpness_curves(trials: pd.DataFrame, curves: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """Median (preconditioned) sharpness over seeds per learning rate and measured epoch, one panel
    per optimizer, each learning rate's threshold dashed; runs that ended nan or diverged are left
    out (their curvature after the blow-up says nothing about the edge). None without curvature
    data."""
    if "sharpness" not in curves or curves["sharpness"].notna().sum() == 0:
        return None
    trials = trials[~trials["status"].astype(str).isin(("nan", "diverged"))]
    joined = curves.merge(trials[["trial", "optimizer"]], on="trial")
    joined["optimizer"] = joined["optimizer"].astype(str)
    joined["value"] = np.where(joined["optimizer"] == "sgd", joined["sharpness"], joined["precond_sharpness"])
    joined["lr"] = trials.set_index("trial").loc[joined["trial"], "learning_rate"].to_numpy(float)
    # A log axis: a non-positive value (power iteration meeting a dominant negative eigenvalue, in
    # runs on their way to diverging) is left out.
    joined = joined[joined["value"] > 0]
    optimizers = sorted(joined["optimizer"].unique())
    fig = Figure(figsize=(6 * len(optimizers), 4.8), layout="constrained")
    axes = fig.subplots(1, len(optimizers), squeeze=False)[0]
    for ax, opt in zip(axes, optimizers):
        part = joined[joined["optimizer"] == opt]
        lrs = sorted(part["lr"].unique())
        for i, lr in enumerate(lrs):
            colour = _viridis(i / max(1, len(lrs) - 1))
            med = part[part["lr"] == lr].groupby("epoch")["value"].median()
            ax.plot(med.index, med.to_numpy(), "o-", ms=3, color=colour, label=f"η={lr:.3g}")
            ax.axhline(stability_threshold(opt) / lr, color=colour, ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(min(part["value"].min(), stability_threshold(opt) / max(lrs)) / 2, part["value"].max() * 4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("sharpness λ_max" if opt == "sgd" else "preconditioned sharpness λ_max(P⁻¹H)")
        ax.set_title(f"optimizer={opt}; dashed: {'2' if opt != 'adam' else '38'}/η", fontsize=10)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)


def _viridis(t: float):
    from matplotlib import colormaps

    return colormaps["viridis"](t)
