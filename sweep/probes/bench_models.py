"""The models of `sweep bench`'s user-builder sets, written as a user writes a builder.

Each is a `module:function` builder, (activation: str, seed: int) -> (compiled keras.Model, x, y),
exactly the form of studies/user_model/usermodels.py, so that `sweep bench --set user_mlp|cnn|rnn`
times the very path a user's model takes (`example = "sweep.probes.bench_models:cnn"`), not a
catalog shortcut. As for any builder, `seed` is the study's data seed; the sweep seeds the
initial weights (`keras.utils.set_random_seed(run seed)` before the call) and sets the optimizer.

* `exploding_mlp`: the catalog's `exploding_gradients` example as a user would write it: its
  data (X ~ N(0, 1) 1000 x 10, random 0/1 labels), its Dense 128-64-1 (sigmoid) and binary
  cross-entropy. Same initial weights as the catalog's for the same run seed, so the
  `user_mlp` set trains what the `mlp` set trains, by the user-builder path.
* `cnn`: Conv2D(8, 3) - MaxPooling2D(2) - Flatten - Dense(10, softmax) on scikit-learn's
  `load_digits` (1797 8 x 8 grey images of the ten digits, shipped inside the wheel, pixels
  scaled to [0, 1]), categorical cross-entropy on one-hot labels.
* `rnn`: SimpleRNN(16) - Dense(1) on the adding problem (Hochreiter & Schmidhuber 1997;
  Pascanu, Mikolov & Bengio 2013 used it to show exploding gradients and clipping): 1000
  sequences of `ADDING_STEPS` steps of (value ~ U(0, 1), marker), two markers set, one in each
  half; the target is the sum of the two marked values; mean squared error.

Why SimpleRNN rather than LSTM: the adding problem on a plain tanh RNN is where gradient
clipping was first shown to matter, so its learning-rate x clipnorm grid has an edge to find;
and it is the cheaper cell (one matmul pair per step against LSTM's four gates), which keeps the
plain `model.fit` side of the bench short enough to sample on two cores::

    >>> x, y = adding_problem(0, n=4, steps=6)
    >>> x.shape, y.shape, x[:, :, 1].sum(axis=1).tolist()
    ((4, 6, 2), (4, 1), [2.0, 2.0, 2.0, 2.0])
    >>> bool(np.allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=1)))
    True
"""

from __future__ import annotations

import numpy as np

ADDING_STEPS = 10
ADDING_SAMPLES = 1000


def exploding_mlp(activation: str, seed: int):
    """tf-optimizer-error.md example 1 as a user builder: the catalog's model, data and loss."""
    from ..catalog import EXAMPLES

    ex = EXAMPLES["exploding_gradients"]
    x, y = ex.data(seed)
    model = ex.build(activation, x.shape[1])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8 x 8 digits as [1797, 8, 8, 1] floats in [0, 1] and one-hot [1797, 10] labels."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    return x, np.eye(10, dtype="float32")[labels]


def cnn(activation: str, seed: int):
    """A small convolutional classifier of the digits (the data set is fixed: `seed` is unused)."""
    import keras

    x, y = digits()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation=activation),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="categorical_crossentropy")
    return model, x, y


def adding_problem(seed: int, n: int = ADDING_SAMPLES, steps: int = ADDING_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """n sequences [n, steps, 2] of (value, marker) and their targets [n, 1]: the sum of the two
    marked values, one marker in each half of the sequence."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (n, steps))
    markers = np.zeros((n, steps))
    half = steps // 2
    markers[np.arange(n), rng.integers(0, half, n)] = 1
    markers[np.arange(n), rng.integers(half, steps, n)] = 1
    x = np.stack([values, markers], axis=-1).astype("float32")
    return x, (values * markers).sum(axis=1, keepdims=True).astype("float32")


def rnn(activation: str, seed: int):
    """A SimpleRNN regressor of the adding problem."""
    import keras

    x, y = adding_problem(seed)
    model = keras.Sequential([keras.Input((ADDING_STEPS, 2)), keras.layers.SimpleRNN(16, activation=activation),
                              keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y


def forward_flops(model) -> tuple[int, int]:
    """Floating-point operations (2 per multiply-add) of one sample's forward pass through the
    model's matmuls and convolutions, and those of the first layer's input-side product (whose
    input gradient training never needs). Other layers (pooling, activations, the loss) are not
    counted, as the `mlp` set counts its matmuls only."""
    import keras

    total, first = 0, None
    for layer in model._flatten_layers(include_self=False):
        flops = 0
        if isinstance(layer, keras.layers.Dense):
            flops = 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
            inputs = flops
        elif isinstance(layer, keras.layers.Conv2D):
            out = layer.compute_output_shape(layer.input.shape)
            flops = 2 * int(np.prod(out[1:])) * int(np.prod(layer.kernel.shape[:-1]))
            inputs = flops
        elif isinstance(layer, keras.layers.RNN):
            cell = layer.cell
            steps = int(layer.input.shape[1])
            inputs = 2 * steps * int(np.prod(cell.kernel.shape))
            flops = inputs + 2 * steps * int(np.prod(cell.recurrent_kernel.shape))
        if flops:
            total += flops
            first = inputs if first is None else first
    return total, first or 0


def training_flops_per_sample(model) -> int:
    """Forward once, backward twice (weights' and inputs' gradients) but for the first layer's
    input gradient: the count `Architecture.flops_per_sample` makes for a Dense stack."""
    forward, first = forward_flops(model)
    return 3 * forward - first
