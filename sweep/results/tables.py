"""What `sweep map` and `sweep show` print: the edge of every setting, or of the axes that matter
most; the runs themselves.

A study of a few settings reads best one row per setting (`map_table`). A
study of hundreds does not fit a terminal that way, so by default `sweep map`
pivots the edge over the two axes whose values move it most (`top_axes`, from
the effects) and summarises the other axes in each row (`pivot_table`): the
share of settings stable at each learning rate, the median edge bracket and
the spread of the edges. Both keep the learning-rate strip whole: one mark per
learning rate, never folded.

    >>> from sweep.results import maps, reports
    >>> from sweep.results.tables import map_table
    >>> trials = reports.load_trials("results/quickstart")              # doctest: +SKIP
    >>> map_df, boundary = maps.build(trials)                             # doctest: +SKIP
    >>> table = map_table(map_df, boundary, [1e-3, 1e-2, 1.0, 100.0], "q")  # doctest: +SKIP
"""

from __future__ import annotations

import math

import pandas as pd
from rich import box
from rich.markup import escape
from rich.table import Table

from ..spec import format_value
from . import maps

# One character per learning rate in a setting's strip, so its whole row reads at a glance.
STRIP = {"stable": "+", "unstable": "~", "stalled": "-", "diverged": "^", "nan": "N", "error": "!", "timeout": "!"}
STRIP_LEGEND = ("+ stable  ~ unstable  - stalled  ^ diverged  N nan  ! error/timeout  ? mixed  . not run "
                "(stable: a majority of seeds)")
SHARE_LEGEND = ("+ every setting stable, 9 at least 90 %, ..., 1 at least 10 %, 0 under 10 %, . none, "
                "blank: not run (stable: a majority of seeds)")
# No vertical rules and one space between columns: a pivot fits 80 characters with its strip whole.
COMPACT = {"box": box.SIMPLE_HEAD, "padding": 0, "pad_edge": False, "caption_justify": "left"}
# Up to this many settings `sweep map` prints one row each by default.
SMALL_STUDY = 24
# A pivot of more rows than this uses the single axis that matters most.
MAX_PIVOT_ROWS = 32


def cell_text(v) -> str:
    """A value as a table cell: numbers short (4 significant digits), missing as "-"."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def varying_axes(boundary: pd.DataFrame) -> list[str]:
    """The setting axes that take more than one value in the study."""
    return [a for a in maps.setting_axes(boundary) if boundary[a].astype(object).nunique(dropna=False) > 1]


def _labels(df: pd.DataFrame, axis: str) -> pd.Series:
    return df[axis].astype(object).map(format_value)


def _ordered_labels(df: pd.DataFrame, axis: str) -> list[str]:
    """An axis's values in their natural order (categories, numbers; absent clipping first)."""
    return list(dict.fromkeys(_labels(df.sort_values(axis, na_position="first"), axis)))


def _table(title: str, caption: str, columns: list[tuple[str, str]], rows: list[list[str]],
           folds: str) -> Table:
    """A compact table whose cells are never cut: every column but `folds` is at least as wide as
    its widest cell and header line, so a narrow terminal folds only that one column."""
    table = Table(title=escape(title), caption=escape(caption), **COMPACT)
    for n, (header, justify) in enumerate(columns):
        widest = max([len(r[n]) for r in rows] + [len(line) for line in header.splitlines()])
        table.add_column(escape(header), justify=justify, overflow="fold",
                         **({} if header == folds else {"no_wrap": True, "min_width": widest}))
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    return table


