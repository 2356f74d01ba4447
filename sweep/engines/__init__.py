"""Engines train runs and report telemetry; they never judge or write anything.

The protocol is one method: `train(study, runs)` returns, for each run in
order, an `Outcome` or the exception that run raised. Whatever an engine
does inside, these facts are shared so that engines agree run for run:

* the data of a run: the example's data set for the study's `data_seed`,
  scaled by the run's scaler (`problem`);
* the initial weights: the Keras model the builder gives after
  `keras.utils.set_random_seed(seed)`, called with the run's activation and the model knobs
  its configuration sets (`Config.knobs`, the study's `[grid.model]`);
* the batch order of every epoch: `batch_order(seed, epoch, n)`.

Besides the two engines (`keras_engine`, `population`) this package holds what they run
with: `runtime` (TensorFlow set up before its first op: GPU memory growth, threads,
quiet start-up), `xla` (compiled programs kept across processes) and `sharpness` (the
curvature telemetry). May import the study file, the catalog and the verdict rules only.

    >>> from sweep.engines import batch_order
    >>> batch_order(seed=0, epoch=1, n=5).tolist() == batch_order(0, 1, 5).tolist()
    True
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import numpy as np

from ..catalog import EXAMPLES, make_loss, scale

if TYPE_CHECKING:
    from ..spec import Config, Run, Study


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch (epochs count from 1), drawn from the run's seed alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class Outcome:
    """What one run measured. Epoch lists hold epochs 1..E (shorter if training stopped)."""

    initial_loss: float
    initial_accuracy: float
    epoch_loss: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)
    epoch_grad_norm_max: list[float] = field(default_factory=list)
    epoch_learning_rate: list[float] = field(default_factory=list)
    grad_norms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # unclipped, every step
    clipped_steps: int = 0
    # 0-based index of the optimizer step whose loss, gradient or updated weights were first
    # non-finite (0 also when the initial model's loss already is); None when all stayed finite.
    first_nonfinite_step: int | None = None
    wall_seconds: float = 0.0
    engine: str = ""
    # [telemetry] sharpness, epoch (0: initialised) -> λ_max of the training loss's Hessian and,
    # for Adam and RMSprop, of the preconditioned Hessian (`sweep.engines.sharpness`); NaN where the run
    # was no longer finite. Empty when not measured.
    sharpness: dict[int, float] = field(default_factory=dict)
    precond_sharpness: dict[int, float] = field(default_factory=dict)
    # mixed_float16 with loss scaling: batches whose update Keras's LossScaleOptimizer skipped
    # (scaled gradients not finite; the scale halved), and the scale at the end. None without.
    skipped_steps: int | None = None
    final_loss_scale: float | None = None


class Engine(Protocol):
    name: str

    def train(self, study: "Study", runs: Sequence["Run"]) -> list[Outcome | BaseException]: ...


@dataclass
class Problem:
    """A run's model (freshly initialised), training data and loss, ready to train."""

    model: Any
    x: np.ndarray
    y: np.ndarray
    loss_fn: Any
    accuracy: str  # "binary" | "categorical"


@functools.lru_cache(maxsize=32)
def example_data(example: str, data_seed: int, scaler: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = EXAMPLES[example].data(data_seed)
    return scale(x, scaler), y


# A user builder's data, as its first call for each (module:function, data seed, search path,
# activation, model knobs) returned it, unscaled: every run's batches are drawn from this one copy.
_user_data: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def data_key(study: "Study", config: "Config") -> tuple:
    """What a run's training data depends on: its scaler, and for a user builder also what the
    builder is called with. Runs of one key train on the same arrays (`run_data`)."""
    if study.example in EXAMPLES:
        return (config.scaler,)
    return (config.scaler, config.activation, config.model)


def run_data(study: "Study", config: "Config") -> tuple[np.ndarray, np.ndarray]:
    """A run's training data (x scaled by its scaler, y), without building a model when known."""
    if study.example in EXAMPLES:
        return example_data(study.example, study.data_seed, config.scaler)
    key = (study.example, study.data_seed, study.search_path, config.activation, config.model)
    if key not in _user_data:
        problem(study, config, study.seeds[0])
    x, y = _user_data[key]
    return scale(x, config.scaler), y


def user_builder(study: "Study"):
    """The study's `module:function` builder, its module imported from the study's search path."""
    from ..spec.checks import builder_module

    module_name, _, attr = study.example.partition(":")
    return getattr(builder_module(module_name, study.search_path), attr)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras's default dtype policy set to `name` while a model is built (its layers take it when
    made), the previous one back after. Keras keeps it per thread."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def problem(study: "Study", config: "Config", seed: int) -> Problem:
    """Build the run's model under its seed and its precision (a Keras dtype policy), with its
    data and loss. The builder receives the configuration's knobs as keyword arguments; knobs
    the study does not name keep the builder's defaults."""
    with dtype_policy(config.precision):
        return _problem(study, config, seed)


