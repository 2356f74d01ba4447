"""A study as TensorBoard shows it: the runs' curves as scalars, the sweep as an HParams experiment.

`sweep tensorboard DIR/<study>` (and `sweep run --tensorboard D` as rows are committed) writes a
log directory that `tensorboard --logdir D` opens:

* per run, one directory named for its trial, the axes the study varies and its seed
  (``trial=0000012,clipnorm=none,lr=0.01,seed=0``) holding one event file: the epoch curves
  as scalars (`CURVES`; step = epoch, 0 the initialised model), the run's axes and seed as
  hyperparameters, and its outcome as HParams metrics (`METRICS`);
* or, in the aggregate form, one directory per configuration (every axis, the learning rate
  included), written once all its seeds are recorded: the seeds' median curves and
  `AGGREGATE_METRICS` (P(stable), the medians);
* at the top, the HParams experiment: every axis with its domain from the study file, and
  the metrics. Absent clipping is the string "none" there, so the three clipping axes are
  string-valued ("none", "0.1", "1", ...).

Tags are the Parquet columns' names. The files are TensorBoard's own protobuf messages in its
own record framing, written without TensorFlow. A run's file is written under a name
TensorBoard does not read and then renamed, so a run is in the log directory whole or not at
all, and `sync()` writes every recorded run that is not: a killed writer loses nothing, a
resumed one writes each run once. Costs and the one-million-run figures: docs/tensorboard.md.

    >>> hparam_value("clipnorm", None), hparam_value("clipnorm", 1.0), hparam_value("learning_rate", 0.01)
    ('none', '1', 0.01)
    >>> run_name({"trial": 12, "clipnorm": None, "learning_rate": 0.01, "seed": 0}, ("clipnorm", "learning_rate"))
    'trial=0000012,clipnorm=none,lr=0.01,seed=0'
    >>> run_metrics({"status": "nan", "final_loss_ratio": float("nan"), "first_nonfinite_step": 7})
    {'stable': 0.0, 'final_loss_ratio': nan, 'first_nonfinite_step': 7.0}
    >>> board = Board("results/quickstart")   # doctest: +SKIP
    >>> board.sync()                          # doctest: +SKIP
    16
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..results import reports
from ..spec import AXES, CATEGORICAL_AXES, CLIP_AXES, SpecError, Study, parse
from ..verdict import ORCHESTRATOR_STATUSES

INSTALL = "pip install 'stability-sweep[tensorboard]'"
DEFAULT_LOGDIR = "tensorboard"  # under the study directory
# One event file per run, always this name: its presence is the record that the run is written.
EVENTS = "events.out.tfevents.0.stability-sweep"
# Where a run's file is written first: without "tfevents" in its name TensorBoard never reads it.
PARTIAL = ".events.partial"
# The log directory's owner (study, plan, form): another study's or form's runs are refused.
MARKER = ".stability-sweep.json"
FORMS = ("runs", "aggregate")
# Files a TensorBoard server holds open besides its runs' (sockets, libraries, its loader).
OPEN_FILES_SPARE = 256

# Per-epoch curves, tag = the curves column. Null values (no gradient norm before the first
# update, sharpness on epochs not measured) are left out.
CURVES = ("loss", "accuracy", "grad_norm_max", "learning_rate", "sharpness", "precond_sharpness")
# Curves whose non-finite values count as +inf in the seeds' median (a NaN loss is a loss that
# blew up, not a missing one; a run stops there, so it stays +inf after); the others skip NaN.
BLOWN_UP = ("loss", "grad_norm_max")

# The HParams metrics of a run: tag, the trials column it comes from, what it means. A metric
# whose column the trials lack is left out, so adding a column to the trials is one line here.
METRICS = (
    ("stable", "status", "1 if the verdict is stable, else 0"),
    ("final_loss_ratio", "final_loss_ratio", "final loss / l0 (the initialised model's loss)"),
    ("max_loss_ratio", "max_loss_ratio", "largest epoch loss / l0"),
    ("first_nonfinite_step", "first_nonfinite_step",
     "the step at which a loss, gradient or weight first became non-finite; -1: never"),
    ("final_baseline_ratio", "final_baseline_ratio", "final loss / the baseline's loss"),
    ("final_loss", "final_loss", "the last epoch's training loss"),
)
# The aggregate form: P(stable), then `median_<tag>` of each of `MEDIAN_OF` the trials have,
# then the rest. (The HParams dashboard shows the first five metrics until others are ticked.)
AGGREGATE_METRICS = (
    ("p_stable", "share of the seeds whose verdict is stable (error and timeout runs not counted)"),
    ("first_nonfinite_step", "the earliest first non-finite step among the seeds; -1: none"),
    ("n_seeds", "seeds that trained to a verdict"),
)
MEDIAN_OF = ("final_loss_ratio", "max_loss_ratio", "final_baseline_ratio", "final_loss")

_DESCRIPTIONS = {
    "learning_rate": "the optimizer's learning rate",
    **{c: f"Keras {c}; none: not clipped (null in Parquet)" for c in CLIP_AXES},
    "seed": "initial weights and batch order",
}
_SHORT = {"learning_rate": "lr"}


class TensorBoardMissing(Exception):
    """The `tensorboard` package is not installed."""


class LogdirError(Exception):
    """A log directory that cannot take this study's runs: another study's or form's, or a file."""


