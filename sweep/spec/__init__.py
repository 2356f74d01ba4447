"""Study files: read, check every field, and expand into the plan of runs.

A study is plain values; `load` either returns one or raises `SpecError`
listing every problem (file, field, what is allowed). This package is the study file's
stage: this module holds the study as plain values (`Study`, `Config`, `Run`, the axes and
their allowed values) and `checks` the checks each field goes through. May import the
catalog and the verdict rules only: every later stage reads a `Study`::

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

A `[grid.model]` table sweeps the model builder's own keyword parameters (its *knobs*); every
run's builder call receives its configuration's values, and each knob is an axis like the
others (`Study.axes`)::

    >>> s = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\n[grid.model]\\ndepth=[2, 8]', "d.toml")
    >>> s.axes[-2:], [c.knobs for c in s.configs()]
    (('depth', 'learning_rate'), [{'depth': 2}, {'depth': 8}])
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import stat
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from ..catalog import BASE_DEFAULTS, EXAMPLES
from ..verdict import Thresholds
from .checks import (BUILDER_ARGUMENTS, REQUIRED, Field, Invalid, builder_knobs, builder_module, builder_problem,
                     builder_search_path, check_section, example_ref, integer, knob_name_problem, knob_values, number,
                     one_of, plain_name, positive_integer, positive_number, positive_number_or_none, seed_list,
                     table_of, unit_number, values_of, boolean)

# Allowed values of the categorical axes: one place, also the categories of the Parquet columns.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "elu", "selu", "softplus", "swish", "leaky_relu", "linear")
SCALERS = ("none", "standard", "minmax")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "plateau")
LOSSES = ("binary_crossentropy", "categorical_crossentropy", "mse", "handwritten", "handwritten_clipped", "compiled")
# Keras dtype policies: variables float32 always; compute in float32, float16 or bfloat16.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SAMPLERS = ("grid", "boundary", "tpe")
ENGINES = ("population", "keras")

CLIP_AXES = ("clipnorm", "global_clipnorm", "clipvalue")
# SGD's own hyper-parameters (keras.optimizers.SGD): the other optimizers take neither.
SGD_AXES = ("momentum", "nesterov")
# The sweep's axes in plan order; learning rate is last so that a setting's runs are adjacent.
AXES = ("activation", "scaler", "optimizer", *SGD_AXES, "loss", "schedule", "precision", "loss_scaling",
        "batch_size", *CLIP_AXES, "learning_rate")
CATEGORICAL_AXES = {
    "activation": ACTIVATIONS,
    "scaler": SCALERS,
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
}
SETTING_AXES = tuple(a for a in AXES if a != "learning_rate")

# A plan larger than this is refused unless the user raises the guard (`--max-runs`):
# a typo in a grid should not start a month of training or fill the driver's memory. The
# driver's peak memory is ~1.7 kB per planned run (1.72 GiB at 1,008,000 runs,
# scripts/bench_driver.py), so this default holds in ~3.5 GiB.
MAX_RUNS = 2_000_000
# Seeds go to numpy's and Keras's generators, which take 32-bit seeds.
MAX_SEED = 2**32 - 1
# A study file is a few lines; anything larger is not one (and is not read into memory).
MAX_FILE_BYTES = 1 << 20
SECTIONS = ("study", "grid", "verdict", "boundary", "telemetry")


class SpecError(Exception):
    """Every problem found in one study file; `str()` is the report a user reads."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}: {f}: {m}" if f else f"{path}: {m}" for f, m in problems))


