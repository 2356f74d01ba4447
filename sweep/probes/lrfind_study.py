"""`sweep lrfind`: the LR range test (`lrfind`) on every setting of a study, beside its measured edge.

`run_study` runs the test on each setting not yet recorded in `DIR/<study>/lrfind.parquet`
(one run per setting with the study's first seed; settings that differ only in schedule share
one), writing the file after each, then rebuilds the study's maps, whose boundary takes its
`lr_rangetest_suggestion` from that file (`results.rangetest.with_suggestions`). `compare` joins each
test with the setting's edge bracket and P(stable) at both ends; `table` is what the command
prints, `report_md` what REPORT.md shows::

    >>> from sweep.probes.lrfind_study import placement
    >>> b = {"lr_stable_min": 1e-3, "lr_stable_max": 0.01, "lr_unstable_min": 0.03}
    >>> [placement(s, b, grid_min=1e-4) for s in (1e-5, 3e-4, 3e-3, 0.02, 0.05)]
    ['below the grid', 'below the stable range', 'stable side', 'in the bracket', 'beyond the edge']
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from ..driver.session import prepare_dir
from ..engines.runtime import import_tensorflow
from ..results import maps
from ..results.rangetest import LRFIND_FILE, lrfind_schema, read_rows, setting_key
from ..results.reports import arrow_table, model_field, model_fields, write_atomic
from ..spec import SETTING_AXES, Config, Study
from ..spec import format_value as _fmt
from .lrfind import DEFAULT_RULE, RULES, Curve, lrfind_row, range_test

if TYPE_CHECKING:
    from rich.table import Table


def settings(study: Study) -> list[Config]:
    """One configuration per setting of the study (its learning rate irrelevant), in plan order."""
    seen: dict[tuple, Config] = {}
    for c in study.configs():
        seen.setdefault(c.setting(), c)
    return list(seen.values())


def run_study(study: Study, results: str | os.PathLike, rule_name: str = DEFAULT_RULE,
              progress: Callable[[str], None] | None = None) -> Path:
    """Run the range test on every setting of `study` not yet in `RESULTS/<study>/lrfind.parquet`
    under this rule and seed, writing the file after each; then, if the study has trials, rebuild
    its maps (whose boundary takes the suggestions from this file). Returns the study directory."""
    rule, seed = RULES[rule_name], study.seeds[0]
    out = prepare_dir(study, results)
    path = out / LRFIND_FILE
    kept = _recorded(path, study, rule_name)
    knobs = tuple(study.model)
    todo = [c for c in settings(study) if setting_key(_axes(c), knobs) not in kept]
    rows = [kept[k] for k in (setting_key(_axes(c), knobs) for c in settings(study)) if k in kept]
    schema = lrfind_schema([model_field(k, v[0]) for k, v in study.model.items()])
    if progress and kept:
        progress(f"{study.name}: {len(rows)} settings already in {path}")
    if todo:
        import_tensorflow()
    shared: dict[tuple, Curve] = {}  # settings that differ only in schedule share one test
    for n, config in enumerate(todo, 1):
        unscheduled = setting_key({**_axes(config), "schedule": None}, knobs)
        if unscheduled not in shared:
            shared[unscheduled] = range_test(study, config, seed, rule)
        curve = shared[unscheduled]
        rows.append(lrfind_row(study, config, rule, seed, curve))
        write_atomic(arrow_table(rows, schema), path)
        if progress:
            progress(f"{study.name}: setting {n}/{len(todo)}: {_setting_text(config)}: suggestion "
                     f"{_fmt(curve.suggestion) if curve.suggestion else 'none'} ({curve.steps} steps, "
                     f"{curve.wall_seconds:.1f} s)")
    if todo and (out / "trials").is_dir():
        maps.write(out)
    return out


def complete(study: Study, results: str | os.PathLike, rule_name: str = DEFAULT_RULE) -> bool:
    """Whether `lrfind.parquet` already holds every setting of the study under this rule and seed."""
    have = _recorded(Path(results) / study.name / LRFIND_FILE, study, rule_name)
    return all(setting_key(_axes(c), tuple(study.model)) in have for c in settings(study))


def _recorded(path: Path, study: Study, rule_name: str) -> dict[tuple, dict]:
    """The rows of `path` made by this rule with the study's first seed, by setting."""
    rule = RULES[rule_name]
    rows = read_rows(path)[0] if path.is_file() else []
    return {setting_key(r, tuple(study.model)): r for r in rows
            if r["rule"] == rule.name and r["seed"] == study.seeds[0] and r["num_it"] == rule.num_it
            and all(k in r for k in study.model)}