def modules() -> SimpleNamespace:
    """TensorBoard's protobuf messages and record writer (none of these imports TensorFlow), or
    `TensorBoardMissing`."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise TensorBoardMissing(f"the tensorboard package is not installed: {INSTALL}") from None
    return SimpleNamespace(event_pb2=event_pb2, summary_pb2=summary_pb2, api_pb2=api_pb2, metadata=metadata,
                           plugin_data_pb2=plugin_data_pb2, hp=hp, RecordWriter=RecordWriter)


def _text(v) -> str:
    """A value in a name or as a string hyperparameter: short, and distinct for distinct numbers."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def hparam_value(axis: str, v) -> str | float | int:
    """A value of an axis (or `seed`) as HParams takes it: clipping and the categorical axes as
    strings ("none": absent clipping), learning rate a float, batch size and seed integers; a
    model knob as it is (text, boolean) or a float."""
    if isinstance(v, np.generic):
        v = v.item()
    if axis in CLIP_AXES:
        return _text(None if v is None else float(v))
    if axis in CATEGORICAL_AXES or isinstance(v, str):
        return str(v)
    if isinstance(v, bool):
        return v
    return int(v) if axis in ("batch_size", "seed") else float(v)


def _label(axis: str, v) -> str:
    return f"{_SHORT.get(axis, axis)}={_text(hparam_value(axis, v))}"


def run_name(row: dict, axes: Iterable[str]) -> str:
    """A run's directory: its trial number, its values of `axes`, its seed."""
    return ",".join([f"trial={int(row['trial']):07d}", *(_label(a, row[a]) for a in axes), f"seed={int(row['seed'])}"])


def config_name(row: dict, axes: Iterable[str]) -> str:
    """A configuration's directory (aggregate form): its values of `axes`, else its id."""
    return ",".join(_label(a, row[a]) for a in axes) or f"config={row['config_id']}"


def run_metrics(row: dict) -> dict[str, float]:
    """A run's HParams metrics (`METRICS`) from its trials row. Non-finite values are kept (a
    NaN loss ratio is what a blown-up run has); null ones (not measured, or an error or
    timeout run) are left out."""
    failed = row.get("status") in ORCHESTRATOR_STATUSES  # error, timeout: no outcome to measure
    out = {}
    for tag, column, _ in METRICS:
        if column not in row:
            continue
        v = row[column]
        if tag == "stable":
            out[tag] = float(v == "stable")
        elif failed:
            continue
        elif tag == "first_nonfinite_step":
            out[tag] = -1.0 if v is None else float(v)
        elif v is not None:
            out[tag] = float(v)
    return out