@dataclass(frozen=True)
class Config:
    """One point of the grid: a value for every axis (clipping None when absent).

    Fields with a default came after the first results were written: `config_id` leaves each
    out while it holds its default, so every configuration that existed before keeps its id::

        >>> from dataclasses import replace
        >>> c = config_from_dict(EXAMPLES["exploding_gradients"].defaults)
        >>> c.config_id == replace(c, model=(("depth", 2),)).config_id
        False
        >>> c.config_id == replace(c, model=()).config_id
        True
    """

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
    # SGD's momentum and Nesterov flag (Keras's defaults for every other optimizer).
    momentum: float = 0.0
    nesterov: bool = False
    # The Keras dtype policy the model is built under, and whether mixed_float16 trains with
    # Keras's dynamic loss scaling (compile's `auto_scale_loss`; no effect on other policies).
    precision: str = "float32"
    loss_scaling: bool = True
    # The model builder's knobs ([grid.model]) as (name, value) pairs sorted by name; () when
    # the study names none (the builder's own defaults).
    model: tuple[tuple[str, Any], ...] = ()

    @functools.cached_property  # the driver looks it up for every run it schedules
    def config_id(self) -> str:
        """A stable 12-hex-digit id of the axis values (the same in every study and session)."""
        values = asdict(self)
        values["model"] = dict(self.model)
        for f in fields(self):
            if f.default is not MISSING and getattr(self, f.name) == f.default:
                del values[f.name]
        blob = json.dumps(values, sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def knobs(self) -> dict[str, Any]:
        """The builder's keyword arguments this configuration sets (`[grid.model]`)."""
        return dict(self.model)

    def value(self, axis: str) -> Any:
        """The value of any axis, a knob's too."""
        return self.knobs[axis] if axis not in AXES else getattr(self, axis)

    def setting(self) -> tuple:
        """Every axis but learning rate: the unit a stability edge is measured for."""
        return tuple(getattr(self, a) for a in SETTING_AXES) + tuple(v for _, v in self.model)


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
class SharpnessTelemetry:
    """`[telemetry] sharpness = {every_epochs = N, iterations = M, samples = S}` (`sweep.engines.sharpness`): measure at
    initialisation (epoch 0) and after every N-th epoch, with M Hessian-vector products each,
    on the loss of the training set's first S rows (None: all of them). The catalog's rows are
    independent draws, so the first S are a fixed random subset, as Cohen et al. (2021) measure
    the sharpness on the first 5,000 training examples (locuslab/edge-of-stability, `--abridged_size`)."""

    every_epochs: int
    iterations: int
    samples: int | None = None

    def rows(self, n: int) -> int:
        """How many of a training set's n rows the loss is measured on."""
        return n if self.samples is None else min(self.samples, n)

    def due(self, epoch: int) -> bool:
        """Whether the model after `epoch` (0: initialised) is measured.

        >>> [e for e in range(7) if SharpnessTelemetry(every_epochs=3, iterations=20).due(e)]
        [0, 3, 6]
        """
        return epoch % self.every_epochs == 0


@dataclass(frozen=True)
class Study:
    name: str
    example: str
    epochs: int
    seeds: tuple[int, ...]
    sampler: str
    engine: str
    grid: dict[str, tuple]  # every axis of AXES, complete: the study's values or the example's default
    verdict: Thresholds
    data_seed: int = 0
    timeout: float | None = None
    n_trials: int | None = None
    # [boundary] resolution; None: bisect down to neighbouring grid learning rates.
    resolution: float | None = None
    # [telemetry] sharpness; None: not measured.
    sharpness: SharpnessTelemetry | None = None
    # [grid.model]: the builder's knobs the study sweeps, name -> values, sorted by name (so that
    # the plan's order does not depend on the file's); the others keep the builder's defaults.
    model: dict[str, tuple] = field(default_factory=dict)
    path: str = "<study>"
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    # Where a `module:function` builder is imported from before the installed packages
    # (`checks.builder_search_path`): where the study was loaded, not part of its plan.
    search_path: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def axes(self) -> tuple[str, ...]:
        """Every axis in plan order: the sweep's own, then the model's knobs, learning rate last
        (so that a setting's runs are adjacent)."""
        return (*SETTING_AXES, *self.model, "learning_rate")

    def values(self, axis: str) -> tuple:
        """The values the study gives an axis (a knob's too)."""
        return self.grid[axis] if axis in self.grid else self.model[axis]

    def configs(self) -> list[Config]:
        """Every grid point. Keras allows one kind of clipping per optimizer, and momentum and
        Nesterov are SGD's alone, so points that set two kinds of clipping at once, or momentum
        or Nesterov for Adam or RMSprop, are not configurations and are left out."""
        out = []
        names = self.axes
        for values in itertools.product(*(self.values(a) for a in names)):
            axes = dict(zip(names, values))
            if not is_configuration(axes):
                continue
            knobs = tuple((k, axes.pop(k)) for k in self.model)
            out.append(Config(**axes, model=knobs))
        return out

    def plan(self) -> list[Run]:
        runs = []
        for config in self.configs():
            for seed in self.seeds:
                runs.append(Run(len(runs), config, seed))
        return runs

    def plan_digest(self) -> str:
        """What a resumed study must agree on: everything that changes the runs or their rows."""
        # An axis added since digests were first stored counts only when it leaves its default.
        grid = {a: list(self.grid[a]) for a in AXES if self.grid[a] != (AXIS_DEFAULTS.get(a, MISSING),)}
        plan = {"example": self.example, "epochs": self.epochs, "data_seed": self.data_seed,
                "verdict": asdict(self.verdict), "grid": grid, "seeds": list(self.seeds)}
        # Telemetry fills columns of the rows, as the verdict does; only when on, so that a
        # study without it keeps the digest it had before telemetry existed.
        if self.sharpness is not None:
            plan["telemetry"] = {"sharpness": asdict(self.sharpness)}
        # Likewise the model's knobs: a study that names none keeps its digest.
        if self.model:
            plan["model"] = {k: list(v) for k, v in self.model.items()}
        blob = json.dumps(plan, sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()


# The axes added since the first results were written, with the value every earlier
# configuration had: `Config`'s defaults. At it, an axis is left out of config ids and plan
# digests, and it is what older report files read in its column.
AXIS_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)
                                 if f.name in AXES and f.default is not MISSING}


