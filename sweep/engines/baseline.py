"""The baseline loss ℓc: what the best constant prediction scores on a run's training data under its loss.

A run that ends at ℓc learned nothing about its inputs: it collapsed to chance, or to the
mean of a regression target, wherever it started. The verdict judges `stalled` against
min(ℓ0, ℓc) (`sweep.verdict`), so a run that starts worse than a constant and ends at one
is not taken for a run that learned. ℓc depends on the targets and the loss alone, so it is
computed once per (data set, loss) in a process, not per run.

Keras's named losses have closed forms: the target means (binary cross-entropy, squared
error), the class frequencies (categorical cross-entropy), the medians (absolute error),
with Keras's clipping of probabilities to [ε, 1-ε]. Any other loss (the documents'
hand-written cross-entropy, a user's own) is minimised numerically over one constant
pre-activation output pushed through the model's output activation, so the constant is one
the model can produce::

    >>> import numpy as np
    >>> y = np.array([0.0, 1.0, 1.0, 1.0])
    >>> round(closed_form("binary_crossentropy", y), 4)     # -(3/4 ln 3/4 + 1/4 ln 1/4)
    0.5623
    >>> closed_form("mse", np.array([1.0, 3.0]))
    1.0
    >>> round(closed_form("categorical_crossentropy", np.eye(4)), 4)   # ln 4: four classes, equally often
    1.3863
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..catalog import EXAMPLES, make_loss

if TYPE_CHECKING:
    from ..spec import Config, Study

# keras.config.epsilon(): Keras's cross-entropies clip probabilities to [ε, 1 - ε].
EPSILON = 1e-7
# The names Keras compiles to these losses (keras.losses.get), and the closed form of each.
CLOSED_FORMS = {"binary_crossentropy": "binary_crossentropy", "categorical_crossentropy": "categorical_crossentropy",
                "mse": "mse", "mean_squared_error": "mse", "mae": "mae", "mean_absolute_error": "mae"}
# The numeric minimisation: Adam on the constant from the closed form's guess. Every loss
# here is smooth and convex in the constant near that guess; a few hundred steps settle it
# to well under 1e-6 of the loss.
STEPS = 400
STEP_SIZE = 0.05

_cache: dict[tuple, float] = {}


def _columns(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y.reshape(len(y), -1)


def closed_form(loss: str, y: np.ndarray) -> float:
    """ℓc of a Keras named loss (a key of `CLOSED_FORMS`) on targets `y`."""
    y = _columns(y)
    kind = CLOSED_FORMS[loss]
    if kind == "binary_crossentropy":
        p = np.clip(y.mean(axis=0), EPSILON, 1 - EPSILON)
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    if kind == "categorical_crossentropy":
        p = y.mean(axis=0)
        p = np.clip(p / p.sum(), EPSILON, 1 - EPSILON)
        return float(np.mean(-(y * np.log(p)).sum(axis=1)))
    if kind == "mse":
        return float(np.mean((y - y.mean(axis=0)) ** 2))
    return float(np.mean(np.abs(y - np.median(y, axis=0))))


def _start(y: np.ndarray, activation: str | None) -> np.ndarray:
    """The pre-activation constant whose output is the targets' column means."""
    m = y.mean(axis=0)
    if activation == "sigmoid":
        m = np.clip(m, 1e-4, 1 - 1e-4)
        return np.log(m / (1 - m))
    if activation == "softmax":
        return np.log(np.clip(m / max(m.sum(), EPSILON), 1e-4, None))
    return m


def numeric(loss_fn: Callable, y: np.ndarray, activation: str | None = None, n_out: int | None = None) -> float:
    """ℓc by minimising `loss_fn(y, activation(z))` over one constant z per output unit.

    `activation` is the model's output activation (a Keras name; None: linear). The result is
    the least loss seen, never worse than the closed form's constant pushed through it."""
    import keras
    import tensorflow as tf

    y = _columns(y)
    n_out = n_out or y.shape[1]
    act = keras.activations.get(activation)
    y_true = tf.constant(y, tf.float32)
    z = tf.Variable(np.broadcast_to(_start(y, activation), (1, n_out)).astype(np.float32))

    @tf.function(autograph=False)
    def value_and_grad():
        with tf.GradientTape() as tape:
            pred = act(tf.repeat(z, y.shape[0], axis=0))
            value = tf.reduce_mean(loss_fn(y_true, pred))
        return value, tape.gradient(value, z)

    # Adam written out: the stacked engines' optimizers are hand-written too, and a Keras
    # optimizer would add its own variables to this process's graph for a one-off.
    m, v, best = tf.zeros_like(z), tf.zeros_like(z), math.inf
    for t in range(1, STEPS + 1):
        value, grad = value_and_grad()
        value = float(value)
        if math.isfinite(value):
            best = min(best, value)
        if grad is None or not np.all(np.isfinite(grad.numpy())):
            break
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        z.assign_sub(STEP_SIZE * (m / (1 - 0.9**t)) / (tf.sqrt(v / (1 - 0.999**t)) + 1e-8))
    return best


def output_activation(model: Any) -> str | None:
    """The Keras name of a model's output activation, None when it is linear or unknown."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    fn = getattr(last, "activation", None)
    name = getattr(fn, "__name__", None)
    return None if name in (None, "linear") else name


def baseline_loss(study: "Study", config: "Config") -> float:
    """ℓc of a run: its targets (the study's data set) under its loss, once per process. NaN when
    a user's loss cannot be evaluated on a constant: the column shows it, and the verdict falls
    back to l0 alone rather than failing a run that trained."""
    # A user builder's knobs may change its data or its output layer; a catalog knob changes neither.
    key = (study.example, study.data_seed, config.loss, () if study.example in EXAMPLES else config.model)
    if key not in _cache:
        try:
            _cache[key] = _compute(study, config)
        except Exception:
            _cache[key] = math.nan
    return _cache[key]


def _compute(study: "Study", config: "Config") -> float:
    if study.example in EXAMPLES:
        from . import example_data

        ex = EXAMPLES[study.example]
        y = example_data(study.example, study.data_seed, "none")[1]
        if config.loss in CLOSED_FORMS:
            return closed_form(config.loss, y)
        return numeric(make_loss(config.loss), y, ex.out_activation, ex.n_out)
    from . import problem

    p = problem(study, config, study.seeds[0])
    compiled = p.model.loss
    if isinstance(compiled, str) and compiled in CLOSED_FORMS:
        return closed_form(compiled, p.y)
    return numeric(p.loss_fn, p.y, output_activation(p.model), p.model.outputs[0].shape[-1])
