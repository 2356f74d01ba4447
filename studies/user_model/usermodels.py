"""A user's own models for `sweep run`: functions (activation, seed) -> (compiled Keras model, x, y).

`user_mlp.toml` beside it names `usermodels:mlp`, `user_cnn.toml` `usermodels:cnn` and
`user_rnn.toml` `usermodels:rnn`; `sweep run user_mlp.toml` from this directory (or
`sweep run studies/user_model/user_mlp.toml` from anywhere) imports this module from here.
All three train on the population engine, K runs at a time.
"""

import numpy as np


def mlp(activation: str, seed: int):
    """A two-feature rule in ten features, learned by a 32-unit MLP: the sweep sets the optimizer."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 10)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation=activation),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def cnn(activation: str, seed: int):
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package) by a small CNN."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = np.eye(10, dtype="float32")[digits.target]
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation=activation),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="categorical_crossentropy")
    return model, x, y


def rnn(activation: str, seed: int):
    """The adding problem (Hochreiter & Schmidhuber, 1997): 20 steps of (value, marker); the target
    is the sum of the two marked values. A SimpleRNN(32) must carry them to the last step."""
    import keras

    rng = np.random.default_rng(seed)
    n, steps = 1024, 20
    values = rng.random((n, steps)).astype("float32")
    markers = np.zeros((n, steps), "float32")
    for row, cols in enumerate(rng.random((n, steps)).argsort(axis=1)[:, :2]):
        markers[row, cols] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values * markers).sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((steps, 2)), keras.layers.SimpleRNN(32, activation=activation),
                              keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y
