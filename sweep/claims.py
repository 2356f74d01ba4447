"""`sweep reproduce`: every document claim next to what was measured.

For each catalog example, one normal study (`DIR/reproduce-<example>/`, or
`reproduce-quick-<example>/` with `--quick`) trains the document's failure
configuration and its fix configuration over the seeds, each across a short
learning-rate sweep (from a decade below the document's learning rate up to
1.0 on the catalog's grid). `log_of_zero` also gets the document's direct
evaluation of its hand-written loss on fixed arrays. Then:

* `DIR/claims.parquet`: one row per claim (DESIGN.md's columns plus `study`);
* `DIR/REPORT.md`: per claim what the document says, what was measured,
  whether it reproduced and a one-line note why; the plots of each study.

A failure claim reproduces when a strict majority of the failure
configuration's seeds end in one of the example's `claimed_failure` statuses,
and the claim as a whole when, in addition, a majority of the fix
configuration's seeds are stable. Nothing is tuned to make a claim hold.

    >>> from sweep.claims import reproduce_study
    >>> s = reproduce_study("exploding_gradients", quick=True)
    >>> s.name, s.grid["clipnorm"], s.grid["learning_rate"]
    ('reproduce-quick-exploding_gradients', (None, 1.0), (0.001, 0.01, 0.1, 1.0))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import maps, reports
from ._version import __version__
from .catalog import EXAMPLES, Example, direct_evaluation
from .spec import SETTING_AXES, Study, config_from_dict, load, parse
from .spec import format_value as _fmt
from .verdict import ORCHESTRATOR_STATUSES, STATUSES

CLAIMS_FILE = "claims.parquet"
REPORT_FILE = "REPORT.md"
SEEDS = (0, 1, 2, 3, 4)  # DESIGN: at least five seeds per configuration
QUICK_SEEDS = (0, 1)
QUICK_EPOCHS = 2
# The document's direct evaluation draws 100 predictions; with 20 draws, a few contain an exact zero.
DIRECT_SEEDS = tuple(range(20))
# The half-decade learning-rate ladder of the example study files (studies/*.toml).
LR_LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)

CLAIM_COLUMNS = pa.schema([
    ("example", pa.string()),
    ("document", pa.string()),
    ("claim", pa.string()),
    ("failure_config", pa.string()),
    ("fix_config", pa.string()),
    ("claimed_failure", pa.string()),
    ("measured_failure", pa.string()),
    ("claimed_fix", pa.string()),
    ("measured_fix", pa.string()),
    ("reproduced", pa.bool_()),
    ("note", pa.string()),
    ("study", pa.string()),  # the study directory under DIR whose runs were measured
])


def describe(example: Example, overrides: dict) -> str:
    """A configuration as the document sets it: its axes, then the example's other defaults."""
    return ", ".join(f"{a}={_fmt(v)}" for a, v in overrides.items())


def sweep_learning_rates(example: Example, quick: bool) -> tuple[float, ...]:
    """The learning rates around the document's: a decade below the lowest up to 1.0
    (or a decade above the highest if that is larger); quick: the document's, 0.1 and 1.0."""
    doc = sorted({example.config(example.failure)["learning_rate"], example.config(example.fix)["learning_rate"]})
    if quick:
        return tuple(sorted(set(doc) | {0.1, 1.0}))
    top = max(1.0, doc[-1] * 10)
    return tuple(lr for lr in LR_LADDER if doc[0] / 10 * 0.999 <= lr <= top * 1.001)


def reproduce_study(example_id: str, quick: bool = False, engine: str | None = None) -> Study:
    """The study that measures one example's failure and fix configurations."""
    return parse(reproduce_toml(example_id, quick, engine), f"<reproduce {example_id}>")


