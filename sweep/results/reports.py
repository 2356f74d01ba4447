"""Parquet reports: the columns (one place), rows from outcomes, atomic part files, loaders.

A study directory holds `trials/` and `curves/`, datasets of part files.
Each batch of finished runs becomes one `curves/part-X.parquet` and then one
`trials/part-X.parquet`, each written to a hidden temporary file and renamed,
so a reader never sees half a file; a trials part is the record that its runs
are done, and a curves part without its trials part (a crash between the two)
is removed on the next start::

    >>> import sweep
    >>> trials = sweep.load_trials("results/quickstart")          # doctest: +SKIP
    >>> trials.groupby("clipnorm", dropna=False).status.value_counts()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._version import __version__
from ..engines import Outcome
from ..engines.baseline import baseline_loss
from ..engines.sharpness import finite_or_none, summary
from ..spec import AXIS_DEFAULTS, CATEGORICAL_AXES, Run, Study
from ..verdict import STATUSES, judge, spike_epochs
from . import faults

# Version 4 adds SGD's `momentum` and `nesterov` axes and the model's knobs ([grid.model]) as
# axis columns of their own (`model_field`); a reader of version 3 would read such a file
# without them and merge settings that differ in them, so it must refuse it, and does: it reads
# 1 to 3 only. An earlier file reads an added axis as its default (`spec.AXIS_DEFAULTS`).
SCHEMA_VERSION = "4"
# Versions this sweep reads. A column declared with `added` is absent from files of earlier
# versions and reads as null there; any other missing column refuses the file.
READABLE_VERSIONS = ("1", "2", "3", "4")
# Schema 3 judges `stalled` against min(l0, baseline_loss); a file of an earlier version holds
# verdicts (or maps and answers made of them) by l0 alone. Such files are refused, never mixed:
# `sweep run` judges the study's runs again from their curves (`results.rejudge`).
JUDGED_SINCE = "3"


def added(name: str, type_: pa.DataType, version: str) -> pa.Field:
    """A column first written by schema `version`."""
    return pa.field(name, type_, metadata={"since": version})


# The field metadata that marks a column as a model knob's axis ([grid.model]): the knobs differ
# from study to study, so a reader finds them in the file rather than in a fixed schema.
MODEL_AXIS = {b"axis": b"model"}


def model_field(name: str, value: Any) -> pa.Field:
    """The column of the knob `name`, typed as its values are (bool, int64, float64 or string;
    `value` one of them, or a pandas dtype)."""
    if isinstance(value, (bool, np.bool_)) or pd.api.types.is_bool_dtype(value):
        type_ = pa.bool_()
    elif isinstance(value, (int, np.integer)) or pd.api.types.is_integer_dtype(value):
        type_ = pa.int64()
    elif isinstance(value, (float, np.floating)) or pd.api.types.is_float_dtype(value):
        type_ = pa.float64()
    else:
        type_ = pa.string()
    return pa.field(name, type_, metadata=MODEL_AXIS)


def model_fields(schema: pa.Schema) -> list[pa.Field]:
    """The knob columns of a file's schema."""
    return [f for f in schema if (f.metadata or {}).get(b"axis") == MODEL_AXIS[b"axis"]]


def model_axes(columns: Iterable[str], fixed: Collection[str]) -> tuple[str, ...]:
    """The knob columns among the `columns` of a frame read from (or built like) a report whose
    own columns are among `fixed`: the others. A knob's name is never a report's own column
    (`maps.check_knob_names` refuses it), so nothing else is taken for one."""
    return tuple(c for c in columns if c not in fixed)


def with_model_fields(schema: pa.Schema, knobs: Sequence[pa.Field], after: str) -> pa.Schema:
    """`schema` with the knob columns after its column `after` (where its own axes end)."""
    i = schema.get_field_index(after) + 1
    return pa.schema(list(schema)[:i] + list(knobs) + list(schema)[i:], metadata=schema.metadata)