def _axes(config: Config) -> dict:
    """A setting's values: the sweep's axes and the model's knobs."""
    return {**{a: getattr(config, a) for a in SETTING_AXES}, **config.knobs}


def _setting_text(config: Config) -> str:
    return ", ".join(f"{a}={_fmt(v)}" for a, v in _axes(config).items())


# What the suggestion is, against the measured edge of its setting.
PLACES = ("below the grid", "below the stable range", "stable side", "in the bracket", "beyond the edge",
          "above the grid", "nothing stable", "no suggestion", "not measured")


def placement(suggestion: float | None, b: dict | None, grid_min: float | None = None) -> str:
    """Where a suggestion lies against a setting's measured edge (`b`: its boundary row; `grid_min`:
    the smallest learning rate the sweep ran for it)."""
    if b is None:
        return "not measured"
    if suggestion is None:
        return "no suggestion"
    low, high, unstable = (_num(b.get(k)) for k in ("lr_stable_min", "lr_stable_max", "lr_unstable_min"))
    if low is None:
        return "nothing stable"
    if grid_min is not None and suggestion < grid_min:
        return "below the grid"
    if suggestion < low:
        return "below the stable range"
    if suggestion <= high:
        return "stable side"
    if unstable is None:
        return "above the grid"
    return "in the bracket" if suggestion < unstable else "beyond the edge"


def _num(v) -> float | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass
class Comparison:
    """Per setting: the range test's suggestion beside the measured edge (one dict per setting)."""

    rows: list[dict] = field(default_factory=list)
    measured: bool = False
    knobs: tuple[str, ...] = ()  # the study's model knobs, setting axes of the rows too


def compare(study_dir: str | os.PathLike) -> Comparison:
    """The study's range tests joined with its boundary and map (if measured): per setting its
    axes, rule, suggestion, how the test ended, the edge bracket, P(stable) with its Wilson
    interval at both ends of the bracket, the ratio suggestion / lr_stable_max and `placement`.
    The boundary's optional curvature predictions (lr_predicted_init, lr_predicted_early) come
    along when the file has them."""
    import pyarrow.parquet as pq

    out = Path(study_dir)
    tests, schema = read_rows(out / LRFIND_FILE)
    knobs = tuple(f.name for f in model_fields(schema))
    boundary, cells, grid_min = {}, {}, {}
    measured = (out / maps.BOUNDARY_FILE).is_file() and (out / maps.MAP_FILE).is_file()
    if measured:
        # Read whole: columns other reports add to the boundary (curvature predictions) come along.
        for r in pq.read_table(out / maps.BOUNDARY_FILE).to_pylist():
            boundary[setting_key(r, knobs)] = r
        for r in maps.load_map(out).astype(object).to_dict("records"):
            key = setting_key(r, knobs)
            cells[key, float(r["learning_rate"])] = r
            grid_min[key] = min(grid_min.get(key, math.inf), float(r["learning_rate"]))
    rows = []
    for t in tests:
        key = setting_key(t, knobs)
        b = boundary.get(key)
        row = {**{a: t[a] for a in (*SETTING_AXES, *knobs)}, "rule": t["rule"], "suggestion": t["suggestion"],
               "steps": t["steps"], "stopped_on_divergence": t["stopped_on_divergence"],
               "first_nonfinite_step": t["first_nonfinite_step"], "measured": b is not None,
               "place": placement(t["suggestion"], b, grid_min.get(key))}
        for k in ("lr_stable_min", "lr_stable_max", "lr_unstable_min", "edge_status", "lr_predicted_init",
                  "lr_predicted_early"):
            row[k] = None if b is None else b.get(k)
        for end in ("lr_stable_max", "lr_unstable_min"):
            cell = cells.get((key, row[end])) if row[end] is not None else None
            row[f"p_{end}"] = None if cell is None else (cell["p_stable"], cell["p_low"], cell["p_high"])
        high = _num(row["lr_stable_max"])
        row["ratio"] = t["suggestion"] / high if t["suggestion"] and high else None
        rows.append(row)
    return Comparison(rows, measured, knobs)


def _p_text(p) -> str:
    return "-" if p is None else f"{p[0]:.2g} [{p[1]:.2g}, {p[2]:.2g}]"


def bracket_text(row: dict) -> str:
    if not row["measured"]:
        return "not measured"
    if row["lr_stable_max"] is None:
        return "nothing stable"
    return f"[{_fmt(row['lr_stable_max'])}, {_fmt(row['lr_unstable_min']) if row['lr_unstable_min'] else '-'}]"


