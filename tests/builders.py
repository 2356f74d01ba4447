"""A user model builder for the tests: what `example = "builders:tiny_model"` names."""

import numpy as np


def tiny_model(activation: str, seed: int):
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation=activation),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def not_a_model(activation: str, seed: int):
    return "a string"


def dead_model(activation: str, seed: int):
    """Hidden units that never fire: only the output bias learns, so the loss soon stops
    improving and ReduceLROnPlateau must act."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 4)).astype("float32")
    y = (rng.random((256, 1)) < 0.3).astype("float32")
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu", bias_initializer=keras.initializers.Constant(-100.0)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def raising_model(activation: str, seed: int):
    raise RuntimeError("the user's builder failed")


def no_arguments():
    return tiny_model("relu", 0)


def uncompiled_model(activation: str, seed: int):
    import keras

    x = np.zeros((8, 4), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    return model, x, x[:, :1]  # never compiled: no loss


def linear_model(activation: str, seed: int):
    """A linear regression (Dense(1), no activation, mse): its loss is a quadratic with the
    constant Hessian (2/n)[X 1]ᵀ[X 1] (tests/test_sharpness.py). The features' scales differ so
    that the top eigenvalue stands well apart from the next."""
    import keras

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((300, 3)) * np.array([3.0, 1.0, 0.3])).astype("float32")
    y = (x @ np.array([[0.5], [-1.0], [2.0]]) + 0.1 * rng.standard_normal((300, 1))).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y


def mean_only_model(activation: str, seed: int):
    """A regression whose targets do not depend on the inputs (5 plus noise of variance 0.16)
    from a start far worse than a constant: training can only learn their mean, the classic
    collapse that the initial loss alone takes for learning."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 2)).astype("float32")
    y = (5.0 + 0.4 * rng.standard_normal((512, 1))).astype("float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation=activation),
                              keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y


def memorizer_model(activation: str, seed: int):
    """Random 0/1 labels a wide net can memorise: its loss falls below the best constant's."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = (rng.random((64, 1)) < 0.5).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(128, activation=activation),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def normalized_model(activation: str, seed: int):
    """tiny_model with a LayerNormalization: not a plain Dense stack, so the engine reads it as a graph."""
    import keras

    model, x, y = tiny_model(activation, seed)
    normalized = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation=activation),
                                   keras.layers.LayerNormalization(), keras.layers.Dense(1, activation="sigmoid")])
    normalized.compile(loss="binary_crossentropy")
    return normalized, x, y


def wide_model(activation: str, seed: int):
    """normalized_model through two 1024-unit layers: a run that needs far more memory."""
    import keras

    model, x, y = tiny_model(activation, seed)
    wide = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1024, activation=activation),
                             keras.layers.LayerNormalization(), keras.layers.Dense(1024, activation=activation),
                             keras.layers.Dense(1, activation="sigmoid")])
    wide.compile(loss="binary_crossentropy")
    return wide, x, y


def smoothed_model(activation: str, seed: int):
    """tiny_model compiled with a loss that is not a named Keras loss at its defaults."""
    import keras

    model, x, y = tiny_model(activation, seed)
    model.compile(loss=keras.losses.BinaryCrossentropy(label_smoothing=0.1))
    return model, x, y


def rescaled_linear_model(activation: str, seed: int, depth: int = 0):
    """A planted model-axis effect: `depth` fixed layers that each multiply the input by √2
    (Keras Rescaling, nothing to train) before one linear unit without bias, trained with mse.
    The loss is the quadratic (1/n)|2^(depth/2) X w - y|², whose Hessian (2^(depth+1)/n) XᵀX is
    constant: full-batch gradient descent is stable exactly below 2/λ_max, so each layer of
    depth halves the stable learning rate (tests/test_model_axes.py)."""
    import keras

    x, y = rescaled_linear_data(seed)
    model = keras.Sequential([keras.Input((3,))]
                             + [keras.layers.Rescaling(2 ** 0.5) for _ in range(depth)]
                             + [keras.layers.Dense(1, use_bias=False)])
    model.compile(loss="mse")
    return model, x, y


def rescaled_linear_data(seed: int):
    """`rescaled_linear_model`'s data: three nearly isotropic features, a linear target."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-0.5], [0.25]]) + 0.05 * rng.standard_normal((256, 1))).astype("float32")
    return x, y


def any_knobs(activation: str, seed: int, **knobs):
    """A builder that takes any keyword argument: names reach the sweep's own column rules."""
    return tiny_model(activation, seed)


def tiny_cnn(activation: str, seed: int):
    """A Conv2D model on 6x6 noise images: the population engine runs it as a Keras graph."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 6, 6, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("float32")[:, None]
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation=activation),
                              keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def regularized_model(activation: str, seed: int, l2: float = 0.01):
    """`tiny_model` with Keras's own penalties: an L2 on the first kernel (the knob), an L1 on
    the second and an activity L1 on the hidden layer's output."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation=activation, kernel_regularizer=keras.regularizers.L2(l2),
                           activity_regularizer=keras.regularizers.L1(1e-3)),
        keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=keras.regularizers.L1(0.01))])
    model.compile(loss="binary_crossentropy")
    return model, x, y