def is_configuration(axes: dict[str, Any]) -> bool:
    """Whether a grid point is one Keras can build: one kind of clipping at most; momentum and
    Nesterov only with SGD; loss scaling turned off only where there is any (mixed_float16)."""
    if sum(axes[c] is not None for c in CLIP_AXES) > 1:
        return False
    if axes["precision"] != "mixed_float16" and axes["loss_scaling"] != AXIS_DEFAULTS["loss_scaling"]:
        return False
    return axes["optimizer"] == "sgd" or all(axes[a] == AXIS_DEFAULTS[a] for a in SGD_AXES)


def example_defaults(example: str) -> dict[str, Any]:
    if example in EXAMPLES:
        return EXAMPLES[example].defaults
    return {**BASE_DEFAULTS, "loss": "compiled"}


# [study]: what each field allows, its default, its check; the fields of `Study` of the same names.
STUDY_FIELDS = {
    "name": Field("a plain file name: letters, digits, '.', '_' or '-', at most 100 characters",
                  REQUIRED, plain_name),
    "example": Field("a catalog id (" + ", ".join(EXAMPLES) + ") or 'module:function'", REQUIRED,
                     example_ref(EXAMPLES)),
    # absent: the catalog example's epochs, 20 for a builder
    "epochs": Field("an integer from 1 to 10000", None, integer(1, 10000)),
    "seeds": Field(f"a non-empty list of distinct integers from 0 to {MAX_SEED}", (0, 1, 2), seed_list(MAX_SEED)),
    "sampler": Field(" | ".join(SAMPLERS), "grid", one_of(SAMPLERS)),
    "engine": Field(" | ".join(ENGINES), "population", one_of(ENGINES)),
    "data_seed": Field(f"an integer from 0 to {MAX_SEED} (the seed of the example's data set)", 0,
                       integer(0, MAX_SEED)),
    "timeout": Field("seconds per run, a number > 0", None, number(lambda v: v > 0)),
    "n_trials": Field("an integer >= 1 (tpe: how many configurations to try)", None, integer(1)),
}
# [verdict]: the thresholds of `verdict.judge`; absent: `Thresholds`' default.
VERDICT_FIELDS = {
    "diverge_factor": Field("a finite number > 1 (a run diverged when its loss reached this multiple of l0)",
                            None, number(lambda v: v > 1)),
    "stall_ratio": Field("a number in (0, 1] (a run stalled when its final loss stayed above this fraction "
                         "of l0)", None, number(lambda v: 0 < v <= 1)),
    "spike_factor": Field("a finite number > 1 (an epoch spiked when its loss rose above this multiple of the "
                          "lowest before it)", None, number(lambda v: v > 1)),
}
BOUNDARY_FIELDS = {
    "resolution": Field("a number > 1: the boundary sampler stops bisecting a setting's edge once "
                        "lr_unstable_min / lr_stable_max is at most this factor (it probes the grid's "
                        "learning rates, so two neighbouring grid values always stop it)",
                        None, number(lambda v: v > 1)),
}