def stop_text(row: dict) -> str:
    if row["stopped_on_divergence"]:
        return f"div. {row['steps']}"
    if row["first_nonfinite_step"] is not None:
        return f"NaN {row['first_nonfinite_step'] + 1}"
    return f"ran {row['steps']}"


def varying(rows: list[dict], knobs: tuple[str, ...] = ()) -> list[str]:
    """The setting axes (and model `knobs`) whose values differ among the rows."""
    axes = [*SETTING_AXES, *knobs]
    return [a for a in axes if len({setting_key(r, knobs)[axes.index(a)] for r in rows}) > 1]


def table(comparison: Comparison, title: str) -> "Table":
    """What `sweep lrfind` prints: one row per setting."""
    from ..results.tables import _table

    axes = varying(comparison.rows, comparison.knobs)
    rows = [[*(_fmt(r[a]) for a in axes), _short(r["suggestion"]), stop_text(r), bracket_text(r),
             _p_short(r["p_lr_stable_max"]), _p_short(r["p_lr_unstable_min"]), _short(r["ratio"]), r["place"]]
            for r in comparison.rows]
    columns = [(a.replace("_", "\n"), "right") for a in axes] + [
        ("suggestion", "right"), ("test", "left"), ("measured\nedge", "right"), ("P(stable)\nat stable", "right"),
        ("P(stable)\nbeyond", "right"), ("ratio", "right"), ("where", "left")]
    caption = ("suggestion: the range test's learning rate; test: batches it trained and how it ended (ran: to "
               "the end; div.: stopped by its divergence rule; NaN: at the first non-finite loss). measured edge: "
               "[largest stable, first non-stable learning rate] of the full sweep, with P(stable) over seeds and "
               "its 95 % Wilson interval at each end. ratio: suggestion / largest stable. where: the suggestion "
               "against the edge")
    return _table(title, caption, columns, rows, folds="where")


def _short(v) -> str:
    return "-" if _num(v) is None else f"{v:.3g}"


def _p_short(p) -> str:
    """P(stable) and its interval, leading zeros dropped to fit a terminal: 1 [.44,1]."""
    if p is None:
        return "-"
    return " ".join(f"{x:.2g}".removeprefix("0") or "0" for x in p[:1]) + " [" + ",".join(
        f"{x:.2g}".removeprefix("0") if x not in (0, 1) else f"{x:.0f}" for x in p[1:]) + "]"


def summary(comparison: Comparison) -> str:
    """One sentence: how often the suggestion lies on the stable side, by what factor."""
    rows = [r for r in comparison.rows if r["ratio"] is not None]
    if not comparison.measured:
        return "no measured edge yet (`sweep run` the study, then run `sweep lrfind` again to compare)"
    if not rows:
        return "no setting has both a suggestion and a stable learning rate to compare"
    below = sum(r["suggestion"] <= r["lr_stable_max"] for r in rows)
    places = pd.Series([r["place"] for r in comparison.rows]).value_counts()
    ratios = np.array([r["ratio"] for r in rows])
    return (f"suggestion at or below the largest stable learning rate in {below} of {len(rows)} settings; "
            f"suggestion / largest stable: median {np.median(ratios):.3g} (range {ratios.min():.3g} to "
            f"{ratios.max():.3g}); where: " + ", ".join(f"{p} {places[p]}" for p in PLACES if places.get(p)))


def report_md(study_dir: str | os.PathLike) -> list[str]:
    """REPORT.md's table for one study: per setting the range test's suggestion, the curvature
    predictions (if the boundary has them) and the measured edge with P(stable) at its ends."""
    c = compare(study_dir)
    if not c.rows:
        return []
    axes = varying(c.rows, c.knobs)
    rule = c.rows[0]["rule"]
    head = axes + [f"range test ({rule})", "curvature, init", "curvature, early", "measured edge",
                   "P(stable) at the edge", "suggestion / stable max", "where"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in c.rows:
        curvature = [_short(r[k]) if _num(r[k]) is not None else "not measured"
                     for k in ("lr_predicted_init", "lr_predicted_early")]
        p = f"{_p_text(r['p_lr_stable_max'])} / {_p_text(r['p_lr_unstable_min'])}" if r["p_lr_stable_max"] else "-"
        cells = [_fmt(r[a]) for a in axes] + [_short(r["suggestion"]) if r["suggestion"] else "none", *curvature,
                                              bracket_text(r), p, f"{r['ratio']:.3g}" if r["ratio"] else "-",
                                              r["place"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