# Curvature telemetry (`sweep.engines.sharpness`), schema 2: null where not measured.
SHARPNESS_TRIAL_COLUMNS = [added(f"{kind}_{when}", pa.float64(), "2")
                           for kind in ("sharpness", "precond_sharpness")
                           for when in ("init", "early", "max", "final")]

TRIAL_COLUMNS = pa.schema([
    ("study", pa.string()),
    ("trial", pa.int64()),
    ("config_id", pa.string()),
    ("seed", pa.int64()),
    ("example", pa.string()),
    ("engine", pa.string()),
    ("learning_rate", pa.float64()),
    ("clipnorm", pa.float64()),
    ("global_clipnorm", pa.float64()),
    ("clipvalue", pa.float64()),
    ("batch_size", pa.int64()),
    ("activation", pa.string()),
    ("scaler", pa.string()),
    ("optimizer", pa.string()),
    added("momentum", pa.float64(), "4"),  # SGD's; 0 for every other optimizer
    added("nesterov", pa.bool_(), "4"),
    ("loss", pa.string()),
    ("schedule", pa.string()),
    added("precision", pa.string(), "4"),  # the Keras dtype policy
    added("loss_scaling", pa.bool_(), "4"),  # mixed_float16's dynamic loss scaling
    ("epochs", pa.int64()),
    ("status", pa.string()),
    ("first_nonfinite_step", pa.int64()),
    ("initial_loss", pa.float64()),
    ("final_loss", pa.float64()),
    ("best_loss", pa.float64()),
    ("max_loss_ratio", pa.float64()),
    ("final_loss_ratio", pa.float64()),
    # the best constant prediction's loss on the run's training data under its loss
    # (`engines.baseline`), and the final loss over it: at or above stall_ratio, nothing learned
    added("baseline_loss", pa.float64(), "3"),
    added("final_baseline_ratio", pa.float64(), "3"),
    ("loss_spikes", pa.int64()),
    ("grad_norm_p50", pa.float64()),
    ("grad_norm_p90", pa.float64()),
    ("grad_norm_max", pa.float64()),
    ("clip_fraction", pa.float64()),
    ("final_accuracy", pa.float64()),
    ("wall_seconds", pa.float64()),
    ("worker", pa.string()),
    ("node", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("tf_version", pa.string()),
    ("keras_version", pa.string()),
    ("sweep_version", pa.string()),
    ("message", pa.string()),  # why a run is `error` or `timeout`; null otherwise
    # mixed_float16 with loss scaling: batches whose scaled gradients overflowed, so the update
    # was skipped and the scale halved, and the scale at the end; null without loss scaling
    added("skipped_steps", pa.int64(), "4"),
    added("final_loss_scale", pa.float64(), "4"),
    # λ_max at epoch 0, at the first measured epoch after it, the largest, at the last measured
    # epoch; precond_*: of P⁻¹H for Adam and RMSprop (null for SGD)
    *SHARPNESS_TRIAL_COLUMNS,
])

# Knob columns go after the sweep's own axes in trials.
AXES_END = "loss_scaling"


def trial_schema(study: Study) -> pa.Schema:
    """The trials columns of a study: TRIAL_COLUMNS with its knobs' columns."""
    return with_model_fields(TRIAL_COLUMNS, [model_field(k, v[0]) for k, v in study.model.items()], AXES_END)


CURVE_COLUMNS = pa.schema([
    ("study", pa.string()),
    ("trial", pa.int64()),
    ("seed", pa.int64()),
    ("epoch", pa.int64()),  # 0 is the initialised model before any update
    ("loss", pa.float64()),
    ("accuracy", pa.float64()),
    ("grad_norm_max", pa.float64()),
    ("learning_rate", pa.float64()),
    added("sharpness", pa.float64(), "2"),  # null on epochs not measured
    added("precond_sharpness", pa.float64(), "2"),
])

# Trials columns that load as pandas categoricals, with their categories fixed so
# that every part file, study and session agrees. (In curves, `loss` is a number.)
CATEGORIES = {**CATEGORICAL_AXES, "status": STATUSES}
NULLABLE_INTS = ("first_nonfinite_step", "skipped_steps")


class ResultsError(Exception):
    """A results directory that cannot be read as this version's reports."""


def _versions() -> tuple[str, str]:
    import keras
    import tensorflow as tf

    return tf.__version__, keras.__version__


def ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def rows_for(study: Study, run: Run, outcome: Outcome | BaseException, *, worker: str = "",
             started_at: datetime | None = None, status: str | None = None,
             versions: tuple[str, str] | None = None) -> tuple[dict, list[dict]]:
    """The trials row and curve rows of one run: the verdict is taken here, from the outcome.

    `versions` (TensorFlow, Keras) are the worker's; given, this process need not import them."""
    c = run.config
    tf_version, keras_version = versions or _versions()
    row = {
        "study": study.name, "trial": run.trial, "config_id": c.config_id, "seed": run.seed,
        "example": study.example, "learning_rate": c.learning_rate, "clipnorm": c.clipnorm,
        "global_clipnorm": c.global_clipnorm, "clipvalue": c.clipvalue, "batch_size": c.batch_size,
        "activation": c.activation, "scaler": c.scaler, "optimizer": c.optimizer, "momentum": c.momentum,
        "nesterov": c.nesterov, "loss": c.loss, "schedule": c.schedule, "precision": c.precision,
        "loss_scaling": c.loss_scaling, **c.knobs, "epochs": study.epochs, "worker": worker,
        "node": socket.gethostname(), "started_at": started_at or datetime.now(timezone.utc), "tf_version": tf_version,
        "keras_version": keras_version, "sweep_version": __version__,
    }
    if isinstance(outcome, BaseException):
        row.update(status=status or "error", engine=study.engine, loss_spikes=0,
                   message=f"{type(outcome).__name__}: {outcome}"[:2000])
        return row, []

    losses = outcome.epoch_loss
    l0 = outcome.initial_loss
    lc = baseline_loss(study, c)
    norms = outcome.grad_norms[np.isfinite(outcome.grad_norms)]
    n_steps = len(outcome.grad_norms)
    final = losses[-1] if losses else math.nan
    row.update(
        engine=outcome.engine,
        status=judge(l0, losses, outcome.first_nonfinite_step, study.verdict, lc),
        first_nonfinite_step=outcome.first_nonfinite_step,
        initial_loss=l0,
        final_loss=final,
        best_loss=min(losses) if losses else math.nan,
        max_loss_ratio=ratio(max(losses), l0) if losses else math.nan,
        final_loss_ratio=ratio(final, l0),
        baseline_loss=lc,
        final_baseline_ratio=ratio(final, lc),
        loss_spikes=len(spike_epochs(losses, study.verdict.spike_factor)),
        grad_norm_p50=float(np.percentile(norms, 50)) if len(norms) else math.nan,
        grad_norm_p90=float(np.percentile(norms, 90)) if len(norms) else math.nan,
        grad_norm_max=float(outcome.grad_norms.max()) if n_steps else math.nan,
        clip_fraction=outcome.clipped_steps / n_steps if n_steps else 0.0,
        final_accuracy=outcome.epoch_accuracy[-1] if outcome.epoch_accuracy else outcome.initial_accuracy,
        wall_seconds=outcome.wall_seconds,
        message=None,
        skipped_steps=outcome.skipped_steps,
        final_loss_scale=outcome.final_loss_scale,
        **summary("sharpness", outcome.sharpness),
        **summary("precond_sharpness", outcome.precond_sharpness),
    )
    curves = [{"study": study.name, "trial": run.trial, "seed": run.seed, "epoch": 0, "loss": l0,
               "accuracy": outcome.initial_accuracy, "grad_norm_max": None,
               "learning_rate": c.learning_rate}]
    for i, loss in enumerate(losses):
        curves.append({"study": study.name, "trial": run.trial, "seed": run.seed, "epoch": i + 1,
                       "loss": loss, "accuracy": outcome.epoch_accuracy[i],
                       "grad_norm_max": outcome.epoch_grad_norm_max[i],
                       "learning_rate": outcome.epoch_learning_rate[i]})
    for curve in curves:
        curve["sharpness"] = finite_or_none(outcome.sharpness.get(curve["epoch"]))
        curve["precond_sharpness"] = finite_or_none(outcome.precond_sharpness.get(curve["epoch"]))
    return row, curves


def arrow_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema` with the reports' `schema_version` metadata."""
    # Column by column: a third of the time of pa.Table.from_pylist's row by row.
    columns = [pa.array([r.get(f.name) for r in rows], type=f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    return table.replace_schema_metadata({"schema_version": SCHEMA_VERSION})


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that `path` is either absent or complete, never torn."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        faults.point("write.tmp")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_batch(study_dir: Path, trial_rows: list[dict], curve_rows: list[dict],
                schema: pa.Schema = TRIAL_COLUMNS) -> str:
    """Commit one batch of finished runs: curves first, then the trials part that records them
    (with the columns of `schema`: the study's `trial_schema`)."""
    stem = f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    (study_dir / "trials").mkdir(parents=True, exist_ok=True)
    (study_dir / "curves").mkdir(parents=True, exist_ok=True)
    write_atomic(arrow_table(curve_rows, CURVE_COLUMNS), study_dir / "curves" / f"{stem}.parquet")
    faults.point("write.curves")
    write_atomic(arrow_table(trial_rows, schema), study_dir / "trials" / f"{stem}.parquet")
    return stem


def tidy(study_dir: Path) -> list[str]:
    """Remove what a crash can leave behind: temporary files and curves parts no trials part
    records. Returns what was removed, for the log."""
    removed = []
    trials = {p.name for p in (study_dir / "trials").glob("part-*.parquet")}
    for sub in ("trials", "curves"):
        for p in (study_dir / sub).glob(".*.tmp"):
            if PART_TMP_RE.match(p.name):
                p.unlink()
                removed.append(str(p))
    for p in (study_dir / "curves").glob("part-*.parquet"):
        if p.name not in trials:
            p.unlink()
            removed.append(str(p))
    return removed


PART_RE = re.compile(r"^part-[A-Za-z0-9T_-]+\.parquet$")
# `write_atomic`'s temporary name for a part: a write in progress, or one a crash interrupted.
PART_TMP_RE = re.compile(r"^\.part-[A-Za-z0-9T_-]+\.parquet\.[0-9a-f]{8}\.tmp$")


def part_files(directory: Path) -> list[Path]:
    """The part files of a dataset directory. Our own temporary files (a write in progress) are
    not parts; anything else that is not a part is refused by name, hidden or not, so no row is
    ever silently skipped."""
    if not directory.is_dir():
        return []
    parts, foreign = [], []
    for p in sorted(directory.iterdir()):
        if PART_TMP_RE.match(p.name):
            continue
        (parts if PART_RE.match(p.name) and p.is_file() else foreign).append(p)
    if foreign:
        raise ResultsError(f"{directory}: not a part file of this dataset: {', '.join(str(f) for f in foreign)}; "
                           "move it elsewhere (only part-*.parquet files written by sweep belong here)")
    return parts


def open_checked(part: Path, schema: pa.Schema, *, verdicts: bool | None = None) -> pq.ParquetFile:
    """A report file opened (its footer read) and checked: Parquet, this schema version, these columns;
    one that holds `verdicts` (every report but the curves, unless told) also judged by this
    version's rules (`JUDGED_SINCE`)."""
    if verdicts is None:
        verdicts = schema is not CURVE_COLUMNS
    try:
        pf = pq.ParquetFile(part)
    except Exception as exc:
        raise ResultsError(f"{part}: not a readable Parquet file ({exc}); move it out of {part.parent}") from None
    version = (pf.schema_arrow.metadata or {}).get(b"schema_version", b"?").decode()
    if version not in READABLE_VERSIONS:
        raise ResultsError(f"{part}: schema_version {version}, this sweep reads {' and '.join(READABLE_VERSIONS)}")
    if verdicts and older_rule(version):
        raise ResultsError(old_verdicts(part, version))
    missing = [f.name for f in schema if f.name not in pf.schema_arrow.names and not _added_after(f, version)]
    if missing:
        raise ResultsError(f"{part}: missing columns {sorted(missing)}")
    return pf


def old_verdicts(part: Path, version: str) -> str:
    """The one-line instruction for a file judged by an earlier rule."""
    return (f"{part}: judged by the rules of schema_version {version} (`stalled` against l0 alone, no "
            "baseline_loss); run `sweep run` on its study file again: it judges every run again from "
            "its curves (nothing trains again) and rebuilds the maps")


def older_rule(version: str) -> bool:
    """Whether a file of `version` holds verdicts by a rule before this version's."""
    return version.isdigit() and int(version) < int(JUDGED_SINCE)


def part_version(part: Path) -> str:
    """The `schema_version` a part file was written with ("?" when it has none or is unreadable:
    the readers then refuse it by name)."""
    try:
        return (pq.read_schema(part).metadata or {}).get(b"schema_version", b"?").decode()
    except Exception:
        return "?"


def _added_after(f: pa.Field, version: str) -> bool:
    since = (f.metadata or {}).get(b"since")
    return since is not None and int(since) > int(version)


def read_checked(pf: pq.ParquetFile, schema: pa.Schema) -> pa.Table:
    """The `schema` columns of a file `open_checked` passed, the columns its version predates null,
    or an axis added since at the value every earlier run had (`spec.AXIS_DEFAULTS`)."""
    present = [n for n in schema.names if n in pf.schema_arrow.names]
    table = pf.read(columns=present)
    for i, f in enumerate(schema):
        if f.name not in present:
            column = (pa.array([AXIS_DEFAULTS[f.name]] * len(table), f.type) if f.name in AXIS_DEFAULTS
                      else pa.nulls(len(table), f.type))
            table = table.add_column(i, f.name, column)
    return table.cast(schema)


def check_curves(study_dir: Path) -> None:
    """Refuse (ResultsError, by name) a curves part that `load_curves` could not read, before a
    session adds to the study: the trials are read whole at start, the curves only here."""
    for part in part_files(study_dir / "curves"):
        open_checked(part, CURVE_COLUMNS)


def _read(directory: Path, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """The dataset's parts (each checked against the whole `schema`) as one table, of its `columns` only if given,
    with the knob columns its parts hold always (they are axes: a reader of axes without them would
    merge settings)."""
    full, tables, knobs = schema, [], None
    for part in part_files(directory):
        pf = open_checked(part, full)
        found = model_fields(pf.schema_arrow)
        if knobs is None:
            knobs = found
            schema = _selected(full, knobs, columns)
        elif [f.name for f in found] != [f.name for f in knobs]:
            raise ResultsError(f"{part}: model knob columns {[f.name for f in found]}, the other parts of "
                               f"{directory} have {[f.name for f in knobs]}; move it out of {directory}")
        try:
            tables.append(read_checked(pf, schema))
        except Exception as exc:  # a footer that reads over damaged data pages
            raise ResultsError(f"{part}: not a readable Parquet file ({exc}); move it out of {directory}") from None
    if not tables:
        return _selected(full, [], columns).empty_table()
    return pa.concat_tables(tables)


def _selected(full: pa.Schema, knobs: list[pa.Field], columns: Sequence[str] | None) -> pa.Schema:
    """The columns `_read` returns: all of `full` or its `columns`, with the `knobs`' columns."""
    if columns is None:
        return with_model_fields(full, knobs, AXES_END) if knobs else full
    names = {f.name for f in knobs}
    return pa.schema([full.field(c) for c in columns if c not in names] + knobs)


def typed(table: pa.Table) -> pd.DataFrame:
    """A trials-like table (trials, map, boundary) as pandas: axis and status columns become
    categoricals with fixed categories, nullable integer columns Int64. Not for curves."""
    df = table.to_pandas()
    for col, cats in CATEGORIES.items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col], categories=list(cats))
    for col in ("example", "engine"):
        if col in df.columns:
            df[col] = df[col].astype("category")
    for col in NULLABLE_INTS:
        if col in df.columns:
            df[col] = df[col].astype("Int64")
    return df



def study_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not (p / "trials").is_dir():
        raise ResultsError(f"{p}: not a study results directory (no trials/ inside)")
    return p


def load_trials(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (configuration, seed), typed: categoricals, nullable clipping and steps; all
    columns, or `columns` (which must include `trial`, the order of the rows)."""
    return typed(_read(study_path(path) / "trials", TRIAL_COLUMNS, columns)).sort_values("trial", ignore_index=True)


def load_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch loss, accuracy, gradient norm and learning rate of every run that has them."""
    p = study_path(path)
    recorded = {x.name for x in part_files(p / "trials")}
    # Curves of a batch whose trials part was never written are not results (see `tidy`).
    stray = [x.name for x in part_files(p / "curves") if x.name not in recorded]
    if stray:
        raise ResultsError(f"{p / 'curves'}: parts without a trials record {stray}; `sweep run` tidies them")
    return _read(p / "curves", CURVE_COLUMNS).to_pandas().sort_values(["trial", "epoch"], ignore_index=True)


# What the driver keeps in memory of each recorded run (`DoneRow`): its identity and what the
# samplers and the Optuna copy read; the rest stays in trials/.
DONE_COLUMNS = ("trial", "config_id", "seed", "status", "final_loss", "message", "max_loss_ratio",
                "final_loss_ratio", "grad_norm_max", "first_nonfinite_step")


class DoneRow:
    """A recorded run as the driver keeps it (`DONE_COLUMNS`), read like the trials row it comes
    from (`row["status"]`, `row.get("message")`). A slotted object takes a sixth of a dict's
    memory: whole row dicts took ~2.5 kB per run, 2.5 GB at 1,000,000 runs.

    >>> row = done_row({"trial": 3, "config_id": "ab", "seed": 0, "status": "stable", "worker": "w"})
    >>> row["trial"], row.get("message"), row.get("worker", "-")
    (3, None, '-')
    """

    __slots__ = DONE_COLUMNS

    def __init__(self, *values):
        for name, value in zip(DONE_COLUMNS, values):
            setattr(self, name, value)

    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in DONE_COLUMNS else default

    def __repr__(self) -> str:
        return f"DoneRow({', '.join(f'{k}={getattr(self, k)!r}' for k in DONE_COLUMNS)})"


_STATUS_NAMES = {s: s for s in STATUSES}


def done_row(row: dict) -> DoneRow:
    """The part of a trials row the driver keeps, its status shared."""
    values = [row.get(k) for k in DONE_COLUMNS]
    values[3] = _STATUS_NAMES.get(values[3], values[3])
    return DoneRow(*values)


def done_rows(study_dir: Path) -> dict[tuple[str, int], DoneRow]:
    """Every run already recorded: (config_id, seed) -> its `DoneRow`."""
    if not (study_dir / "trials").is_dir():
        return {}
    table = _read(study_dir / "trials", TRIAL_COLUMNS, DONE_COLUMNS)
    columns = [table.column(c).to_pylist() for c in DONE_COLUMNS]
    del table
    for i in (DONE_COLUMNS.index("config_id"), DONE_COLUMNS.index("status")):
        shared: dict[str, str] = {}  # one string per configuration and per status, not per run
        columns[i] = [shared.setdefault(v, v) for v in columns[i]]
    return {(r.config_id, r.seed): r for r in (DoneRow(*values) for values in zip(*columns))}