def map_table(map_df: pd.DataFrame, boundary: pd.DataFrame, lrs: list[float], title: str) -> Table:
    """One row per setting: the varying axes, the status strip over the learning-rate grid,
    where learning starts, the edge bracket, what lies beyond it, and the LR sensitivity."""
    varying = varying_axes(boundary)
    axes = maps.setting_axes(boundary)
    cells: dict[tuple, dict] = {}
    first_unstable: dict[tuple, pd.Series] = {}
    for _, r in map_df.iterrows():
        key = tuple(cell_text(r[a]) for a in axes)
        modal = str(r["modal_status"])
        # Stable by majority of seeds shows +; otherwise the modal status (a stable mode
        # without a majority, e.g. 1 stable, 1 nan, 1 diverged, shows ?).
        cells.setdefault(key, {})[r["learning_rate"]] = (
            "+" if maps.is_stable(r) else STRIP.get(modal, "?") if modal != "stable" else "?")
        first_unstable[key, r["learning_rate"]] = r
    same_runs = boundary["n_runs"].nunique() == 1
    # The edge the curvature predicts, beside the measured one, when [telemetry] sharpness ran.
    predicted = bool(boundary[list(PREDICTED)].notna().to_numpy().any()) if set(PREDICTED) <= set(boundary) else False
    rows = []
    for _, b in boundary.iterrows():
        key = tuple(cell_text(b[a]) for a in axes)
        strip = "".join(cells.get(key, {}).get(lr, ".") for lr in lrs)
        if cell_text(b["lr_stable_min"]) == "-":
            edge, beyond = "none", f"{b['edge_status']} (most runs)"
        elif cell_text(b["lr_unstable_min"]) == "-":
            edge, beyond = f"[{cell_text(b['lr_stable_max'])}, -]", "stable to the grid's end"
        else:
            edge = f"[{cell_text(b['lr_stable_max'])}, {cell_text(b['lr_unstable_min'])}]"
            cell = first_unstable[key, b["lr_unstable_min"]]
            beyond = f"{b['edge_status']}, {int(cell['n_stable'])}/{int(cell['n_seeds'])} stable"
        rows.append([*(cell_text(b[a]) for a in varying), strip, cell_text(b["lr_stable_min"]), edge]
                    + ([" / ".join(_short(b[c]) for c in PREDICTED)] if predicted else [])
                    + [beyond, f"{b['lr_sensitivity']:.2g}"] + ([] if same_runs else [str(int(b["n_runs"]))]))
    columns = [(a.replace("_", "\n"), "right") for a in varying] + [
        ("strip", "left"), ("learns\nfrom", "right"), ("edge", "right")] + (
        [("predicted\ninit / early", "right")] if predicted else []) + [
        ("beyond the edge", "left"), ("LR\nsens.", "right")] + ([] if same_runs else [("runs", "right")])
    caption = (f"strip: one mark per learning rate from {cell_text(lrs[0])} to {cell_text(lrs[-1])}: {STRIP_LEGEND}. "
               "edge: [last stable, first non-stable learning rate] (none: nothing stable). beyond the edge: "
               "the status there and its stable seeds. LR sens.: mean over the learning rates of "
               "min(final loss, l0) minus the best (Wortsman et al. 2023)"
               + (". predicted: the learning rate at which the measured sharpness sits on the optimizer's "
                  "stability threshold (2/λ for SGD, 38/λ of P⁻¹H for Adam), from the initialised model and "
                  "from early training at the last stable learning rate (docs/curvature.md)" if predicted else "")
               + (f". Every setting ran {int(boundary['n_runs'].iloc[0])} runs" if same_runs else ""))
    return _table(title, caption, columns, rows, folds="beyond the edge")


PREDICTED = ("lr_predicted_init", "lr_predicted_early")


def _short(v) -> str:
    """A predicted learning rate in 2 significant digits ("-" when missing)."""
    return "-" if v is None or pd.isna(v) else f"{float(v):.2g}"


def edge_move(effect) -> float:
    """How far an effects row shows the edge to move, in |log| of the factor: the distance from 1
    of its median shift's interval [edge_shift_min, edge_shift_max] (censored pairs at either
    end), 0 when that interval holds 1 or the row has no pairs."""
    low, high = float(effect["edge_shift_min"]), float(effect["edge_shift_max"])
    if not effect["n_pairs"] or math.isnan(low) or math.isnan(high) or low <= 1 <= high:
        return 0.0
    return min(abs(math.log(low)) if low > 0 else math.inf, abs(math.log(high)) if high < math.inf else math.inf)


def top_axes(effects_df: pd.DataFrame, boundary: pd.DataFrame, n: int = 2) -> list[str]:
    """The `n` varying axes whose values move the edge most (`edge_move` of their strongest
    value; ties in setting-axis order)."""
    varying = varying_axes(boundary)
    moved = {a: max([edge_move(e) for _, e in effects_df[effects_df["axis"] == a].iterrows()], default=0.0)
             for a in varying}
    return sorted(varying, key=lambda a: -moved[a])[:n]


def edge_rank(b: pd.Series) -> tuple[float, float]:
    """A setting's edge as a sortable pair: nothing stable lowest, stable to the grid's end highest."""
    if pd.isna(b["lr_stable_min"]):
        return (-math.inf, -math.inf)
    high = b["lr_unstable_min"]
    return (float(b["lr_stable_max"]), math.inf if pd.isna(high) else float(high))


