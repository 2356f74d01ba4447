"""Study files: read, check every field, and expand into the plan of runs.

A study is plain values; `load` either returns one or raises `SpecError`
listing every problem (file, field, what is allowed)::

    >>> from sweep.spec import parse
    >>> s = parse('''
    ... [study]
    ... name = "demo"
    ... example = "exploding_gradients"
    ... epochs = 2
    ... seeds = [0, 1]
    ... [grid]
    ... learning_rate = [0.001, 0.1]
    ... clipnorm = ["none", 1.0]
    ... ''', "demo.toml")
    >>> len(s.plan())
    8
    >>> s.plan()[0].config.clipnorm is None
    True
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import itertools
import json
import math
import re
import stat
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .catalog import BASE_DEFAULTS, EXAMPLES
from .verdict import Thresholds

# Allowed values of the categorical axes: one place, also the categories of the Parquet columns.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "elu", "selu", "softplus", "swish", "leaky_relu", "linear")
SCALERS = ("none", "standard", "minmax")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "plateau")
LOSSES = ("binary_crossentropy", "categorical_crossentropy", "mse", "handwritten", "handwritten_clipped", "compiled")
SAMPLERS = ("grid", "boundary", "tpe")
ENGINES = ("population", "keras")

CLIP_AXES = ("clipnorm", "global_clipnorm", "clipvalue")
# The sweep's axes in plan order; learning rate is last so that a setting's runs are adjacent.
AXES = ("activation", "scaler", "optimizer", "loss", "schedule", "batch_size", *CLIP_AXES, "learning_rate")
CATEGORICAL_AXES = {
    "activation": ACTIVATIONS,
    "scaler": SCALERS,
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "schedule": SCHEDULES,
}
SETTING_AXES = tuple(a for a in AXES if a != "learning_rate")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STUDY_KEYS = {
    "name": "a plain file name: letters, digits, '.', '_' or '-', at most 100 characters",
    "example": "a catalog id (" + ", ".join(EXAMPLES) + ") or 'module:function'",
    "epochs": "an integer from 1 to 10000",
    "seeds": "a non-empty list of distinct integers from 0 to 4294967295",
    "sampler": " | ".join(SAMPLERS),
    "engine": " | ".join(ENGINES),
    "data_seed": "an integer from 0 to 4294967295 (the seed of the example's data set)",
    "timeout": "seconds per run, a number > 0",
    "n_trials": "an integer >= 1 (tpe: how many configurations to try)",
}
# A plan larger than this is refused unless the user raises the guard (`--max-runs`):
# a typo in a grid should not start a month of training or fill the driver's memory.
MAX_RUNS = 200_000
# Seeds go to numpy's and Keras's generators, which take 32-bit seeds.
MAX_SEED = 2**32 - 1
# A study file is a few lines; anything larger is not one (and is not read into memory).
MAX_FILE_BYTES = 1 << 20
SECTIONS = ("study", "grid", "verdict", "boundary")
BOUNDARY_KEYS = {
    "resolution": "a number > 1: the boundary sampler stops bisecting a setting's edge once "
                  "lr_unstable_min / lr_stable_max is at most this factor (it probes the grid's "
                  "learning rates, so two neighbouring grid values always stop it)",
}


class SpecError(Exception):
    """Every problem found in one study file; `str()` is the report a user reads."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}: {f}: {m}" if f else f"{path}: {m}" for f, m in problems))


@dataclass(frozen=True)
class Config:
    """One point of the grid: a value for every axis (clipping None when absent)."""

    learning_rate: float
    clipnorm: float | None
    global_clipnorm: float | None
    clipvalue: float | None
    batch_size: int
    activation: str
    scaler: str
    optimizer: str
    loss: str
    schedule: str

    @functools.cached_property  # the driver looks it up for every run it schedules
    def config_id(self) -> str:
        """A stable 12-hex-digit id of the axis values (the same in every study and session)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def setting(self) -> tuple:
        """Every axis but learning rate: the unit a stability edge is measured for."""
        return tuple(getattr(self, a) for a in SETTING_AXES)


@dataclass(frozen=True)
class Run:
    """A planned (configuration, seed); `trial` is its stable index in the study's plan."""

    trial: int
    config: Config
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.config.config_id, self.seed)


