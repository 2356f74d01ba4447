"""REPORT.md of `sweep reproduce`: the claims table, then per claim (a) the document's words,
(b) what was measured at its configuration, (c) where the claimed failure occurs in the
wider space, (d) what the fix does there, (e) every plot of the claim's studies; then the
stability maps of any full per-example studies (`studies/<example>.toml`) in the same
directory.

    >>> from sweep.claims.report import share
    >>> share(0.5), share(float("nan"))
    ('50 %', '-')
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .._version import __version__
from ..catalog import EXAMPLES
from ..plots.figures import PLOTS_DIR
from ..probes import lrfind_study
from ..results import maps, reports
from ..results.rangetest import LRFIND_FILE
from ..spec import SETTING_AXES
from ..spec import format_value as _fmt

REPORT_FILE = "REPORT.md"


def given(value) -> str:
    """A text column's value, "" where the claim has none (a null)."""
    return "" if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else str(value)


def _md(text) -> str:
    return given(text).replace("|", "\\|").replace("\n", " ")


def share(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.0%}".replace("%", " %")


def where_text(c) -> str:
    """(c) in one line: the rule with its precision and coverage, or where it was looked for."""
    if not given(c["space_study"]):
        return ""
    runs = f"{c['failure_runs']} of {c['space_runs']} runs"
    if c["failure_runs"] == 0:
        return f"nowhere in this space ({runs}): {c['space']}"
    return (f"{c['failure_where']} (precision {share(c['failure_where_precision'])}, "
            f"coverage {share(c['failure_where_coverage'])}; {runs})")


def write_report(out: Path, claims: pd.DataFrame, *, quick: bool, command: str) -> Path:
    """Write `out/REPORT.md` from the claims table and the studies beside it."""
    import keras
    import tensorflow as tf

    lines = ["# Do the documents' claims reproduce, and where do their failures happen?", ""]
    lines += [f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by stability-sweep {__version__} "
              f"(TensorFlow {tf.__version__}, Keras {keras.__version__})"
              f"{', quick form (few epochs and seeds: not the reference figures)' if quick else ''}.", ""]
    lines += ["Regenerate:", "", "```bash", command or f"sweep reproduce{' --quick' if quick else ''} --results {out}"]
    full = [d for d in sorted(out.iterdir()) if d.is_dir() and d.name in EXAMPLES and (d / "trials").is_dir()]
    for d in full:
        lines.append(f"sweep run studies/{d.name}.toml --results {out} && sweep map {out}/{d.name} --png")
    lines += ["```", ""]
    lines += ["| claim | verdict | the number that carries it | detail |", "|---|---|---|---|"]
    for _, c in claims.iterrows():
        lines.append(f"| {_md(c['headline'])} | **{_md(c['verdict'])}** | {_md(c['evidence'])} | "
                     f"[{c['example']}](#{anchor(heading(c))}) |")
    lines += ["", "Verdicts: *holds* (the document's failure configuration fails as claimed and its fix is "
              "stable, by majority of 5 seeds on the keras engine), *only where ...* (it does not, but runs of "
              "the example's wider space do, in that region), *does not hold* (no run of the space fails so), "
              "*the opposite* (the claimed failure is more frequent with the fix, or the fix lowers the edge), "
              "*the failure holds, not the fix*.", "", "## Detail", ""]
    lines += ["Per claim: (b) the document's failure and fix configurations, exactly, on the keras engine "
              "(the reference; the learning-rate sweep around them on its own engine beside it). A failure "
              "claim reproduces when a strict majority of the failure configuration's seeds end in a claimed "
              "status; the claim as a whole when, in addition, a majority of the fix configuration's seeds are "
              "stable. (c) Where in the example's wider space (population engine) runs end in a claimed status: "
              "the shortest conjunction of axis conditions, with its precision (share of the runs it matches "
              "that fail so) and coverage (share of those runs it matches). (d) What the document's fix does "
              "there: of the failing map cells (setting and learning rate, not stable by majority of seeds) in "
              "that region, the share it makes stable, and the median ratio of edge learning rates with the fix "
              "to without it over pairs of settings, with a bootstrap 95 % interval. Statuses follow docs/design.md's "
              "verdict rules (`nan` also covers ±inf).", ""]
    lines += ["| example | claimed failure | (b) at the failure config | (b) at the fix config | reproduced "
              "| (c) where the claimed failure occurs | (d) the fix there |", "|---|---|---|---|---|---|---|"]
    for _, c in claims.iterrows():
        engine = f"{c['measured_engine']}: " if given(c["measured_engine"]) else ""
        lines.append(f"| {c['example']} | {_md(c['claimed_failure'])} | {_md(c['failure_config'])}: {engine}"
                     f"{_md(c['measured_failure'])} | {_md(c['fix_config'])}: {engine}{_md(c['measured_fix'])} | "
                     f"{'yes' if c['reproduced'] else '**no**'} | {_md(where_text(c))} | {_md(c['fix_note'])} |")
    lines.append("")
    for _, c in claims.iterrows():
        lines += _claim_section(out, c)
    if full:
        lines += ["# Stability maps of the full per-example studies", ""]
    for d in full:
        lines += [f"## {d.name}", "", f"`sweep map {out}/{d.name}`:", ""]
        lines += boundary_md(maps.load_boundary(d) if (d / maps.BOUNDARY_FILE).exists()
                             else maps.build(reports.load_trials(d))[1]) + [""]
        lines += _plot_links(out, d.name, d.name)
    path = out / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def heading(c) -> str:
    ex = EXAMPLES[str(c["example"])]
    return f"{c['example']}: {ex.document}, {ex.section}" + ("" if given(c["study"]) else " (direct evaluation)")