def reproduce_toml(example_id: str, quick: bool = False, engine: str | None = None) -> str:
    """The study file of `reproduce_study`, as `sweep run` would read it."""
    ex = EXAMPLES[example_id]
    fail, fix = ex.config(ex.failure), ex.config(ex.fix)
    lines = [f"# {ex.document}, {ex.section}: the document's failure {describe(ex, ex.failure)} and fix "
             f"{describe(ex, ex.fix)}, with a short learning-rate sweep around each (written by `sweep reproduce`).",
             "[study]", f'name = "reproduce-{"quick-" if quick else ""}{example_id}"', f'example = "{example_id}"',
             f"epochs = {min(QUICK_EPOCHS, ex.epochs) if quick else ex.epochs}",
             f"seeds = {list(QUICK_SEEDS if quick else SEEDS)}", 'sampler = "grid"']
    if engine:
        lines.append(f'engine = "{engine}"')
    lines.append("[grid]")
    lines.append(f"learning_rate = {list(sweep_learning_rates(ex, quick))}")
    for axis in SETTING_AXES:
        values = list(dict.fromkeys([fail[axis], fix[axis]]))
        if len(values) > 1 or axis in ex.failure or axis in ex.fix:
            toml = ", ".join('"none"' if v is None else (f'"{v}"' if isinstance(v, str) else repr(v)) for v in values)
            lines.append(f"{axis} = [{toml}]")
    return "\n".join(lines) + "\n"


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


def judge_claim(ex: Example, study_name: str, trials: pd.DataFrame, boundary: pd.DataFrame) -> dict:
    """One claims row from the example's study."""
    fail_axes, fix_axes = ex.config(ex.failure), ex.config(ex.fix)
    fail, fix = measure(trials, fail_axes), measure(trials, fix_axes)
    failure_ok = fail.majority(ex.claimed_failure)
    fix_ok = fix.majority(("stable",))
    reproduced = failure_ok and fix_ok
    edges = f"edge without the fix: {_edge_text(boundary, fail_axes)}; with it: {_edge_text(boundary, fix_axes)}"
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
    return {
        "example": ex.id, "document": ex.document, "claim": ex.claim,
        "failure_config": describe(ex, ex.failure), "fix_config": describe(ex, ex.fix),
        "claimed_failure": " or ".join(ex.claimed_failure), "measured_failure": fail.text(),
        "claimed_fix": "stable", "measured_fix": fix.text(), "reproduced": reproduced, "note": note,
        "study": study_name,
    }


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
        "example": ex.id, "document": ex.document,
        "claim": "custom_loss_incorrect on y_pred with values below 0.001 set to 0.0: 'Loss function "
                 "calculation will result in a NaN if y_pred is 0 or 1'; custom_loss_corrected clips to [1e-7, 1-1e-7].",
        "failure_config": "direct evaluation as written: y_true ~ U(0,1), y_pred ~ U(0,1) 100x1, "
                          f"values < 0.001 set to 0.0, seeds {seeds[0]}-{seeds[-1]}",
        "fix_config": "the same arrays through custom_loss_corrected",
        "claimed_failure": "nan", "measured_failure": measured, "claimed_fix": "finite",
        "measured_fix": f"finite in {corrected_finite}/{len(evals)} draws",
        "reproduced": reproduced, "note": note, "study": "",
    }
    return row, evals


def write_claims(rows: list[dict], path: Path) -> None:
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
    if version != reports.SCHEMA_VERSION:
        raise reports.ResultsError(f"{path}: schema_version {version}, this sweep reads {reports.SCHEMA_VERSION}")
    df = pf.read(columns=CLAIM_COLUMNS.names).cast(CLAIM_COLUMNS).to_pandas()
    df["example"] = df["example"].astype("category")
    return df