@dataclass(frozen=True)
class Study:
    name: str
    example: str
    epochs: int
    seeds: tuple[int, ...]
    sampler: str
    engine: str
    grid: dict[str, tuple]  # every axis, complete: the study's values or the example's default
    verdict: Thresholds
    data_seed: int = 0
    timeout: float | None = None
    n_trials: int | None = None
    # [boundary] resolution; None: bisect down to neighbouring grid learning rates.
    resolution: float | None = None
    path: str = "<study>"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def configs(self) -> list[Config]:
        """Every grid point. Keras allows one kind of clipping per optimizer, so points that
        set two kinds at once are not configurations and are left out."""
        out = []
        for values in itertools.product(*(self.grid[a] for a in AXES)):
            axes = dict(zip(AXES, values))
            if sum(axes[c] is not None for c in CLIP_AXES) > 1:
                continue
            out.append(Config(**axes))
        return out

    def plan(self) -> list[Run]:
        runs = []
        for config in self.configs():
            for seed in self.seeds:
                runs.append(Run(len(runs), config, seed))
        return runs

    def plan_digest(self) -> str:
        """What a resumed study must agree on: everything that changes the runs or their rows."""
        blob = json.dumps(
            {"example": self.example, "epochs": self.epochs, "data_seed": self.data_seed,
             "verdict": asdict(self.verdict), "grid": {a: list(self.grid[a]) for a in AXES},
             "seeds": list(self.seeds)},
            sort_keys=True, default=repr,
        )
        return hashlib.sha1(blob.encode()).hexdigest()