def anchor(title: str) -> str:
    """The link target GitHub and most Markdown renderers give a heading.

    >>> anchor("log_of_zero: tf-optimizer-error.md, Example 2: Numerical Instability (direct evaluation)")
    'log_of_zero-tf-optimizer-errormd-example-2-numerical-instability-direct-evaluation'
    """
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def _claim_section(out: Path, c) -> list[str]:
    ex = EXAMPLES[str(c["example"])]
    direct = not given(c["study"])
    lines = [f"### {heading(c)}", "", f"**(a) The document says:** {c['claim']}", ""]
    if direct:
        return lines + [f"- failure: {c['failure_config']} → measured: {c['measured_failure']}",
                        f"- fix: {c['fix_config']} → measured: {c['measured_fix']}",
                        f"- **reproduced: {'yes' if c['reproduced'] else 'no'}**: {c['note']}", ""]
    engine, beside = c["measured_engine"], ""
    if given(c["sweep_study"]):
        beside = f"; {c['sweep_engine']} in the learning-rate sweep (`{c['sweep_study']}`): "
    lines += [f"Model and data: {ex.description}", "",
              f"**(b) At the document's configuration** (`{c['study']}`, {engine} engine, the reference):", "",
              f"- failure configuration {c['failure_config']}: {engine}: {c['measured_failure']}"
              f"{beside}{given(c['sweep_failure'])}",
              f"- fix configuration {c['fix_config']}: {engine}: {c['measured_fix']}{beside}{given(c['sweep_fix'])}",
              f"- **reproduced: {'yes' if c['reproduced'] else 'no'}**: {c['note']}", ""]
    if given(c["sweep_study"]) and (out / c["sweep_study"] / "trials").is_dir():
        lines += [f"Edges of the learning-rate sweep (`{c['sweep_study']}`):", ""]
        lines += boundary_md(maps.build(reports.load_trials(out / c["sweep_study"]))[1]) + [""]
        lines += _rangetest_md(out / c["sweep_study"])
    if given(c["space_study"]):
        lines += [f"**(c) Where the claimed failure ({c['claimed_failure']}) occurs** in the wider space "
                  f"(`{c['space_study']}`, population engine): {where_text(c)}.", "",
                  f"The space: {c['space']}.", "",
                  f"**(d) What the document's fix ({c['fix_axis']}={c['fix_value']} against "
                  f"{c['fix_reference']}) does there:** {c['fix_note']}.", ""]
    lines += ["**(e) Plots:**", ""]
    for study in map(given, (c["study"], c["sweep_study"], c["space_study"])):
        if study:
            lines += _plot_links(out, study, f"{c['example']}, {study}")
    return lines


def _rangetest_md(study_dir: Path) -> list[str]:
    """The LR range test of each setting beside the curvature predictions and the measured edge."""
    if not (study_dir / LRFIND_FILE).is_file():
        return []
    return ["The LR range test (`sweep lrfind`, docs/lrfind.md) of each setting, beside the curvature "
            "predictions of the edge (boundary.parquet's lr_predicted_init, lr_predicted_early) and the measured "
            "edge with P(stable) over seeds and its 95 % Wilson interval at its last stable and first non-stable "
            "learning rate:", ""] + lrfind_study.report_md(study_dir) + [""]


def _plot_links(out: Path, study: str, label: str) -> list[str]:
    """A link to every PNG under the study's plots directory."""
    pngs = sorted((out / study / PLOTS_DIR).glob("*.png"))
    return [line for png in pngs for line in (f"![{label}: {png.stem}]({study}/{PLOTS_DIR}/{png.name})", "")]


def boundary_md(boundary: pd.DataFrame) -> list[str]:
    """The edge of every setting as a Markdown table (varying axes only)."""
    varying = [a for a in SETTING_AXES if boundary[a].astype(object).nunique(dropna=False) > 1]
    head = varying + ["stable from", "edge [stable, first non-stable]", "beyond the edge", "LR sensitivity", "runs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, b in boundary.iterrows():
        if pd.isna(b["lr_stable_min"]):
            edge, beyond = "nothing stable", f"{b['edge_status']} (most runs)"
        elif pd.isna(b["lr_unstable_min"]):
            edge, beyond = f"[{_fmt(b['lr_stable_max'])}, -]", "stable to the sweep's end"
        else:
            edge, beyond = f"[{_fmt(b['lr_stable_max'])}, {_fmt(b['lr_unstable_min'])}]", str(b["edge_status"])
        cells = [_fmt(b[a]) for a in varying] + [_fmt(b["lr_stable_min"]), edge, beyond,
                                                 f"{b['lr_sensitivity']:.3g}", str(int(b["n_runs"]))]
        out.append("| " + " | ".join(cells) + " |")
    return out


def claim_text(c) -> tuple[str, list[str]]:
    """One claim as `sweep reproduce` prints it: a heading and a sentence per answer."""
    return (f"{c['example']}: {c['verdict']} ({c['evidence']})", [
        f"at the document's failure configuration ({c['failure_config']}): {c['measured_failure']}",
        f"at its fix ({c['fix_config']}): {c['measured_fix']}",
        f"where the claimed failure occurs: {where_text(c)}",
        f"the fix there: {given(c['fix_note'])}"])