def _median_blown_up(values: list[float]) -> float:
    """The median with non-finite values counted as +inf (as map.parquet's medians do)."""
    return float(np.median([v if math.isfinite(v) else math.inf for v in values]))


def stored_study(study_dir: Path) -> Study | None:
    """The study file stored with the results, read without importing any user code; None for
    a directory written without one."""
    try:
        meta = json.loads((study_dir / "study.json").read_text())
        return parse(meta["study_toml"], str(study_dir / "study.json"), import_builder=False)
    except (OSError, ValueError, KeyError, TypeError, SpecError):
        return None


def _domain(axis: str, values: Iterable) -> list:
    """An axis's HParams domain (HParams sorts it: numbers ascending, strings alphabetically)."""
    return list(dict.fromkeys(hparam_value(axis, v) if axis in CLIP_AXES or axis in CATEGORICAL_AXES
                              or isinstance(v, (str, bool)) else float(v) for v in values))  # HParams numbers are doubles


def _replace(path: Path, data: bytes, tmp: Path, sync: bool = False) -> None:
    """`path` holds `data` whole or keeps what it held (`tmp` is written, then renamed; for an
    event file, a name TensorBoard does not read). Run files are not synced: a killed process
    leaves the page cache written; a power cut's zero-length file is written again."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _parts(directory: Path, seen: set[str]) -> list[Path]:
    """The trials parts not in `seen`, oldest first (their names start with the commit time);
    anything else there is refused by name, as the loaders refuse it."""
    return [p for p in reports.part_files(directory) if p.name not in seen]


def _read(part: Path, schema: pa.Schema) -> pa.Table:
    """A part's `schema` columns, and its model knobs' (axes: the runs' hyperparameters)."""
    try:
        pf = reports.open_checked(part, schema)
        knobs = reports.model_fields(pf.schema_arrow)
        return reports.read_checked(pf, reports.with_model_fields(schema, knobs, reports.AXES_END) if knobs else schema)
    except reports.ResultsError:
        raise
    except Exception as exc:  # a footer that reads over damaged data pages
        raise reports.ResultsError(f"{part}: not a readable Parquet file ({exc})") from None


def _curves(part: Path, trials: Iterable[int]) -> dict[int, list[dict]]:
    """The curve rows of `trials` in the curves part that goes with a trials part, by trial,
    in epoch order."""
    path = part.parent.parent / "curves" / part.name
    if not path.exists():  # written before its trials part, so absent only if removed by hand
        return {}
    table = _read(path, reports.CURVE_COLUMNS)
    table = table.filter(pc.is_in(table["trial"], pa.array(sorted(set(trials)), pa.int64())))
    out: dict[int, list[dict]] = defaultdict(list)
    for c in table.to_pylist():
        out[c["trial"]].append(c)
    for rows in out.values():
        rows.sort(key=lambda c: c["epoch"])
    return out


def _most_seeds(study_dir: Path) -> int:
    """The most seeds any configuration has recorded: a study without its study file counts a
    configuration complete with that many."""
    counts: dict[str, int] = defaultdict(int)
    for part in _parts(study_dir / "trials", set()):
        for cid in _read(part, reports.TRIAL_COLUMNS).column("config_id").to_pylist():
            counts[cid] += 1
    return max(counts.values(), default=1)


class Board:
    """A study's TensorBoard log directory, brought level with its `trials/` by `sync()`.

    Only committed runs are written (a trials part is the record that its runs are done), and
    each once: a run whose event file is in place is skipped, any other is written (again)."""

    def __init__(self, study_dir: str | os.PathLike, logdir: str | os.PathLike | None = None, *,
                 aggregate: bool = False):
        self.tb = modules()
        self.study_dir = Path(study_dir)
        # study.json is a session's first write, trials/ comes with its first commit.
        if not (self.study_dir / "study.json").is_file():
            self.study_dir = reports.study_path(study_dir)
        self.logdir = Path(logdir) if logdir is not None else self.study_dir / DEFAULT_LOGDIR
        self.form = FORMS[aggregate]
        self.study = stored_study(self.study_dir)
        # Every axis, the study's model knobs too (the sweep's own without a study file).
        self.axes = self.study.axes if self.study else AXES
        # The axes a name shows: those the study file varies; none without one, so that a name
        # never depends on which runs happen to be recorded.
        self.name_axes = tuple(a for a in self.axes if self.study and len(self.study.values(a)) > 1)
        self.seeds = len(self.study.seeds) if self.study else None
        self._seen: set[str] = set()  # trials parts gone through
        # Aggregate form: configurations with seeds still to come (their rows and curves so far),
        # and those found written already.
        self._pending: dict[str, tuple[list[dict], dict[int, list[dict]]]] = {}
        self._skip: set[str] = set()
        self._ready = False
        self.written = 0  # runs (aggregate: configurations) this object wrote
        self.present = 0  # found written already

    def sync(self) -> int:
        """Write every recorded run (aggregate: every configuration whose seeds are all
        recorded) that the log directory lacks; returns how many it wrote."""
        if not self._ready:
            self._claim()
            self._write_experiment()
            if self.form == "aggregate" and self.seeds is None:
                self.seeds = _most_seeds(self.study_dir)
            self._ready = True
        before = self.written
        for part in _parts(self.study_dir / "trials", self._seen):
            rows = _read(part, reports.TRIAL_COLUMNS).to_pylist()
            (self._runs if self.form == "runs" else self._configurations)(part, rows)
            self._seen.add(part.name)
        return self.written - before

    # -- the log directory ---------------------------------------------------------------

    def _claim(self) -> None:
        """Create the log directory, or check that it holds this study's runs in this form."""
        identity = {"study": self.study_dir.name, "form": self.form,
                    "plan_digest": self.study.plan_digest() if self.study else None}
        marker = self.logdir / MARKER
        try:
            if self.logdir.exists() and not self.logdir.is_dir():
                raise LogdirError(f"{self.logdir}: not a directory; pass another --logdir")
            if marker.exists():
                stored = json.loads(marker.read_text())
                if not isinstance(stored, dict):
                    raise ValueError("not a JSON object")
                if stored != identity:
                    raise LogdirError(
                        f"{self.logdir}: holds the TensorBoard runs of study {stored.get('study')!r} in the "
                        f"{stored.get('form')} form, not of {identity['study']!r} in the {self.form} form "
                        "(or the study's plan changed); pass another --logdir")
                return
            if self.logdir.is_dir() and any(self.logdir.iterdir()):
                raise LogdirError(f"{self.logdir}: not empty and not a log directory this sweep wrote; "
                                  "pass another --logdir")
            self.logdir.mkdir(parents=True, exist_ok=True)
            _replace(marker, json.dumps(identity).encode(), tmp=self.logdir / f"{MARKER}.partial", sync=True)
        except ValueError as exc:  # a marker that is not JSON
            raise LogdirError(f"{marker}: not a marker this sweep wrote ({exc}); pass another --logdir") from None
        except OSError as exc:
            raise LogdirError(f"{self.logdir}: cannot write there ({exc.strerror or exc})") from None

    def experiment(self, columns: Iterable[str]) -> tuple[list, list[tuple[str, str]]]:
        """The HParams experiment: the hyperparameters (every axis, and in the runs form the
        seed) with their domains from the study file, and (tag, description) of the metrics
        whose trials columns are among `columns`."""
        hp = self.tb.hp
        hparams = []
        for axis in (*self.axes, *(("seed",) if self.form == "runs" else ())):
            values = () if self.study is None else self.study.seeds if axis == "seed" else self.study.values(axis)
            domain = _domain(axis, values)
            hparams.append(hp.HParam(axis, hp.Discrete(domain) if domain else None,
                                     description=_DESCRIPTIONS.get(axis)))
        columns = set(columns)
        if self.form == "runs":
            return hparams, [(tag, text) for tag, column, text in METRICS if column in columns]
        text = {tag: text for tag, _, text in METRICS}
        medians = [(f"median_{tag}", f"median over the seeds, non-finite as +inf: {text[tag]}")
                   for tag in MEDIAN_OF if tag in columns]
        return hparams, [AGGREGATE_METRICS[0], *medians, *AGGREGATE_METRICS[1:]]

    def _write_experiment(self) -> None:
        """The experiment at the log directory's top, rewritten only when it changed (a running
        TensorBoard keeps the first it read). An axis the study varies is marked `differs`:
        the dashboard lists those first and shows five hyperparameters until others are ticked."""
        tb = self.tb
        hparams, metrics = self.experiment(reports.TRIAL_COLUMNS.names)
        meta = self.study_dir / "study.json"
        created = meta.stat().st_mtime if meta.exists() else 0.0
        experiment = tb.api_pb2.Experiment(time_created_secs=created)
        for hparam in hparams:
            info = experiment.hparam_infos.add(name=hparam.name, description=hparam.description or "")
            if hparam.domain is not None:
                hparam.domain.update_hparam_info(info)
            info.differs = len(info.domain_discrete.values) > 1
        for tag, text in metrics:
            experiment.metric_infos.add(name=tb.api_pb2.MetricName(tag=tag), description=text)
        summary = tb.summary_pb2.Summary()
        summary.value.add(tag=tb.metadata.EXPERIMENT_TAG, tensor=tb.metadata.NULL_TENSOR,
                          metadata=tb.metadata.create_summary_metadata(
                              tb.plugin_data_pb2.HParamsPluginData(experiment=experiment)))
        data = self._file([tb.event_pb2.Event(wall_time=created, step=0, summary=summary)], created)
        path = self.logdir / EVENTS
        if not path.exists() or path.read_bytes() != data:
            _replace(path, data, tmp=self.logdir / PARTIAL)

    def _done(self, name: str) -> bool:
        try:  # a zero-length file is what a power cut can leave of an unsynced one
            return (self.logdir / name / EVENTS).stat().st_size > 0
        except FileNotFoundError:
            return False

    def _put(self, name: str, data: bytes) -> None:
        run = self.logdir / name
        run.mkdir(exist_ok=True)
        _replace(run / EVENTS, data, tmp=run / PARTIAL)
        self.written += 1

    # -- events ------------------------------------------------------------------------------

    def _file(self, events: list, wall_time: float) -> bytes:
        """An event file: the version record, then `events`, in TFRecord framing."""
        chunks: list[bytes] = []
        writer = self.tb.RecordWriter(SimpleNamespace(write=chunks.append))
        writer.write(self.tb.event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
        for e in events:
            writer.write(e.SerializeToString())
        return b"".join(chunks)

    def _scalars(self, step: int, wall_time: float, values: dict[str, float]):
        """One event of scalars. `simple_value`, a float32, is what every TensorBoard loader
        reads as a scalar (the fast loader reads no float64 tensor); a loss beyond float32's
        3.4e38 shows as inf there, Parquet keeps its float64."""
        summary = self.tb.summary_pb2.Summary()
        for tag, v in values.items():
            summary.value.add(tag=tag, simple_value=v)
        return self.tb.event_pb2.Event(wall_time=wall_time, step=step, summary=summary)

    def _events(self, name: str, hparams: dict, start: float, end: float, curves: Iterable[tuple[int, dict]],
                metrics: dict[str, float], failed: bool) -> bytes:
        """A session: its hyperparameters, its curves, its metrics (at the last step) and its end."""
        tb = self.tb
        events = [tb.event_pb2.Event(wall_time=start, step=0,
                                     summary=tb.hp.hparams_pb(hparams, trial_id=name, start_time_secs=start))]
        last = 0
        for epoch, values in curves:
            if values:
                events.append(self._scalars(epoch, end, values))
            last = epoch
        events.append(self._scalars(last, end, metrics))
        status = tb.api_pb2.STATUS_FAILURE if failed else tb.api_pb2.STATUS_SUCCESS
        plugin_data = tb.plugin_data_pb2.HParamsPluginData(
            session_end_info=tb.plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end))
        end_summary = tb.summary_pb2.Summary()
        end_summary.value.add(tag=tb.metadata.SESSION_END_INFO_TAG, tensor=tb.metadata.NULL_TENSOR,
                              metadata=tb.metadata.create_summary_metadata(plugin_data))
        events.append(tb.event_pb2.Event(wall_time=end, step=last, summary=end_summary))
        return self._file(events, start)

    # -- the two forms ---------------------------------------------------------------------

    def _runs(self, part: Path, rows: list[dict]) -> None:
        todo = [(row, name) for row in rows if not self._done(name := run_name(row, self.name_axes))]
        self.present += len(rows) - len(todo)
        if not todo:
            return
        curves = _curves(part, (row["trial"] for row, _ in todo))
        for row, name in todo:
            start, end = _times(row)
            hparams = {a: hparam_value(a, row[a]) for a in (*self.axes, "seed")}
            series = [(c["epoch"], {t: c[t] for t in CURVES if c[t] is not None}) for c in curves.get(row["trial"], [])]
            self._put(name, self._events(name, hparams, start, end, series, run_metrics(row),
                                         row["status"] in ORCHESTRATOR_STATUSES))

    def _configurations(self, part: Path, rows: list[dict]) -> None:
        by_config: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_config[row["config_id"]].append(row)
        fresh = []
        for cid, group in by_config.items():
            if cid in self._skip:
                continue
            if cid not in self._pending and self._done(config_name(group[0], self.name_axes)):
                self._skip.add(cid)
                self.present += 1
                continue
            fresh.append(cid)
        if not fresh:
            return
        curves = _curves(part, (r["trial"] for cid in fresh for r in by_config[cid]))
        for cid in fresh:
            seen_rows, seen_curves = self._pending.setdefault(cid, ([], {}))
            seen_rows.extend(by_config[cid])
            seen_curves.update({r["trial"]: curves.get(r["trial"], []) for r in by_config[cid]})
            if len(seen_rows) >= self.seeds:
                del self._pending[cid]
                self._skip.add(cid)
                self._put_configuration(seen_rows, seen_curves)

    def _put_configuration(self, rows: list[dict], curves: dict[int, list[dict]]) -> None:
        name = config_name(rows[0], self.name_axes)
        trained = [r for r in rows if r["status"] not in ORCHESTRATOR_STATUSES]
        metrics: dict[str, float] = {}
        if trained:
            metrics["p_stable"] = sum(r["status"] == "stable" for r in trained) / len(trained)
            steps = [r["first_nonfinite_step"] for r in trained if r["first_nonfinite_step"] is not None]
            metrics["first_nonfinite_step"] = float(min(steps)) if steps else -1.0
        metrics["n_seeds"] = float(len(trained))
        for tag in MEDIAN_OF:
            values = [r[tag] for r in trained if r.get(tag) is not None]
            if values:
                metrics[f"median_{tag}"] = _median_blown_up(values)
        times = [_times(r) for r in rows]
        self._put(name, self._events(name, {a: hparam_value(a, rows[0][a]) for a in self.axes},
                                     min(t[0] for t in times), max(t[1] for t in times),
                                     _median_curves([curves.get(r["trial"], []) for r in trained]), metrics,
                                     failed=not trained))


def _times(row: dict) -> tuple[float, float]:
    """A run's start and end in seconds since the epoch: the hyperparameters are stamped with
    its start, its scalars with its end (the trials record no per-epoch time)."""
    start = row["started_at"].timestamp() if row.get("started_at") is not None else 0.0
    return start, start + (row.get("wall_seconds") or 0.0)


def _median_curves(seeds: list[list[dict]]) -> list[tuple[int, dict[str, float]]]:
    """Per epoch, each curve's median over the seeds. A seed that stopped at a non-finite loss
    counts as +inf on the `BLOWN_UP` curves after it; the other curves' medians skip what a
    seed lacks."""
    by_epoch = [{c["epoch"]: c for c in curve} for curve in seeds]
    out = []
    for epoch in sorted({e for curve in by_epoch for e in curve}):
        values: dict[str, float] = {}
        for tag in CURVES:
            column = []
            for curve, at in zip(seeds, by_epoch):
                if epoch in at and at[epoch][tag] is not None:
                    column.append(at[epoch][tag])
                elif tag in BLOWN_UP and curve and curve[-1]["epoch"] < epoch and not _finite(curve[-1][tag]):
                    column.append(math.inf)
            if tag in BLOWN_UP and column:
                values[tag] = _median_blown_up(column)
            elif (finite := [v for v in column if not math.isnan(v)]):
                values[tag] = float(np.median(finite))
        out.append((epoch, values))
    return out


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def open_files_note(runs: int) -> str | None:
    """A line for a log directory of more runs than a process started here may open files
    (None otherwise): TensorBoard keeps every run's event file open, and past its limit lists
    only part of the runs.

    >>> open_files_note(10) is None
    True
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or runs + OPEN_FILES_SPARE <= soft:
        return None
    need = runs + OPEN_FILES_SPARE
    fix = (f"run `ulimit -n {need}` in the shell that starts it" if hard == resource.RLIM_INFINITY or need <= hard
           else f"this system allows {hard} at most: write the aggregate form, or raise the hard limit")
    return (f"{runs} runs: TensorBoard keeps each run's file open and may open {soft} files here, so it "
            f"would list only part of them; {fix}")


def write(study_dir: str | os.PathLike, logdir: str | os.PathLike | None = None, *,
          aggregate: bool = False) -> Board:
    """Bring a study's log directory level with its trials; the `Board` says what it wrote."""
    board = Board(study_dir, logdir, aggregate=aggregate)
    board.sync()
    return board


class Follower:
    """`sweep run --tensorboard`: the log directory kept level with a running study.

    Made before the session: it writes what the trials already record that the log directory
    lacks (a run committed just before a driver died), then, on a thread of its own, what
    every commit adds, woken by `on_batch` and at most once every `interval` seconds, so the
    driver's loop never waits on it. `close()` writes the last commit's runs. A failure to
    write (a full disk) is reported once through `warn` and ends the following, not the sweep;
    `sweep tensorboard` catches up later."""

    def __init__(self, board: Board, on_batch: Callable | None = None, warn: Callable[[str], None] = print,
                 interval: float = 1.0):
        self.board, self.on_batch, self.warn, self.interval = board, on_batch, warn, interval
        self.caught_up = board.sync()
        self.failed = False
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._follow, name="tensorboard", daemon=True)
        self._thread.start()

    def __call__(self, summary, rows) -> None:
        if self.on_batch is not None:
            self.on_batch(summary, rows)
        self._wake.set()

    def _follow(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            if not self._sync():
                return
            self._stop.wait(self.interval)

    def _sync(self) -> bool:
        try:
            self.board.sync()
            return True
        except Exception as exc:
            self.failed = True
            self.warn(f"{self.board.logdir}: stopped writing TensorBoard runs ({exc}); the sweep goes on, "
                      f"`sweep tensorboard {self.board.study_dir} --logdir {self.board.logdir}` catches up")
            return False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if not self.failed:
            self._sync()