# [telemetry]: what engines measure besides the loss; absent, nothing more.
SHARPNESS_FIELDS = {
    "every_epochs": Field("an integer from 1 to 10000 (measure at epoch 0 and after every N-th epoch)", 5,
                          integer(1, 10000)),
    "iterations": Field("an integer from 1 to 1000 (Hessian-vector products of the power iteration)", 20,
                        integer(1, 1000)),
    "samples": Field("an integer >= 1 (the loss of the training set's first S rows; default all of them)", None,
                     integer(1)),
}
TELEMETRY_FIELDS = {
    "sharpness": Field("a table {every_epochs = N, iterations = M, samples = S}: the top Hessian eigenvalue of "
                       "the training loss (and of the Adam/RMSprop-preconditioned Hessian) at initialisation and "
                       "every N-th epoch, by M power iterations; every_epochs "
                       + SHARPNESS_FIELDS["every_epochs"].allowed + ", default 5; iterations "
                       + SHARPNESS_FIELDS["iterations"].allowed + ", default 20; samples "
                       + SHARPNESS_FIELDS["samples"].allowed,
                       None, table_of(SHARPNESS_FIELDS, SharpnessTelemetry)),
}


def grid_fields(defaults: dict[str, Any], losses: tuple[str, ...]) -> dict[str, Field]:
    """[grid]: one field per axis, a list of values; absent, the axis has the example's default."""
    values = {"learning_rate": ("finite numbers > 0", positive_number),
              **{c: ('finite numbers > 0 or "none"', positive_number_or_none) for c in CLIP_AXES},
              "batch_size": ("integers >= 1", positive_integer),
              **{a: (", ".join(allowed), one_of(allowed)) for a, allowed in CATEGORICAL_AXES.items()},
              "loss": (", ".join(losses), one_of(losses)),
              # keras.optimizers.SGD refuses a momentum outside [0, 1]
              "momentum": ("numbers from 0 to 1 (SGD's momentum; 0: none)", unit_number),
              "nesterov": ("true or false (SGD's Nesterov momentum; acts only with momentum > 0)", boolean),
              "loss_scaling": ("true or false (mixed_float16's dynamic loss scaling, Keras's default: true)",
                               boolean)}
    return {a: Field(values[a][0], (defaults[a],), values_of(values[a][1])) for a in AXES}


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
    problems = _section_problems(raw)
    section = {name: raw[name] if isinstance(raw.get(name), dict) else {} for name in SECTIONS}

    study = check_section("study", section["study"], STUDY_FIELDS, problems)
    example = study.get("example")
    search_path = builder_search_path(path) if example is not None and example not in EXAMPLES else ()
    if example is not None and example not in EXAMPLES and import_builder:
        if (problem := builder_problem(example, search_path)) is not None:
            problems.append(("study.example", problem))
            example = None
    catalog_example = EXAMPLES.get(example)
    if "epochs" not in section["study"]:
        study["epochs"] = catalog_example.epochs if catalog_example else 20
    defaults = example_defaults(example) if example is not None else dict(BASE_DEFAULTS, loss="compiled")
    losses = catalog_example.losses if catalog_example else ("compiled",)
    grid_raw = dict(section["grid"])
    model = _model_grid(grid_raw.pop("model", None), example, search_path if import_builder else None, problems)
    grid = check_section("grid", grid_raw, grid_fields(defaults, losses), problems, unknown="axis")
    verdict = check_section("verdict", section["verdict"], VERDICT_FIELDS, problems)
    boundary = check_section("boundary", section["boundary"], BOUNDARY_FIELDS, problems)
    telemetry = check_section("telemetry", section["telemetry"], TELEMETRY_FIELDS, problems)
    problems += _plan_problems(catalog_example, study, {**grid, **model}, max_runs)
    problems += _sgd_problems(section["grid"], grid)
    if grid.get("loss_scaling", (True,)) != (True,) and "mixed_float16" not in grid.get("precision", ()):
        problems.append(("grid.loss_scaling", "turns off mixed_float16's loss scaling; the study's precisions ("
                         + ", ".join(grid.get("precision", ())) + ') have none: add "mixed_float16" to '
                         "grid.precision, or leave loss_scaling out"))

    if problems:
        raise SpecError(path, problems)
    s = Study(**study, grid=grid, verdict=Thresholds(**{k: v for k, v in verdict.items() if v is not None}),
              resolution=boundary["resolution"], sharpness=telemetry["sharpness"], model=model, path=path, raw=raw,
              search_path=search_path)
    if not s.configs():
        raise SpecError(path, [("grid", "every combination sets more than one of clipnorm, global_clipnorm, "
                                "clipvalue, or momentum or nesterov for an optimizer other than sgd; Keras allows "
                                "one kind of clipping per optimizer, and momentum and Nesterov are SGD's")])
    if s.sharpness is not None and s.grid["precision"] != ("float32",):
        raise SpecError(path, [("telemetry.sharpness", "is measured in float32 only; leave precision at "
                                "float32 or the telemetry out")])
    return s


