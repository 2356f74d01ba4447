"""Plots of a study (PNG, matplotlib's Agg canvas; no display needed).

The figures, each readable on its own (titles, axis labels, legends say
what is drawn):

* `pstable.png`: P(stable) over seeds as a heatmap, learning rate across,
  clipping (and any other varying axis) down, one panel per activation and
  scaler (a study of at most `tables.SMALL_STUDY` settings; a larger one has
  `pstable_by_<axis>.png` of `plots.answers` instead);
* `edge_vs_batch.png`: each setting's edge learning rate against batch size,
  one panel per optimizer (when the study varies batch size);
* `curves.png`: loss curves of every seed at the document's failure and fix
  configurations, side by side (when the study holds both);
* `predicted_edge.png`, `sharpness.png` of `plots.curvature` (when the study measured the
  sharpness, `[telemetry]`).

    >>> from sweep.plots.figures import write_plots
    >>> paths = write_plots("results/exploding_gradients")   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..catalog import EXAMPLES, Example
from ..results import maps, reports
from ..results.tables import SMALL_STUDY, edge_rank, top_axes
from ..spec import CLIP_AXES, config_from_dict
from ..spec import format_value as _fmt

PLOTS_DIR = "plots"
# More lines than this in one panel of edge_vs_batch are a tangle: it draws medians instead.
MAX_LINES = 8
FACET_AXES = ("activation", "scaler")
# Colours of the statuses in curve plots, worst first like verdict.STATUSES.
STATUS_COLOURS = {"nan": "#d62728", "diverged": "#ff7f0e", "stalled": "#7f7f7f", "unstable": "#bcbd22",
                  "stable": "#2ca02c", "error": "#9467bd", "timeout": "#8c564b"}


def _varying(df: pd.DataFrame, axes) -> list[str]:
    return [a for a in axes if df[a].astype(object).where(df[a].notna(), None).nunique(dropna=False) > 1]


def clipping_label(row) -> str:
    """'clipnorm=1', 'global_clipnorm=1', 'clipvalue=0.5' or 'no clipping' (Keras allows one kind)."""
    for axis in CLIP_AXES:
        v = row[axis]
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return f"{axis}={_fmt(float(v))}"
    return "no clipping"


def _row_label(row, axes: list[str]) -> str:
    parts = []
    if any(a in CLIP_AXES for a in axes):
        parts.append(clipping_label(row))
    parts += [f"{a}={_fmt(row[a])}" for a in axes if a not in CLIP_AXES]
    return " · ".join(parts) or "(one setting)"


def pstable_heatmap(map_df: pd.DataFrame, path: Path, title: str) -> Path:
    """P(stable) per (row setting, learning rate), one panel per activation x scaler."""
    df = map_df.copy()
    setting = maps.setting_axes(df)
    row_axes = [a for a in _varying(df, setting) if a not in FACET_AXES]
    # Clipping first, so rows read "no clipping", "clipnorm=0.1", ... as the axis.
    row_axes.sort(key=lambda a: (a not in CLIP_AXES, setting.index(a)))
    df["_row"] = [_row_label(r, row_axes) for _, r in df.iterrows()]
    facets = [(a, s) for a in df["activation"].cat.categories for s in df["scaler"].cat.categories
              if ((df["activation"] == a) & (df["scaler"] == s)).any()]
    lrs = sorted(df["learning_rate"].unique())
    rows = list(dict.fromkeys(df.sort_values(row_axes or ["learning_rate"], na_position="first")["_row"]))
    ncols = len({s for _, s in facets})
    nrows = len({a for a, _ in facets})
    fig = Figure(figsize=(max(8.0, 2.5 + 0.55 * len(lrs) * ncols), 1.4 + (0.35 * len(rows) + 0.9) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    acts = list(dict.fromkeys(a for a, _ in facets))
    scs = list(dict.fromkeys(s for _, s in facets))
    image = None
    for (act, sc) in facets:
        ax = axes[acts.index(act)][scs.index(sc)]
        part = df[(df["activation"] == act) & (df["scaler"] == sc)]
        grid = np.full((len(rows), len(lrs)), np.nan)
        text = {}
        for _, r in part.iterrows():
            i, j = rows.index(r["_row"]), lrs.index(r["learning_rate"])
            grid[i, j] = r["p_stable"]
            text[(i, j)] = f"{int(r['n_stable'])}/{int(r['n_seeds'])}"
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_facecolor("#e0e0e0")  # not run: grey
        for (i, j), t in text.items():
            ax.text(j, i, t, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lrs)), [_fmt(float(v)) for v in lrs], rotation=60, fontsize=8)
        # Every panel has the same rows: only the first column names them.
        ax.set_yticks(range(len(rows)), rows if scs.index(sc) == 0 else [], fontsize=8)
        ax.set_xlabel("learning rate")
        ax.set_title(f"activation={act}, scaler={sc}", fontsize=9)
    for ax in axes.flat:
        if not ax.images:
            ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes, label="P(stable); cell: stable/seeds", shrink=0.8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def edge_vs_batch(boundary_df: pd.DataFrame, path: Path, title: str, group_axis: str | None = None) -> Path | None:
    """Edge learning rate against batch size, one panel per optimizer; None if batch size is fixed.

    One line per combination of the other varying axes; when that is more than MAX_LINES,
    one line per value of `group_axis` through the median setting's edge (settings ordered
    by edge, `tables.edge_rank`), so that the figure stays readable at hundreds of settings."""
    df = boundary_df
    if df["batch_size"].nunique() < 2:
        return None
    line_axes = [a for a in _varying(df, maps.setting_axes(df)) if a not in ("batch_size", "optimizer")]
    optimizers = [o for o in df["optimizer"].cat.categories if (df["optimizer"] == o).any()]
    n_lines = df[line_axes].astype(object).drop_duplicates().shape[0] if line_axes else 1
    median = n_lines > MAX_LINES and group_axis in line_axes
    if median:
        line_axes = [group_axis]
    fig = Figure(figsize=(5.5 * len(optimizers) + 2.5, 4.5), layout="constrained")
    axes = fig.subplots(1, len(optimizers), squeeze=False)[0]
    top = float(np.nanmax(df[["lr_stable_max", "lr_unstable_min"]].to_numpy(dtype=float)))
    for ax, opt in zip(axes, optimizers):
        part = df[df["optimizer"] == opt].copy()
        part["_line"] = [_row_label(r, line_axes) for _, r in part.iterrows()]
        n = part["_line"].nunique()
        for k, (label, line) in enumerate(part.groupby("_line", sort=True)):
            sizes = sorted(line["batch_size"].unique())
            ranks = [sorted(edge_rank(r) for _, r in line[line["batch_size"] == b].iterrows()) for b in sizes]
            lo, hi = np.array([r[(len(r) - 1) // 2] for r in ranks], dtype=float).T
            lo, hi = np.where(np.isinf(lo), np.nan, lo), np.where(np.isinf(hi), np.nan, hi)
            x = np.array(sizes, dtype=float) * (1 + 0.04 * (k - n / 2))
            never = np.isnan(lo).all()  # the median setting has nothing stable at any batch size
            drawn = ax.plot(x, hi, "o-", label=label + (" (nothing stable)" if never else ""), ms=4)[0]
            ax.vlines(x, lo, hi, color=drawn.get_color(), alpha=0.5, lw=3)
            beyond = np.isnan(hi) & ~np.isnan(lo)
            ax.plot(x[beyond], lo[beyond], "^", color=drawn.get_color(), ms=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(part["batch_size"].unique()), [str(b) for b in sorted(part["batch_size"].unique())])
        ax.set_xlabel("batch size")
        ax.set_ylabel("learning rate at the edge" + (" (median setting)" if median else ""))
        ax.set_title(f"optimizer={opt}", fontsize=10)
        ax.axhline(top, color="#999", lw=0.5, ls=":")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    what = (f"per {group_axis} and batch size, the edge of the median setting over the other axes; " if median
            else "")
    fig.suptitle(title + f"\n({what}dot: first non-stable learning rate; bar down to the last stable one; "
                 "▲: stable up to the grid's largest)", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _matching(trials: pd.DataFrame, axes: dict) -> pd.DataFrame:
    config = config_from_dict(axes)
    keep = trials["config_id"] == config.config_id
    return trials[keep]


def loss_curves(trials: pd.DataFrame, curves: pd.DataFrame, example: Example, path: Path,
                title: str) -> Path | None:
    """Per-seed loss curves at the example's failure and fix configurations, side by side;
    None when the study holds only one of them."""
    sides = [("document's failure", example.failure), ("document's fix", example.fix)]
    picked = [(name, axes, _matching(trials, example.config(axes))) for name, axes in sides]
    if any(runs.empty for _, _, runs in picked):
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axs = fig.subplots(1, 2, sharey=True)
    for ax, (name, axes, runs) in zip(axs, picked):
        counts = runs["status"].astype(str).value_counts()
        for _, run in runs.iterrows():
            c = curves[curves["trial"] == run["trial"]].sort_values("epoch")
            loss = c["loss"].to_numpy(float)
            colour = STATUS_COLOURS[str(run["status"])]
            ax.plot(c["epoch"], np.where(np.isfinite(loss), loss, np.nan), color=colour, alpha=0.8, lw=1.2)
            if not np.isfinite(loss).all():
                # Mark where it stopped: the last epoch, at the last finite loss before it.
                finite_loss = loss[np.isfinite(loss)]
                ax.plot([int(c["epoch"].iloc[-1])], [finite_loss[-1] if len(finite_loss) else np.nan], "x",
                        color=colour, ms=9)
        l0 = float(runs["initial_loss"].median())
        ax.axhline(l0, color="k", ls="--", lw=0.8, label=f"ℓ0 (initial loss) ≈ {l0:.3g}")
        shown = ", ".join(f"{k}={_fmt(example.config(axes)[k])}" for k in {**example.failure, **example.fix})
        summary = ", ".join(f"{s} {counts[s]}/{len(runs)}" for s in STATUS_COLOURS if counts.get(s, 0))
        ax.set_title(f"{name}: {shown}\n{summary}", fontsize=9)
        ax.set_xlabel("epoch (0: initialised model)")
        finite = curves.loc[curves["trial"].isin(runs["trial"]), "loss"].to_numpy(float)
        finite = finite[np.isfinite(finite) & (finite > 0)]
        if len(finite) and finite.max() / finite.min() > 20:
            ax.set_yscale("log")  # only when the losses span decades; otherwise a log axis hides the shape
        ax.legend(fontsize=8)
    axs[0].set_ylabel("training loss (one line per seed; × = stopped non-finite)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def write_plots(study_dir: str | os.PathLike) -> list[Path]:
    """Every plot the study's data supports, under `<study_dir>/plots/`; returns the files written."""
    from .answers import effects_chart, pstable_by_axis
    from .curvature import has_curvature, predicted_edge, sharpness_curves
    from ..answers.effects import effects

    out = Path(study_dir)
    trials = reports.load_trials(out)
    map_df, boundary_df = maps.build(trials)
    (out / PLOTS_DIR).mkdir(exist_ok=True)
    name = out.name
    example = str(trials["example"].iloc[0]) if len(trials) else ""
    written = []
    if len(map_df):
        effects_df = effects(map_df, boundary_df)
        ranked = top_axes(effects_df, boundary_df, n=len(maps.setting_axes(boundary_df)))
        if len(boundary_df) <= SMALL_STUDY:  # beyond, one row per setting is unreadable: pstable_by_<axis>
            written.append(pstable_heatmap(map_df, out / PLOTS_DIR / "pstable.png",
                                           f"{name} ({example})\nP(stable) over seeds; grey: not run"))
        edge = edge_vs_batch(boundary_df, out / PLOTS_DIR / "edge_vs_batch.png",
                             f"{name} ({example}): edge learning rate against batch size",
                             next((a for a in ranked if a not in ("batch_size", "optimizer")), None))
        chart = effects_chart(effects_df, out / PLOTS_DIR / "effects.png",
                              f"{name} ({example}): what each value does to the edge, against its axis's reference")
        written += [p for p in (edge, chart) if p]
        if ranked:
            written.append(pstable_by_axis(map_df, ranked[0], out / PLOTS_DIR / f"pstable_by_{ranked[0]}.png",
                                           f"{name} ({example}): P(stable) by {ranked[0]},\nthe axis whose "
                                           "values move the edge most"))
    if has_curvature(boundary_df):
        curves_df = reports.load_curves(out)
        written += [p for p in (
            predicted_edge(boundary_df, out / PLOTS_DIR / "predicted_edge.png",
                           f"{name} ({example}): the edge the curvature predicts against the edge measured"),
            sharpness_curves(trials, curves_df, out / PLOTS_DIR / "sharpness.png",
                             f"{name} ({example}): sharpness during training (median over seeds)")) if p]
    if example in EXAMPLES:
        ex = EXAMPLES[example]
        curves = loss_curves(trials, reports.load_curves(out), ex, out / PLOTS_DIR / "curves.png",
                             f"{name} ({example}): loss curves, {ex.document} {ex.section}")
        if curves:
            written.append(curves)
    return written
