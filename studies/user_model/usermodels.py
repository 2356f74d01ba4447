"""A user's own model for `sweep run`: a function (activation, seed) -> (compiled Keras model, x, y).

`user_mlp.toml` beside it names it `usermodels:mlp`; `sweep run user_mlp.toml` from this
directory (or `sweep run studies/user_model/user_mlp.toml` from anywhere) imports it from here.
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
