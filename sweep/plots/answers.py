"""The answers as pictures: what each knob does to the edge, and where learning is stable.

* `effects.png`: per (axis, value against the axis's reference) one row, the median edge
  shift (a dot; a bar when censoring leaves it between two values; an arrow from the bound
  when only a bound is known) and its bootstrap 95 % interval (a thin line, an arrow where it
  is open), on a log axis with a line at x1; the rescue rate written at the right;
* `pstable_by_<axis>.png`: mean P(stable) over the other axes' settings, learning rate
  across, the values of the axis that moves the edge most down: a few rows whatever the
  number of settings.

    >>> from sweep.answers import effects
    >>> from sweep.results import maps, reports
    >>> from sweep.plots.answers import effects_chart
    >>> trials = reports.load_trials("results/full")                      # doctest: +SKIP
    >>> m, b = maps.build(trials)                                           # doctest: +SKIP
    >>> effects_chart(effects.effects(m, b), "plots/effects.png", "full")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..spec import format_value

# Arrows and bars share the colour of their axis; these are matplotlib's tab10.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _limits(effects_df: pd.DataFrame) -> tuple[float, float]:
    """x limits covering every finite, positive shift and interval end, and x1, with a margin."""
    cols = ["edge_shift", "edge_shift_min", "edge_shift_max", "edge_shift_low", "edge_shift_high"]
    v = effects_df[cols].to_numpy(float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    low, high = min(v.min(initial=1.0), 1.0), max(v.max(initial=1.0), 1.0)
    return low / 3, high * 3


def _arrow(ax, start: float, end: float, y: float, colour: str, **kw) -> None:
    ax.annotate("", xy=(end, y), xytext=(start, y),
                arrowprops={"arrowstyle": "-|>", "color": colour, "shrinkA": 0, "shrinkB": 0, **kw})


def _draw_interval(ax, row, y: float, lim: tuple[float, float], colour: str) -> None:
    """The bootstrap interval: a thin line, an arrow to the plot's edge where it is open."""
    lo, hi = float(row["edge_shift_low"]), float(row["edge_shift_high"])
    if math.isnan(lo) or math.isnan(hi):
        return
    open_lo, open_hi = lo <= 0, hi == math.inf
    a, b = (lim[0] if open_lo else lo), (lim[1] if open_hi else hi)
    ax.plot([a, b], [y, y], color=colour, lw=1.2, alpha=0.6, solid_capstyle="butt")
    for is_open, start, end in ((open_lo, a * 1.6, a), (open_hi, b / 1.6, b)):
        if is_open:
            _arrow(ax, start, end, y, colour, lw=1.2, alpha=0.6)


def _draw_shift(ax, row, y: float, lim: tuple[float, float], colour: str) -> None:
    """The median shift: a dot when exact, an arrow from the bound when censored one way,
    a bar between the two medians when censoring leaves it between them."""
    flag, shift = row["edge_shift_censored"], float(row["edge_shift"])
    if flag == "":
        ax.plot([shift], [y], "o", color=colour, ms=7, zorder=3)
    elif flag in (">=", "<="):
        end = shift * 4 if flag == ">=" else shift / 4
        ax.plot([shift], [y], "|", color=colour, ms=12, mew=2.5, zorder=3)
        _arrow(ax, shift, min(max(end, lim[0]), lim[1]), y, colour, lw=2.5, mutation_scale=16)
    elif flag == "between":
        ax.plot([row["edge_shift_min"], row["edge_shift_max"]], [y, y], color=colour, lw=6, alpha=0.8,
                solid_capstyle="butt", zorder=3)
    else:
        ax.text(1, y, "  unknown: censored both ways", va="center", fontsize=8, color=colour)


def effects_chart(effects_df: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """The edge shift of every (axis, value) against its reference; None when no axis varies."""
    df = effects_df[effects_df["n_pairs"] > 0].reset_index(drop=True)
    if df.empty:
        return None
    lim = _limits(df)
    fig = Figure(figsize=(10, 1.6 + 0.38 * len(df)), layout="constrained")
    ax = fig.subplots()
    axes = list(dict.fromkeys(df["axis"]))
    labels = []
    for y, row in df.iterrows():
        colour = COLOURS[axes.index(row["axis"]) % len(COLOURS)]
        _draw_interval(ax, row, y, lim, colour)
        _draw_shift(ax, row, y, lim, colour)
        labels.append(f"{row['axis']}={row['value']} vs {row['reference']} ({int(row['n_pairs'])} pairs)")
        rescue = (f"rescues {100 * row['rescue_rate']:.0f} % of {int(row['n_failing_cells'])}"
                  if row["n_failing_cells"] else "nothing failing")
        ax.text(1.01, y, rescue, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    for y in [i - 0.5 for i in range(1, len(df)) if df["axis"][i] != df["axis"][i - 1]]:
        ax.axhline(y, color="#ccc", lw=0.8)
    ax.axvline(1, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(*lim)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"x{v:g}"))
    ax.set_ylim(len(df) - 0.5, -0.5)
    ax.set_yticks(range(len(df)), labels, fontsize=9)
    ax.set_xlabel("edge shift: first non-stable learning rate with the value / with the reference (x1: no move)")
    ax.grid(axis="x", which="major", color="#eee")
    ax.set_title(f"{title}\ndot: median shift over pairs; thick bar: median between two values (censored pairs); "
                 "arrow: only a bound known;\nthin line: bootstrap 95 % interval (arrow: open). Right: cells "
                 "failing with the reference that the value makes stable", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


def pstable_by_axis(map_df: pd.DataFrame, axis: str, path: str | Path, title: str) -> Path:
    """Mean P(stable) per (value of `axis`, learning rate) over the settings of the other axes."""
    df = map_df[map_df["n_seeds"] > 0].assign(_v=map_df[axis].astype(object).map(format_value))
    order = list(dict.fromkeys(df.sort_values(axis, na_position="first")["_v"]))
    lrs = sorted(df["learning_rate"].unique())
    mean = df.pivot_table(index="_v", columns="learning_rate", values="p_stable", aggfunc="mean").reindex(
        index=order, columns=lrs)
    count = df.pivot_table(index="_v", columns="learning_rate", values="p_stable", aggfunc="size").reindex(
        index=order, columns=lrs)
    fig = Figure(figsize=(max(8.5, 2.5 + 0.7 * len(lrs)), 1.9 + 0.55 * len(order)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(mean.to_numpy(float)), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_facecolor("#e0e0e0")
    for i in range(len(order)):
        for j in range(len(lrs)):
            if not math.isnan(mean.iat[i, j]):
                ax.text(j, i, f"{mean.iat[i, j]:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lrs)), [format_value(float(v)) for v in lrs], rotation=45)
    ax.set_yticks(range(len(order)), [f"{axis}={v}" for v in order])
    ax.set_xlabel("learning rate")
    settings = int(count.max().max()) if count.notna().any().any() else 0
    fig.colorbar(image, ax=ax, label="mean P(stable)", shrink=0.9)
    ax.set_title(f"{title}\nmean over the other axes' settings (up to {settings} per cell) of P(stable) over "
                 "seeds; grey: not run", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)