def example_defaults(example: str) -> dict[str, Any]:
    if example in EXAMPLES:
        return EXAMPLES[example].defaults
    return {**BASE_DEFAULTS, "loss": "compiled"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _check_axis(axis: str, values: Any, allowed_losses: tuple[str, ...], problems: list) -> tuple | None:
    """The axis's values normalised (clipping 'none' -> None), or None after noting problems."""
    where = f"grid.{axis}"
    if not isinstance(values, list):
        values = [values]
    if not values:
        problems.append((where, "is empty; give at least one value or leave the axis out"))
        return None
    out, ok = [], True
    for v in values:
        if axis == "learning_rate" or axis in CLIP_AXES:
            if axis in CLIP_AXES and isinstance(v, str) and v.lower() == "none":
                out.append(None)
                continue
            allowed = "finite numbers > 0" + (" or \"none\"" if axis in CLIP_AXES else "")
            if not _is_number(v):
                problems.append((where, f"{v!r} is not a number; allowed: {allowed}"))
                ok = False
            elif not math.isfinite(v) or v <= 0:
                problems.append((where, f"{v!r} is not allowed; allowed: {allowed}"))
                ok = False
            else:
                out.append(float(v))
        elif axis == "batch_size":
            if not _is_int(v) or v < 1:
                problems.append((where, f"{v!r} is not allowed; allowed: integers >= 1"))
                ok = False
            else:
                out.append(v)
        else:
            allowed = allowed_losses if axis == "loss" else CATEGORICAL_AXES[axis]
            if not isinstance(v, str) or v not in allowed:
                problems.append((where, f"{v!r} is not allowed; allowed: {', '.join(allowed)}"))
                ok = False
            else:
                out.append(v)
    if ok and len(set(out)) != len(out):
        dup = sorted({repr(v) for v in out if out.count(v) > 1})
        problems.append((where, f"has duplicate values ({', '.join(dup)}); list each value once"))
        ok = False
    return tuple(out) if ok else None


def _check_builder(ref: str, problems: list, import_builder: bool = True) -> None:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        problems.append(("study.example", f"{ref!r} is not allowed; allowed: {STUDY_KEYS['example']}"))
        return
    if not import_builder:
        return
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module can fail in any way; report it, do not crash
        problems.append(("study.example", f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"))
        return
    fn = getattr(module, attr, None)
    if fn is None:
        problems.append(("study.example", f"module {module_name!r} has no attribute {attr!r}"))
    elif not callable(fn):
        problems.append(("study.example", f"{ref!r} is not callable; it must be a function "
                         "(activation: str, seed: int) -> (keras.Model compiled with its loss, x, y)"))


def parse(text: str, path: str = "<study>", max_runs: int = MAX_RUNS, *, import_builder: bool = True) -> Study:
    """The study of a TOML text, every field checked; `SpecError` lists every problem.

    A `module:function` example is imported to check it (the user's code runs); readers of a
    results directory pass `import_builder=False`, so that a stored study file never makes
    them import anything."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, [("", f"TOML syntax error: {exc}")]) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise SpecError(path, [("", "arrays or tables nested too deeply to be a study file")]) from None
    problems: list[tuple[str, str]] = []

    for section in raw:
        if section not in SECTIONS:
            problems.append((section, f"unknown section; allowed: {', '.join('[' + s + ']' for s in SECTIONS)}"))
    for section in SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            problems.append((section, "must be a table ([" + section + "])"))
    study = raw.get("study") if isinstance(raw.get("study"), dict) else {}
    grid_raw = raw.get("grid") if isinstance(raw.get("grid"), dict) else {}
    verdict_raw = raw.get("verdict") if isinstance(raw.get("verdict"), dict) else {}
    boundary_raw = raw.get("boundary") if isinstance(raw.get("boundary"), dict) else {}
    if "study" not in raw:
        problems.append(("study", "missing; a study file needs a [study] table with name and example"))

    for key in study:
        if key not in STUDY_KEYS:
            problems.append((f"study.{key}", f"unknown key; allowed: {', '.join(STUDY_KEYS)}"))

    name = study.get("name")
    if name is None:
        problems.append(("study.name", "missing; " + STUDY_KEYS["name"]))
    elif not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        problems.append(("study.name", f"{name!r} is not allowed; allowed: {STUDY_KEYS['name']}"))

    example = study.get("example")
    example_ok = False
    if example is None:
        problems.append(("study.example", "missing; " + STUDY_KEYS["example"]))
    elif not isinstance(example, str):
        problems.append(("study.example", f"{example!r} is not allowed; allowed: {STUDY_KEYS['example']}"))
    elif example in EXAMPLES:
        example_ok = True
    elif ":" in example:
        n = len(problems)
        _check_builder(example, problems, import_builder)
        example_ok = len(problems) == n
    else:
        problems.append(("study.example", f"unknown example {example!r}; allowed: {STUDY_KEYS['example']}"))
    catalog_example = EXAMPLES.get(example) if isinstance(example, str) else None

    def integer(key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
        v = study.get(key, default)
        if v is None:
            return None
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            problems.append((f"study.{key}", f"{v!r} is not allowed; allowed: {STUDY_KEYS[key]}"))
            return None
        return v

    epochs = integer("epochs", catalog_example.epochs if catalog_example else 20, 1, 10000)
    data_seed = integer("data_seed", 0, 0, MAX_SEED)
    n_trials = integer("n_trials", None, 1)

    seeds = study.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and 0 <= s <= MAX_SEED for s in seeds):
        problems.append(("study.seeds", f"{seeds!r} is not allowed; allowed: {STUDY_KEYS['seeds']}"))
        seeds = None
    elif len(set(seeds)) != len(seeds):
        problems.append(("study.seeds", "has duplicate values; list each seed once"))
        seeds = None

    choices = {}
    for key, allowed, default in (("sampler", SAMPLERS, "grid"), ("engine", ENGINES, "population")):
        v = study.get(key, default)
        if v not in allowed:
            problems.append((f"study.{key}", f"{v!r} is not allowed; allowed: {' | '.join(allowed)}"))
        choices[key] = v

    timeout = study.get("timeout")
    if timeout is not None and (not _is_number(timeout) or not math.isfinite(timeout) or timeout <= 0):
        problems.append(("study.timeout", f"{timeout!r} is not allowed; allowed: {STUDY_KEYS['timeout']}"))
        timeout = None

    defaults = example_defaults(example) if example_ok else dict(BASE_DEFAULTS, loss="compiled")
    allowed_losses = catalog_example.losses if catalog_example else ("compiled",)
    grid: dict[str, tuple] = {}
    for axis in grid_raw:
        if axis not in AXES:
            problems.append((f"grid.{axis}", f"unknown axis; allowed: {', '.join(AXES)}"))
    for axis in AXES:
        if axis in grid_raw:
            values = _check_axis(axis, grid_raw[axis], allowed_losses, problems)
            if values is not None:
                grid[axis] = values
        else:
            grid[axis] = (defaults[axis],)

    thresholds = Thresholds()
    t_values = {}
    allowed_t = {
        "diverge_factor": ("a finite number > 1 (a run diverged when its loss reached this multiple of l0)", lambda v: v > 1),
        "stall_ratio": ("a number in (0, 1] (a run stalled when its final loss stayed above this fraction of l0)", lambda v: 0 < v <= 1),
        "spike_factor": ("a finite number > 1 (an epoch spiked when its loss rose above this multiple of the lowest before it)", lambda v: v > 1),
    }
    for key, v in verdict_raw.items():
        if key not in allowed_t:
            problems.append((f"verdict.{key}", f"unknown key; allowed: {', '.join(allowed_t)}"))
            continue
        text, ok = allowed_t[key]
        if not _is_number(v) or not math.isfinite(v) or not ok(v):
            problems.append((f"verdict.{key}", f"{v!r} is not allowed; allowed: {text}"))
        else:
            t_values[key] = float(v)
    if t_values:
        thresholds = Thresholds(**t_values)

    for key in boundary_raw:
        if key not in BOUNDARY_KEYS:
            problems.append((f"boundary.{key}", f"unknown key; allowed: {', '.join(BOUNDARY_KEYS)}"))
    resolution = boundary_raw.get("resolution")
    if resolution is not None and (not _is_number(resolution) or not math.isfinite(resolution) or resolution <= 1):
        problems.append(("boundary.resolution", f"{resolution!r} is not allowed; allowed: {BOUNDARY_KEYS['resolution']}"))
        resolution = None

    if catalog_example is not None and "batch_size" in grid:
        n_samples = len(catalog_example.data(data_seed or 0)[0])
        for b in grid["batch_size"]:
            if b > n_samples:
                problems.append(("grid.batch_size", f"{b} is larger than the example's {n_samples} training "
                                 f"samples; allowed: integers from 1 to {n_samples}"))
    if seeds:
        # Counted before anything is expanded, so an enormous grid costs nothing to refuse.
        size = math.prod(len(v) for v in grid.values()) * len(seeds)
        if size > max_runs:
            problems.append(("grid", f"the plan has up to {size:,} runs (axes x seeds), more than the guard of "
                             f"{max_runs:,}; shrink the grid or raise the guard with --max-runs"))

    if problems:
        raise SpecError(path, problems)
    s = Study(
        name=name, example=example, epochs=epochs, seeds=tuple(seeds), sampler=choices["sampler"],
        engine=choices["engine"], grid=grid, verdict=thresholds, data_seed=data_seed,
        timeout=float(timeout) if timeout is not None else None, n_trials=n_trials,
        resolution=float(resolution) if resolution is not None else None, path=path, raw=raw,
    )
    if not s.configs():
        raise SpecError(path, [("grid", "every combination sets more than one of clipnorm, global_clipnorm, "
                                "clipvalue; Keras allows one kind of clipping per optimizer")])
    return s


def load(path: str | Path, max_runs: int = MAX_RUNS) -> Study:
    """Read and check a study file: a regular UTF-8 file of at most MAX_FILE_BYTES.

    Looked at before it is opened, so a directory, a FIFO or a device (/dev/zero) is refused
    instead of blocking or filling memory."""
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise SpecError(str(path), [("", "is a directory; give a study file (.toml)")])
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(str(path), [("", "is not a regular file (a pipe, socket or device); give a study file (.toml)")])
        if st.st_size > MAX_FILE_BYTES:
            raise SpecError(str(path), [("", f"is {st.st_size:,} bytes; a study file is at most {MAX_FILE_BYTES:,}")])
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "no such file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [("", f"is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                                         "a study file is TOML, which is UTF-8")]) from None
    except OSError as exc:
        raise SpecError(str(path), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse(text, str(path), max_runs)


def format_value(v: Any) -> str:
    """An axis value as study files write it: absent clipping is "none", numbers short (%g)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def config_from_dict(values: dict[str, Any]) -> Config:
    """A Config from a row or a dict of axis values (clipping NaN or None -> None)."""
    kwargs = {}
    for f in fields(Config):
        v = values[f.name]
        if f.name in CLIP_AXES:
            v = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        elif f.name == "learning_rate":
            v = float(v)
        elif f.name == "batch_size":
            v = int(v)
        else:
            v = str(v)
        kwargs[f.name] = v
    return Config(**kwargs)
