"""The documents' examples: data, model, loss, and the claim each document makes.

Every example is the model and data a document shows (or, where the document
leaves them to the reader, the instance chosen here, said in its docstring),
its failure configuration and its fix configuration in the sweep's own axes,
and the claim in the document's own words::

    >>> from sweep.catalog import EXAMPLES
    >>> ex = EXAMPLES["exploding_gradients"]
    >>> ex.failure["learning_rate"], ex.fix["clipnorm"]
    (0.01, 1.0)
    >>> x, y = ex.data(0)
    >>> x.shape, y.shape
    ((1000, 10), (1000, 1))

Keras is imported only when a model or loss is built, so reading the catalog
(`sweep validate`) does not start TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

DOC_OPTIMIZER = "tf-optimizer-error.md"
DOC_NAN = "nan-loss-zero-accuracy.md"

# Hidden-layer widths of every catalog model: the documents' Dense 128-64 stack.
HIDDEN = (128, 64)


def hidden_widths(depth: int = len(HIDDEN)) -> tuple[int, ...]:
    """The hidden layers of a catalog MLP `depth` layers deep: the documents' 128 first, then 64
    each, so that the documents' own depth (2) is their 128-64 stack and a deeper net adds
    layers of the width it already ends with.

    >>> hidden_widths(), hidden_widths(4)
    ((128, 64), (128, 64, 64, 64))
    """
    return HIDDEN[:depth] + (HIDDEN[-1],) * max(0, depth - len(HIDDEN))


def mlp(n_features: int, activation: str, n_out: int, out_activation: str | None, *,
        depth: int = len(HIDDEN), kernel_initializer: str = "glorot_uniform", l1: float = 0.0, l2: float = 0.0):
    """The documents' MLP: Dense 128-64 (`depth` hidden layers: `hidden_widths`) with the swept
    activation, then the output layer; every kernel drawn by `kernel_initializer` and, where `l1`
    or `l2` is not 0, penalised by Keras's `L1L2(l1, l2)` (l1 x sum |w| + l2 x sum w^2 per kernel,
    added to the loss that is differentiated; the losses the sweep reports are the data loss)."""
    import keras

    def dense(units: int, act):
        regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if l1 or l2 else None
        return keras.layers.Dense(units, activation=act, kernel_initializer=kernel_initializer,
                                  kernel_regularizer=regularizer)

    return keras.Sequential([keras.Input((n_features,))] + [dense(width, activation) for width in hidden_widths(depth)]
                            + [dense(n_out, out_activation)])


@dataclass(frozen=True)
class Knob:
    """A keyword parameter of a catalog builder that a study may sweep (`[grid.model]`): its value
    when the study leaves it out, what a study may write, and the check of one value."""

    default: Any
    allowed: str
    ok: Callable[[Any], bool]


def _penalty(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")


# Initializers Keras makes from their name alone (keras.initializers.get), the ones people sweep.
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
                "orthogonal", "random_normal", "random_uniform", "truncated_normal", "variance_scaling",
                "zeros", "ones")
# The knobs of `mlp`, which every catalog example builds with: the write-ups' advice on deep
# nets and on initialization, as axes. The defaults are `mlp`'s (the documents' model).
MLP_KNOBS: dict[str, Knob] = {
    "depth": Knob(len(HIDDEN), "an integer from 1 to 64 (hidden layers: 128 units, then 64 each)",
                  lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64),
    "kernel_initializer": Knob("glorot_uniform", "a Keras initializer name: " + ", ".join(INITIALIZERS),
                               lambda v: v in INITIALIZERS),
    # The optimizer write-up's "L1 or L2 regularization can help prevent weights from growing too large".
    "l1": Knob(0.0, "a number >= 0 (L1 penalty on every kernel)", lambda v: _penalty(v)),
    "l2": Knob(0.0, "a number >= 0 (L2 penalty on every kernel)", lambda v: _penalty(v)),
}


def handwritten_cross_entropy(y_true, y_pred):
    """tf-optimizer-error.md example 2, `custom_loss_incorrect`, exactly as written."""
    import tensorflow as tf

    return -tf.reduce_mean(y_true * tf.math.log(y_pred) + (1 - y_true) * tf.math.log(1 - y_pred))


def handwritten_cross_entropy_clipped(y_true, y_pred):
    """tf-optimizer-error.md example 2, `custom_loss_corrected`, exactly as written."""
    import tensorflow as tf

    y_pred = tf.clip_by_value(y_pred, 1e-7, 1 - 1e-7)
    return -tf.reduce_mean(y_true * tf.math.log(y_pred) + (1 - y_true) * tf.math.log(1 - y_pred))


def make_loss(name: str) -> Callable:
    """A loss callable `(y_true, y_pred) -> scalar` exactly as Keras compiles it by that name."""
    import keras

    if name == "binary_crossentropy":
        return keras.losses.BinaryCrossentropy()
    if name == "categorical_crossentropy":
        return keras.losses.CategoricalCrossentropy()
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "handwritten":
        return handwritten_cross_entropy
    if name == "handwritten_clipped":
        return handwritten_cross_entropy_clipped
    raise ValueError(f"unknown loss {name!r}")


# What Keras's metrics=["accuracy"] resolves to for each kind of output
# (keras.src.trainers.compile_utils.get_metric): one output unit -> binary accuracy
# (threshold 0.5), several -> categorical accuracy.
ACCURACY = {"binary": "binary_accuracy", "categorical": "categorical_accuracy"}


@dataclass(frozen=True)
class Example:
    id: str
    document: str
    section: str
    description: str
    data: Callable[[int], tuple[np.ndarray, np.ndarray]]
    n_out: int
    out_activation: str | None
    accuracy: str  # a key of ACCURACY
    losses: tuple[str, ...]  # the loss axis's allowed values; the first is the default
    defaults: dict[str, Any]  # every axis's value when the study leaves it out
    failure: dict[str, Any]  # axes the document's failing code sets
    fix: dict[str, Any]  # axes the document's corrected code sets
    claim: str  # the document's words
    headline: str  # the claim in a few words, for the first table of REPORT.md
    claimed_failure: tuple[str, ...]  # statuses that would confirm the failure claim
    epochs: int = 20
    notes: str = ""
    # The keyword parameters of `build` a study may sweep ([grid.model]); every example builds `mlp`.
    knobs: dict[str, Knob] = field(default_factory=lambda: dict(MLP_KNOBS))

    def build(self, activation: str, n_features: int, **knobs: Any):
        """The example's model; `knobs` (names of `self.knobs`) as the study's [grid.model] sets them."""
        return mlp(n_features, activation, self.n_out, self.out_activation, **knobs)

    def config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return {**self.defaults, **overrides}


# Axes every example shares unless it says otherwise: the documents' Keras defaults.
BASE_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.001,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "batch_size": 32,  # model.fit's default; no document sets one
    "activation": "relu",
    "scaler": "none",
    "optimizer": "adam",
    "momentum": 0.0,  # SGD's, Keras's default: none
    "nesterov": False,
    "schedule": "constant",
    "precision": "float32",
    "loss_scaling": True,  # mixed_float16's, Keras's default (compile's auto_scale_loss)
}


def _exploding_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # np.random.randn(1000, 10) and np.random.randint(0, 2, size=(1000, 1)), seeded.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, 10)).astype("float32")
    y = rng.integers(0, 2, size=(1000, 1)).astype("float32")
    return x, y


def _unscaled_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # np.random.rand(1000, 10) * 1000 and np.random.rand(1000, 1), seeded.
    rng = np.random.default_rng(seed)
    x = (rng.random((1000, 10)) * 1000).astype("float32")
    y = rng.random((1000, 1)).astype("float32")
    return x, y


def _class_data(seed: int, n: int = 1000, d: int = 20, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    # Five Gaussian classes in 20 dimensions, unit spread around centres drawn with
    # spread 1: overlapping enough that the problem is not trivial, separable enough
    # that a working model clearly beats chance (1/5).
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    labels = rng.integers(0, k, size=n)
    x = (centres[labels] + rng.standard_normal((n, d))).astype("float32")
    y = np.eye(k, dtype="float32")[labels]
    return x, y


def _units_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Ten features measured in units whose scales run from 1 to 1e5 (log-spaced),
    # each offset by twice its scale, as sensor readings are; the label is a linear
    # rule on the unit-free readings, so a model that sees the features on one scale
    # can learn it.
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((1000, 10))
    scales = np.logspace(0, 5, 10)
    x = (z * scales + 2 * scales).astype("float32")
    w = rng.standard_normal(10)
    y = (z @ w > 0).astype("float32")[:, None]
    return x, y


def _regression_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # A smooth nonlinear target of ten standard-normal features plus a little noise.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, 10))
    w = rng.standard_normal((10, 1)) / np.sqrt(10)
    y = np.sin(2 * x @ w) + 0.1 * rng.standard_normal((1000, 1))
    return x.astype("float32"), y.astype("float32")


EXAMPLES: dict[str, Example] = {}


def _add(example: Example) -> None:
    EXAMPLES[example.id] = example


_add(
    Example(
        id="exploding_gradients",
        document=DOC_OPTIMIZER,
        section="Example 1: Exploding Gradients",
        description="Dense 128-64-1 (sigmoid out) on X ~ N(0,1) 1000x10 with random 0/1 labels, "
        "binary cross-entropy, Adam, 20 epochs, exactly as the document writes it.",
        data=_exploding_data,
        n_out=1,
        out_activation="sigmoid",
        accuracy="binary",
        losses=("binary_crossentropy",),
        defaults={**BASE_DEFAULTS, "learning_rate": 0.01, "loss": "binary_crossentropy"},
        failure={"learning_rate": 0.01, "clipnorm": None},
        fix={"learning_rate": 0.001, "clipnorm": 1.0},
        claim="Adam(learning_rate=0.01) without clipping: 'Training will likely fail due to "
        "exploding gradients' with 'the loss being reported as nan'; Adam(learning_rate=0.001, "
        "clipnorm=1.0) stabilises it.",
        headline="Adam at 0.01 without clipping explodes to NaN; clipnorm 1.0 at 0.001 fixes it",
        claimed_failure=("nan",),
        epochs=20,
    )
)

_add(
    Example(
        id="log_of_zero",
        document=DOC_OPTIMIZER,
        section="Example 2: Numerical Instability in Loss Calculation",
        description="The document's hand-written cross-entropy. Evaluated directly as the "
        "document does (see `direct_evaluation`), and used as the training loss of example 1's "
        "MLP and data, where a sigmoid output that rounds to exactly 0 or 1 puts log(0) in the loss.",
        data=_exploding_data,
        n_out=1,
        out_activation="sigmoid",
        accuracy="binary",
        losses=("handwritten", "handwritten_clipped", "binary_crossentropy"),
        defaults={**BASE_DEFAULTS, "learning_rate": 0.01, "loss": "handwritten"},
        failure={"loss": "handwritten"},
        fix={"loss": "handwritten_clipped"},
        claim="A loss that takes tf.math.log of predictions that can be exactly zero 'will result "
        "in a NaN'; clipping predictions to [1e-7, 1-1e-7] makes it stable.",
        headline="a log of predictions that reach 0 turns the training loss NaN; clipping them fixes it",
        claimed_failure=("nan",),
        epochs=20,
        notes="The document only evaluates the loss on fixed arrays; training the example-1 MLP "
        "with it at example 1's learning rate is the setting in which a practitioner meets it.",
    )
)

_add(
    Example(
        id="unscaled_inputs",
        document=DOC_OPTIMIZER,
        section="Example 3: Improperly Scaled Inputs",
        description="The example-1 MLP on X ~ U(0,1)*1000 1000x10 with y ~ U(0,1) 1000x1 (soft "
        "targets), binary cross-entropy, Adam 0.001, 10 epochs, as the document writes it. The "
        "targets carry no signal from X, so the best reachable loss is about ln 2.",
        data=_unscaled_data,
        n_out=1,
        out_activation="sigmoid",
        accuracy="binary",
        losses=("binary_crossentropy",),
        defaults={**BASE_DEFAULTS, "loss": "binary_crossentropy"},
        failure={"scaler": "none"},
        fix={"scaler": "standard"},
        claim="Without scaling, 'Training may fail or be very slow due to poorly scaled inputs'; "
        "StandardScaler 'often helps gradient descent and leads to faster and more stable training'.",
        headline="inputs in the hundreds make training fail or crawl; StandardScaler fixes it",
        claimed_failure=("nan", "diverged", "stalled", "unstable"),
        epochs=10,
    )
)

_add(
    Example(
        id="categorical_clipnorm",
        document=DOC_NAN,
        section="Example 1: Addressing Exploding Gradients with Gradient Clipping",
        description="The document leaves the model and data to the reader ('# ... your model "
        "layers ...'). Chosen: the same Dense 128-64 stack with a 5-way softmax, trained with "
        "categorical cross-entropy on five overlapping Gaussian classes in 20 dimensions "
        "(1000 samples, one-hot labels): the smallest model and data on which the document's "
        "code runs unchanged and where learning is visible above chance. 10 epochs as written.",
        data=_class_data,
        n_out=5,
        out_activation="softmax",
        accuracy="categorical",
        losses=("categorical_crossentropy",),
        defaults={**BASE_DEFAULTS, "loss": "categorical_crossentropy"},
        failure={"clipnorm": None},
        fix={"learning_rate": 0.001, "clipnorm": 1.0},
        claim="Adam(learning_rate=0.001, clipnorm=1.0) 'prevent[s] excessively large gradients "
        "from causing numerical instability' that leads to NaN loss and zero accuracy.",
        headline="clipnorm 1.0 keeps a softmax classifier's loss from NaN",
        claimed_failure=("nan", "diverged", "stalled", "unstable"),
        epochs=10,
    )
)

_add(
    Example(
        id="minmax_scaling",
        document=DOC_NAN,
        section="Example 2: Data Normalization using Min-Max Scaling",
        description="The document leaves model and data to the reader ('sensor data with diverse "
        "units'). Chosen: ten features whose units span 1 to 1e5, each offset by twice its scale, "
        "a binary label that is a linear rule on the unit-free readings, and the Dense 128-64-1 "
        "sigmoid MLP with binary cross-entropy, Adam 0.001, 10 epochs: the label is learnable, "
        "so what scaling changes is visible.",
        data=_units_data,
        n_out=1,
        out_activation="sigmoid",
        accuracy="binary",
        losses=("binary_crossentropy",),
        defaults={**BASE_DEFAULTS, "loss": "binary_crossentropy"},
        failure={"scaler": "none"},
        fix={"scaler": "minmax"},
        claim="Features 'with vastly different scales can destabilize the training process'; "
        "MinMaxScaler 'reduc[es] the risk of numerical issues'.",
        headline="features on very different scales destabilise training; MinMaxScaler fixes it",
        claimed_failure=("nan", "diverged", "stalled", "unstable"),
        epochs=10,
    )
)

_add(
    Example(
        id="plateau_schedule",
        document=DOC_NAN,
        section="Example 3: Careful Optimizer Hyperparameter Tuning",
        description="The document leaves model and data to the reader. Chosen: a smooth "
        "nonlinear regression (y = sin(2 X w) + noise, 10 standard-normal features, 1000 samples) "
        "and the Dense 128-64-1 MLP with a linear output, mse, metrics=['accuracy'] as written "
        "(Keras resolves it to binary accuracy on one output unit, which is meaningless for "
        "regression), Adam 0.001, 10 epochs.",
        data=_regression_data,
        n_out=1,
        out_activation=None,
        accuracy="binary",
        losses=("mse",),
        defaults={**BASE_DEFAULTS, "loss": "mse"},
        failure={"schedule": "constant"},
        fix={"schedule": "plateau"},
        claim="ReduceLROnPlateau(monitor='loss', factor=0.1, patience=3, min_lr=1e-6) 'helps to "
        "prevent overshooting' where 'a fixed learning rate might lead to oscillations or "
        "divergence', and 'has proven effective in preventing NaN issues'.",
        headline="a fixed learning rate diverges; ReduceLROnPlateau prevents it",
        claimed_failure=("nan", "diverged", "unstable"),
        epochs=10,
    )
)

# ReduceLROnPlateau exactly as nan-loss-zero-accuracy.md example 3 writes it.
PLATEAU = {"monitor": "loss", "factor": 0.1, "patience": 3, "min_lr": 1e-6}


def direct_evaluation(seed: int) -> dict[str, float]:
    """tf-optimizer-error.md example 2 as the document runs it: both losses on fixed arrays.

    y_true ~ U(0,1) 100x1, y_pred ~ U(0,1) 100x1 with values below 0.001 forced to 0.0.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    y_true = rng.random((100, 1))
    y_pred = rng.random((100, 1))
    n_zeros = int((y_pred < 0.001).sum())
    y_pred[y_pred < 0.001] = 0.0
    yt = tf.constant(y_true, dtype=tf.float32)
    yp = tf.constant(y_pred, dtype=tf.float32)
    return {
        "seed": seed,
        "zeros_in_y_pred": n_zeros,
        "loss_incorrect": float(handwritten_cross_entropy(yt, yp)),
        "loss_corrected": float(handwritten_cross_entropy_clipped(yt, yp)),
    }


def scale(x: np.ndarray, scaler: str) -> np.ndarray:
    """scikit-learn's StandardScaler / MinMaxScaler fit_transform on the training set.

    Written out (a few lines) rather than importing scikit-learn: same formulas,
    including their rule that a constant feature is left unscaled.
    """
    if scaler == "none":
        return x
    x64 = x.astype("float64")
    if scaler == "standard":
        std = x64.std(axis=0)
        std[std == 0] = 1.0
        out = (x64 - x64.mean(axis=0)) / std
    elif scaler == "minmax":
        lo, hi = x64.min(axis=0), x64.max(axis=0)
        rng = hi - lo
        rng[rng == 0] = 1.0
        out = (x64 - lo) / rng
    else:
        raise ValueError(f"unknown scaler {scaler!r}")
    return out.astype(x.dtype)
