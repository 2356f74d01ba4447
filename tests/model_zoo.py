"""User model builders for the population engine's equivalence matrix (tests/test_population_models.py):
what `example = "model_zoo:cnn"` names, as `tests/builders.py` serves `builders:tiny_model`.

Each builder is `(activation: str, seed: int) -> (model, x, y)`, the model compiled with its loss,
the data drawn from `seed` (the study's `data_seed`). Models and data are small, so that the
whole matrix trains in minutes, and every training set leaves a partial last batch (N = 150:
at batch size 16 nine batches and one of 6, at 32 four and one of 22), which the population
engine trains as Keras does: padded and masked for a model whose samples are independent, as a
step of its own size for a model whose step depends on the whole batch (BatchNormalization,
Dropout).

* `cnn`: Conv2D - MaxPooling2D - Flatten - Dense softmax on scikit-learn's 8x8 digits, 10 classes;
* `simple_rnn`, `lstm`, `gru`: one recurrent layer of 16 units and a Dense(1) on the adding
  problem (Hochreiter & Schmidhuber 1997): `STEPS` time steps of (value, marker), the target the
  sum of the two marked values, mean squared error; the recurrent layers keep Keras's own
  activations (tanh, sigmoid gates), so `activation` is unused;
* `token_conv`: Conv1D - LayerNormalization - Dense softmax on a token-classification task: each
  of `TOKENS` tokens (one-hot) labelled by how it compares with the one before it (smaller,
  equal, greater), one softmax per token;
* `embed_conv`: `token_conv` reading token ids through an Embedding, whose table gets a sparse
  gradient (`tf.IndexedSlices`) that Keras's optimizers treat slice by slice;
* `mlp_bn_dropout`: Dense - BatchNormalization - Dropout - Dense - Dense sigmoid on a
  nonlinear binary task, binary cross-entropy;

and two the engine cannot express, which train on the keras engine run by run:

* `variable_length`: `lstm` with an input of unknown length (`Input((None, 2))`), which the
  engine cannot unroll or stack;
* `sum_loss`: a small MLP whose loss reduces with "sum", where the engine averages.
"""

import numpy as np

N = 150  # training samples: a partial last batch at batch size 16 (6) and 32 (22)
STEPS = 10  # time steps of the adding problem
TOKENS, VOCABULARY = 10, 12


def _digits(seed: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.random.default_rng(seed).permutation(len(digits.target))[:N]
    x = (digits.images[rows] / 16.0).astype("float32")[..., None]  # [N, 8, 8, 1] in [0, 1]
    y = np.eye(10, dtype="float32")[digits.target[rows]]
    return x, y


def cnn(activation: str, seed: int):
    import keras

    x, y = _digits(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation=activation),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy")
    return model, x, y


def _adding(seed: int):
    """The adding problem: values uniform in [0, 1), two of them marked, the target their sum."""
    rng = np.random.default_rng(seed)
    values = rng.random((N, STEPS))
    markers = np.zeros((N, STEPS))
    for row in markers:
        row[rng.choice(STEPS, 2, replace=False)] = 1.0
    x = np.stack([values, markers], axis=-1).astype("float32")
    y = (values * markers).sum(axis=1, keepdims=True).astype("float32")
    return x, y


def _recurrent(layer):
    import keras

    model = keras.Sequential([keras.Input((STEPS, 2)), layer, keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def simple_rnn(activation: str, seed: int):
    import keras

    x, y = _adding(seed)
    return _recurrent(keras.layers.SimpleRNN(16)), x, y


def lstm(activation: str, seed: int):
    import keras

    x, y = _adding(seed)
    return _recurrent(keras.layers.LSTM(16)), x, y


def gru(activation: str, seed: int):
    import keras

    x, y = _adding(seed)
    return _recurrent(keras.layers.GRU(16)), x, y


def _tokens(seed: int):
    """Token ids (as float32, the engine's input type; Embedding casts them back) and one-hot
    labels per token: 0 smaller than the token before, 1 equal, 2 greater (the first token is
    compared with 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCABULARY, (N, TOKENS))
    before = np.concatenate([np.zeros((N, 1), ids.dtype), ids[:, :-1]], axis=1)
    labels = np.sign(ids - before) + 1
    return ids.astype("float32"), np.eye(3, dtype="float32")[labels]


def token_conv(activation: str, seed: int):
    import keras

    ids, y = _tokens(seed)
    model = keras.Sequential([
        keras.Input((TOKENS, VOCABULARY)),
        keras.layers.Conv1D(16, 3, padding="causal", activation=activation),
        keras.layers.LayerNormalization(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy")
    return model, np.eye(VOCABULARY, dtype="float32")[ids.astype(int)], y


def embed_conv(activation: str, seed: int):
    import keras

    x, y = _tokens(seed)
    model = keras.Sequential([
        keras.Input((TOKENS,)),
        keras.layers.Embedding(VOCABULARY, 8),
        keras.layers.Conv1D(16, 3, padding="causal", activation=activation),
        keras.layers.LayerNormalization(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy")
    return model, x, y


def _nonlinear(seed: int, features: int = 8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, features)).astype("float32")
    y = ((x[:, 0] * x[:, 1] + 0.5 * x[:, 2]) > 0).astype("float32")[:, None]
    return x, y


def mlp_bn_dropout(activation: str, seed: int):
    import keras

    x, y = _nonlinear(seed)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation=activation),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(16, activation=activation),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(loss="binary_crossentropy")
    return model, x, y


def variable_length(activation: str, seed: int):
    import keras

    x, y = _adding(seed)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(16), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model, x, y


def sum_loss(activation: str, seed: int):
    import keras

    x, y = _nonlinear(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation=activation),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss=keras.losses.BinaryCrossentropy(reduction="sum"))
    return model, x, y