def reproduce(results: str | os.PathLike = "results", quick: bool = False, engine: str | None = None,
              on_study: Callable[[Study], None] | None = None, command: str = "") -> pd.DataFrame:
    """Run every claim's study (resuming what is recorded), write claims.parquet and REPORT.md."""
    from . import study as driver
    from .plots import write_plots
    from .pool import LocalPool

    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    engines = set()
    for example_id, ex in EXAMPLES.items():
        name = reproduce_study(example_id, quick, engine).name
        # The study file goes next to its results, so study.json records it and
        # `sweep run DIR/<study>/study.toml` re-runs exactly this study.
        study_dir = out / name
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / "study.toml").write_text(reproduce_toml(example_id, quick, engine))
        s = load(study_dir / "study.toml")
        if on_study:
            on_study(s)
        # The claim studies are small: trained in this process, without starting Ray for each.
        driver.run(s, out, engine=engine, pool=LocalPool(s, driver.engine_for(s, engine)))
        trials = reports.load_trials(study_dir)
        engines.update(str(e) for e in trials["engine"].dropna().unique())
        _, boundary = maps.build(trials)
        rows.append(judge_claim(ex, s.name, trials, boundary))
        write_plots(study_dir)
        if example_id == "log_of_zero":
            direct, _ = direct_claim()
            rows.append(direct)
    write_claims(rows, out / CLAIMS_FILE)
    claims = load_claims(out)
    write_report(out, claims, quick=quick, engines=sorted(engines), command=command)
    return claims


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, claims: pd.DataFrame, *, quick: bool, engines: list[str], command: str) -> Path:
    """REPORT.md: the claims table, then per claim the document's words, the measurements and plots,
    then the stability maps of any full per-example studies found in the same directory."""
    import keras
    import tensorflow as tf

    lines = ["# Do the documents' claims reproduce?", ""]
    lines += [f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by stability-sweep {__version__} "
              f"(TensorFlow {tf.__version__}, Keras {keras.__version__}), engine: {', '.join(engines) or '-'}"
              f"{', quick form (few epochs and seeds: not the reference figures)' if quick else ''}.", ""]
    lines += ["Regenerate:", "", "```bash", command or f"sweep reproduce{' --quick' if quick else ''} --results {out}"]
    full = [d for d in sorted(out.iterdir()) if d.is_dir() and d.name in EXAMPLES and (d / "trials").is_dir()]
    for d in full:
        lines.append(f"sweep run studies/{d.name}.toml --results {out} && sweep map {out}/{d.name} --png")
    lines += ["```", ""]
    lines += ["A failure claim reproduces when a strict majority of the failure configuration's seeds end in "
              "a claimed status; the claim as a whole when, in addition, a majority of the fix configuration's "
              "seeds are stable. Statuses follow DESIGN.md's verdict rules (`nan` also covers ±inf).", ""]
    lines += ["| example | document | claimed failure | measured at the failure config | measured at the fix config "
              "| reproduced | note |", "|---|---|---|---|---|---|---|"]
    for _, c in claims.iterrows():
        lines.append(f"| {c['example']} | {c['document']} | {_md(c['claimed_failure'])} | "
                     f"{_md(c['failure_config'])}: {_md(c['measured_failure'])} | {_md(c['fix_config'])}: "
                     f"{_md(c['measured_fix'])} | {'yes' if c['reproduced'] else '**no**'} | {_md(c['note'])} |")
    lines.append("")
    for _, c in claims.iterrows():
        ex = EXAMPLES[str(c["example"])]
        lines += [f"## {c['example']}: {ex.document}, {ex.section}" + (" (direct evaluation)" if not c["study"] else ""),
                  "", f"**The document says:** {c['claim']}", "",
                  f"- failure configuration: {c['failure_config']} → measured: {c['measured_failure']}",
                  f"- fix configuration: {c['fix_config']} → measured: {c['measured_fix']}",
                  f"- **reproduced: {'yes' if c['reproduced'] else 'no'}**: {c['note']}", ""]
        if not c["study"]:
            continue
        lines += [f"Model and data: {ex.description}", ""]
        study_dir = out / c["study"]
        _, boundary = maps.build(reports.load_trials(study_dir))
        lines += _boundary_md(boundary) + [""]
        for png, what in (("curves.png", "loss curves, failure and fix"), ("pstable.png", "P(stable) over seeds")):
            if (study_dir / "plots" / png).exists():
                lines += [f"![{c['example']}: {what}]({c['study']}/plots/{png})", ""]
    if full:
        lines += ["# Stability maps of the full per-example studies", ""]
    for d in full:
        lines += [f"## {d.name}", "", f"`sweep map {out}/{d.name}`:", ""]
        lines += _boundary_md(maps.load_boundary(d) if (d / maps.BOUNDARY_FILE).exists()
                              else maps.build(reports.load_trials(d))[1]) + [""]
        for png in ("pstable.png", "edge_vs_batch.png", "curves.png"):
            if (d / "plots" / png).exists():
                lines += [f"![{d.name}: {png}]({d.name}/plots/{png})", ""]
    path = out / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _boundary_md(boundary: pd.DataFrame) -> list[str]:
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