def _problem(study: "Study", config: "Config", seed: int) -> Problem:
    import keras

    keras.utils.set_random_seed(seed)
    if study.example in EXAMPLES:
        ex = EXAMPLES[study.example]
        x, y = example_data(study.example, study.data_seed, config.scaler)
        model = ex.build(config.activation, x.shape[1], **config.knobs)
        return Problem(model, x, y, make_loss(config.loss), ex.accuracy)
    built = user_builder(study)(activation=config.activation, seed=study.data_seed, **config.knobs)
    if not (isinstance(built, tuple) and len(built) == 3 and isinstance(built[0], keras.Model)):
        raise TypeError(f"{study.example} must return (keras.Model, x, y); it returned {type(built).__name__}")
    model, x, y = built
    if getattr(model, "loss", None) is None:
        raise TypeError(f"{study.example} must compile its model with a loss (model.compile(loss=...))")
    x, y = np.asarray(x, dtype="float32"), np.asarray(y, dtype="float32")
    _user_data.setdefault((study.example, study.data_seed, study.search_path, config.activation, config.model),
                          (x, y))
    x = scale(x, config.scaler)
    accuracy = "binary" if model.outputs[0].shape[-1] == 1 else "categorical"
    # Resolve the compiled loss exactly as Keras's compile() does (names, "crossentropy"
    # shortcuts, functions wrapped to a batch mean); Keras exports no public equivalent.
    from keras.src.trainers.compile_utils import get_loss

    loss_fn = get_loss(model.loss, y[:1], model(x[:1]))
    return Problem(model, x, y, loss_fn, accuracy)


def check_builder(study: "Study") -> None:
    """Call a user builder once (the first configuration and seed) and check what it returns,
    so that a builder that fails, or returns something that is not a compiled Keras model with
    its data, is refused (`SpecError` on `study.example`) before any run is written. This runs
    the user's code, as every run of the study will. Catalog examples need no check.

        >>> from sweep.spec import parse
        >>> check_builder(parse('[study]\\nname="d"\\nexample="exploding_gradients"', "d.toml"))
    """
    if study.example in EXAMPLES:
        return
    from .runtime import import_tensorflow
    from ..spec import STUDY_FIELDS, SpecError

    import_tensorflow()
    first = study.configs()[0]
    try:
        problem(study, first, study.seeds[0])
    except Exception as exc:  # whatever the user's code does wrong, it is their input
        raise SpecError(study.path, [("study.example", f"calling {study.example!r} failed: {type(exc).__name__}: "
                                      f"{exc}; allowed: {STUDY_FIELDS['example'].allowed}, a function (activation: str, "
                                      "seed: int, **knobs) -> (keras.Model compiled with its loss, x, y)")]) from None
    # Every value of every knob once (the others at the first configuration's), so that a value
    # the builder cannot build with is named before anything is written.
    problems = []
    for name, values in study.model.items():
        for v in values[1:]:
            config = replace(first, model=tuple((k, v if k == name else w) for k, w in first.model))
            try:
                problem(study, config, study.seeds[0])
            except Exception as exc:  # the user's code, given this value
                problems.append((f"grid.model.{name}", f"{study.example}(..., {name}={v!r}) failed: "
                                 f"{type(exc).__name__}: {exc}"))
    if problems:
        raise SpecError(study.path, problems)


def make_optimizer(config: "Config"):
    """The Keras optimizer of a configuration, with its one kind of clipping (and SGD's momentum
    and Nesterov flag); for mixed_float16 with loss scaling, wrapped in Keras's dynamic
    `LossScaleOptimizer` as `model.compile` wraps it (compile the model with
    `auto_scale_loss=False` then, and take gradients of `optimizer.scale_loss(loss)`)."""
    import keras

    kinds = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    kwargs = {k: getattr(config, k) for k in ("clipnorm", "global_clipnorm", "clipvalue") if getattr(config, k) is not None}
    if config.optimizer == "sgd":
        kwargs.update(momentum=float(config.momentum), nesterov=bool(config.nesterov))
    optimizer = kinds[config.optimizer](learning_rate=config.learning_rate, **kwargs)
    if config.precision == "mixed_float16" and config.loss_scaling:
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