def _bracket(rank: tuple[float, float]) -> str:
    if rank[0] == -math.inf:
        return "nothing stable"
    return f"[{cell_text(rank[0])}, {'-' if rank[1] == math.inf else cell_text(rank[1])}]"


def _share_mark(stable: int, ran: int) -> str:
    if ran == 0:
        return " "
    if stable == ran:
        return "+"
    if stable == 0:
        return "."
    return str(min(9, int(10 * stable / ran)))


def pivot_axes(boundary: pd.DataFrame, ranked: list[str]) -> list[str]:
    """The two axes to pivot on, or only the first when their rows would not fit a screen."""
    axes = ranked[:2]
    if len(axes) == 2 and boundary[axes].astype(object).drop_duplicates().shape[0] > MAX_PIVOT_ROWS:
        axes = axes[:1]
    return axes


def pivot_table(map_df: pd.DataFrame, boundary: pd.DataFrame, lrs: list[float], axes: list[str],
                title: str) -> Table:
    """One row per combination of `axes`' values, summarising the settings of the other axes:
    per learning rate the share of them stable, the edge bracket of the median setting (the
    lower median, settings ordered by edge), the middle half of their edges, and what lies
    beyond their edges."""
    others = [a for a in varying_axes(boundary) if a not in axes]
    b = boundary.assign(**{f"_{a}": _labels(boundary, a) for a in axes})
    m = map_df.assign(**{f"_{a}": _labels(map_df, a) for a in axes},
                      _stable=[maps.is_stable(r) for r in map_df[["n_seeds", "n_stable"]].to_dict("records")],
                      _ran=map_df["n_seeds"] > 0)
    keys = [f"_{a}" for a in axes]
    shares = m.groupby(keys + ["learning_rate"], observed=True)[["_stable", "_ran"]].sum()
    order = [_ordered_labels(boundary, a) for a in axes]
    rows = []
    for key, group in b.groupby(keys, observed=True, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ranks = sorted(edge_rank(r) for _, r in group.iterrows())
        strip = "".join(_share_mark(*shares.loc[(*key, lr)]) if (*key, lr) in shares.index else " "
                        for lr in lrs)
        beyond = group["edge_status"].dropna().astype(str).value_counts()
        rows.append(([o.index(k) for o, k in zip(order, key)],
                     [*key, str(len(group)), strip, _bracket(ranks[(len(ranks) - 1) // 2]),
                      f"{_last_stable(ranks[len(ranks) // 4])}..{_last_stable(ranks[(3 * len(ranks) - 1) // 4])}",
                      ", ".join(f"{s} {k}" for s, k in beyond.items() if k) or "-"]))
    columns = [(a, "right") for a in axes] + [("n", "right"), ("share stable", "left"), ("median edge", "right"),
                                              ("middle half", "right"), ("beyond the edge", "left")]
    caption = (f"n: settings in the row ({' x '.join(others) or 'no other axis'}). share stable: per learning "
               f"rate from {cell_text(lrs[0])} to {cell_text(lrs[-1])}, the share of them stable there: "
               f"{SHARE_LEGEND}. median edge: [last stable, first non-stable learning rate] of the median "
               "setting. middle half: the last stable learning rate of the settings at the first and third "
               "quartile of the edge (none: nothing stable; +: stable to the grid's end). beyond the edge: "
               "the status past each setting's edge, in settings")
    return _table(title, caption, columns, [cells for _, cells in sorted(rows)], folds="beyond the edge")


def _last_stable(rank: tuple[float, float]) -> str:
    if rank[0] == -math.inf:
        return "none"
    return cell_text(rank[0]) + ("+" if rank[1] == math.inf else "")


def runs_table(trials: pd.DataFrame, title: str, status: str | None = None, limit: int = 50) -> Table:
    """`sweep show`: the first `limit` runs (of `status`, if given), with the axes that vary."""
    if status:
        trials = trials[trials["status"] == status]
    axes = (*maps.setting_axes(trials), "learning_rate")
    varying = [a for a in axes if trials[a].nunique(dropna=False) > 1] or ["learning_rate"]
    cols = ["trial", "seed", *varying, "status", "final_loss_ratio", "final_baseline_ratio", "first_nonfinite_step",
            "grad_norm_max"]
    table = Table(title=f"{title}: {len(trials)} runs" + (f" with status {status}" if status else ""))
    for c in cols:
        table.add_column(c, justify="left" if c == "status" else "right")
    for _, r in trials.head(limit).iterrows():
        table.add_row(*[cell_text(r[c]) for c in cols])
    return table