MODEL_TABLE_ALLOWED = ("a table ([grid.model]) of the model builder's keyword parameters, each a value or a list "
                       "of values")


def _model_grid(raw: Any, example: str | None, search_path: tuple[str, ...] | None,
                problems: list[tuple[str, str]]) -> dict[str, tuple]:
    """[grid.model]: each knob's values, sorted by name. A name must be one the builder accepts
    (a catalog example's `knobs`; a user builder's keyword parameters, read from its signature
    when `search_path` is given, i.e. the builder may be imported) and make a plain column name;
    its values must be TOML scalars of one type (and pass a catalog knob's own rule)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(("grid.model", f"must be {MODEL_TABLE_ALLOWED}"))
        return {}
    catalog = EXAMPLES[example].knobs if example in EXAMPLES else None
    accepted: Collection[str] | None = catalog
    if catalog is None and example is not None and search_path is not None:
        module_name, _, attr = example.partition(":")
        accepted = builder_knobs(getattr(builder_module(module_name, search_path), attr))
    out = {}
    for name in sorted(raw):
        where = f"grid.model.{name}"
        if name == "seed":
            problems.append((where, "is the run's seed, which the sweep passes the builder itself (study.seeds)"))
            continue
        if name in AXES or name in BUILDER_ARGUMENTS:
            problems.append((where, f"is the sweep's own axis, not a model knob; set it in [grid] as {name}"))
            continue
        if accepted is not None and name not in accepted:
            knobs = ", ".join(k for k in accepted if k not in BUILDER_ARGUMENTS) or "none"
            problems.append((where, f"unknown knob: {example} does not take a keyword parameter {name!r}; "
                             f"allowed: {knobs}"))
            continue
        if (why := knob_name_problem(name)) is not None:
            problems.append((where, f"{why}; a knob's name is its column's name in every report"))
            continue
        knob = catalog.get(name) if catalog is not None else None
        check = knob_values(knob.ok, knob.allowed) if knob is not None else knob_values()
        try:
            out[name] = check(raw[name])
        except Invalid as exc:
            problems += [(where, r) for r in exc.args]
    return out


def _sgd_problems(raw_grid: dict, grid: dict) -> list[tuple[str, str]]:
    """SGD's axes set for a study that trains no SGD: every one of its points would be left out."""
    if "sgd" in grid.get("optimizer", ("sgd",)):
        return []
    return [(f"grid.{a}", f"is SGD's; the study's optimizers ({', '.join(grid['optimizer'])}) take none: add "
             f'"sgd" to grid.optimizer, or leave {a} out')
            for a in SGD_AXES if a in raw_grid and grid.get(a, (AXIS_DEFAULTS[a],)) != (AXIS_DEFAULTS[a],)]


def _section_problems(raw: dict) -> list[tuple[str, str]]:
    """Sections the file should not have, or has in the wrong form."""
    problems = [(name, f"unknown section; allowed: {', '.join('[' + s + ']' for s in SECTIONS)}")
                for name in raw if name not in SECTIONS]
    problems += [(name, "must be a table ([" + name + "])")
                 for name in SECTIONS if name in raw and not isinstance(raw[name], dict)]
    if "study" not in raw:
        problems.append(("study", "missing; a study file needs a [study] table with name and example"))
    return problems


def _plan_problems(catalog_example, study: dict, grid: dict, max_runs: int) -> list[tuple[str, str]]:
    """What is wrong with the plan as a whole: batches larger than the data, too many runs."""
    problems = []
    if catalog_example is not None and "batch_size" in grid:
        n_samples = len(catalog_example.data(study.get("data_seed") or 0)[0])
        problems += [("grid.batch_size", f"{b} is larger than the example's {n_samples} training "
                      f"samples; allowed: integers from 1 to {n_samples}") for b in grid["batch_size"] if b > n_samples]
    if study.get("seeds"):
        # Counted before anything is expanded, so an enormous grid costs nothing to refuse.
        size = math.prod(len(v) for v in grid.values()) * len(study["seeds"])
        if size > max_runs:
            problems.append(("grid", f"the plan has up to {size:,} runs (axes x seeds), more than the guard of "
                             f"{max_runs:,}; shrink the grid or raise the guard with --max-runs"))
    return problems


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
    """An axis value as study files write it: absent clipping is "none", numbers short (%g),
    booleans as TOML's true and false."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def config_from_dict(values: dict[str, Any], model_axes: Sequence[str] = ()) -> Config:
    """A Config from a row or a dict of axis values (clipping NaN or None -> None); `model_axes`
    names the knobs among them (a row's numpy scalars become Python's, as the study file gave them)."""
    kwargs: dict[str, Any] = {"model": tuple((k, _python(values[k])) for k in sorted(model_axes))}
    for f in fields(Config):
        if f.name == "model":
            continue
        v = values.get(f.name, f.default) if f.name in AXIS_DEFAULTS else values[f.name]
        if f.name in CLIP_AXES:
            v = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        elif f.name in ("learning_rate", "momentum"):
            v = float(v)
        elif f.name in ("nesterov", "loss_scaling"):
            v = bool(v)
        elif f.name == "batch_size":
            v = int(v)
        else:
            v = str(v)
        kwargs[f.name] = v
    return Config(**kwargs)


def _python(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
