"""A run's model as the population engine reads it, and its initial weights, taken from the Keras
builder under the run's seed. There are two readings:

* `Architecture`, a stack of plain float32 Dense layers with bias (the catalog's examples, and a
  user's model that is one, compiled with a Keras loss by name: `named_loss`): the program
  computes it with its own batched matmuls (`step.forward`), and one program may serve several
  activations at once;
* `Graph`, any other single-input, single-output float32 Keras model (a user's CNN, RNN, MLP with
  BatchNormalization or Dropout, ...): the program runs Keras's own layer code,
  `Model.stateless_call` vectorized over the runs (`Graph.evaluate`), and carries each run's
  non-trainable state (BatchNormalization's moving statistics, the Dropout and RNN seed
  generators' state) from step to step, as Keras updates it.

What neither expresses raises `Unsupported`, and the keras engine trains it, run by run. A
run's initial weights are one flat float32 vector in the order Keras lists the trainable
variables (kernel, bias, kernel, bias, ...), followed for a `Graph` by its non-trainable
variables; a population stacks them and `split` cuts the [K, P] stack into one [K, *shape]
tensor per variable, the form the program trains::

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import initial_model
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"', "d.toml")
    >>> arch, theta = initial_model(study, study.plan()[0].config, seed=0)
    >>> arch.shapes, theta.shape == (arch.n_params,)
    (((10, 128), (128, 64), (64, 1)), True)
    >>> [v.shape for v in arch.split(theta[None])]
    [(1, 10, 128), (1, 128), (1, 128, 64), (1, 64), (1, 64, 1), (1, 1)]
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ...catalog import EXAMPLES
from ...spec import Config, Study
from .. import problem


class Unsupported(Exception):
    """A model or configuration this engine does not express; the keras engine trains it."""


@dataclass(frozen=True)
class Architecture:
    """The model as the program sees it: Dense layers (fan-in, units), their activation functions,
    and the kind of accuracy its metric computes."""

    shapes: tuple[tuple[int, int], ...]
    activations: tuple[Callable, ...]
    accuracy: str
    state_shapes: tuple = ()  # a Dense stack holds no non-trainable state
    state_dtypes: tuple = ()
    jit: bool = True
    exact_batches: bool = False  # each sample's loss is its own: a padded batch changes nothing
    # Each layer's kernel penalty (l1, l2), Keras's L1L2 regularizer; () when no layer has one.
    penalties: tuple[tuple[float, float], ...] = ()
    # The Keras loss a user builder compiled, by its name in KERAS_LOSSES (a catalog example's
    # is the run's `loss` axis): None for the catalog.
    loss: str | None = None

    @property
    def variable_shapes(self) -> list[tuple[int, ...]]:
        return [s for i, o in self.shapes for s in ((i, o), (o,))]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.shapes[0][0],)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.shapes[-1][1],)

    @property
    def widths(self) -> int:
        """Floats of one sample's input and layer outputs: what a batch's activations cost."""
        return self.shapes[0][0] + sum(o for _, o in self.shapes)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.variable_shapes)

    def split(self, theta: np.ndarray) -> list[np.ndarray]:
        """[K, P] flat weights -> the stacked variables [K, *shape], in the model's order."""
        return split(theta, self.variable_shapes)

    def stack(self, weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The runs' initial weights (`initial_model`) -> the stacked variables and state."""
        return self.split(np.stack(weights)), []

    def key(self) -> tuple:
        """The architecture in words that are the same in every process (activation functions by
        their qualified names, not their addresses)."""
        return (self.shapes, [f"{f.__module__}.{f.__qualname__}" for f in self.activations], self.accuracy) \
            + ((self.penalties,) if self.penalties else ()) + ((self.loss,) if self.loss else ())

    def penalty(self, theta: list):
        """Every run's kernel penalties, [K], as Keras's L1L2 computes each (l1 x sum |w|, then
        + l2 x sum w^2) and `Trainer.compute_loss` adds them."""
        import tensorflow as tf

        terms = []
        for kernel, (l1, l2) in zip(theta[0::2], self.penalties):
            axes = list(range(1, len(kernel.shape)))
            term = tf.zeros(tf.shape(kernel)[:1], kernel.dtype)
            if l1:
                term += l1 * tf.reduce_sum(tf.abs(kernel), axis=axes)
            if l2:
                term += l2 * tf.reduce_sum(tf.square(kernel), axis=axes)
            terms.append(term)
        return tf.add_n(terms)

    def flops_per_sample(self) -> int:
        """Floating-point operations of one sample's forward and backward pass through the matmuls:
        2 per multiply-add, forward once, backward twice (weights' and inputs' gradients) except
        the first layer's input gradient, which training never needs."""
        forward = sum(2 * i * o for i, o in self.shapes)
        return 3 * forward - 2 * self.shapes[0][0] * self.shapes[0][1]


def split(theta: np.ndarray, shapes) -> list[np.ndarray]:
    """[K, P] flat values -> one [K, *shape] array per shape, in order."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(np.ascontiguousarray(theta[:, start:start + size].reshape(-1, *shape)))
        start += size
    return out


# Recurrent layers are unrolled up to this many time steps: a vectorized while loop does not
# compile under XLA, an unrolled one does (and runs 3-6x faster on 2 CPU cores, K = 8, 30 steps).
UNROLL_MAX_STEPS = 100


@dataclass(frozen=True)
class Graph:
    """Any single-input, single-output float32 Keras model, run by its own layer code.

    `evaluate` is `Model.stateless_call` under `vectorized_map` over the runs, with the loss
    and accuracy computed inside the map, on the model's own output tensor: a sigmoid or softmax
    output carries its logits there, and Keras's cross-entropies read them, as in `model.fit`.
    Programs are shared by models of one `signature` (their layer configurations and loss); the
    `model` instance only traces, with every weight passed in."""

    signature: str
    variable_shapes: tuple[tuple[int, ...], ...]
    state_shapes: tuple[tuple[int, ...], ...]
    state_dtypes: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    widths: int  # floats of one sample's activations through the layers (memory per sample)
    accuracy: str
    jit: bool  # False when XLA cannot compile it as Keras computes it (a long recurrent loop, random draws)
    exact_batches: bool  # a step depends on its batch as a whole (batch statistics, random masks)
    # The Embedding tables, whose gradient Keras receives slice by slice (`Lookup`).
    lookups: tuple["Lookup", ...]
    model: Any = field(compare=False, hash=False, repr=False)
    loss: Any = field(compare=False, hash=False, repr=False)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.variable_shapes)

    def stack(self, weights: list[tuple[np.ndarray, ...]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The runs' initial values (`initial_model`: each run's trainable variables, then its
        non-trainable ones, each in its own dtype) -> the stacked variables and state."""
        values = [np.stack(v) for v in zip(*weights)]
        return values[:len(self.variable_shapes)], values[len(self.variable_shapes):]

    def key(self) -> tuple:
        return (self.signature, self.accuracy, self.jit)

    def evaluate(self, theta: list, state: list, x, y, training: bool, taps: list | None = None):
        """Per-sample loss and accuracy of every run, [K, B] each, and the runs' new state, for
        the stacked weights `theta`, state `state`, inputs x [K, B, ...] and targets y [K, B, ...].

        With `taps` (one [K, B, *lookup.shape] tensor of zeros per `Lookup`), each Embedding's
        output is its lookup plus its tap, so that the gradient with respect to a tap is the
        gradient of every row looked up, slice by slice, as Keras's optimizer receives it; the
        ids looked up, [K, B, ...] per `Lookup`, are returned fourth (an empty list without).
        Fifth, every run's regularization and `add_loss` losses, [K]: Keras adds them to the loss
        it differentiates (`Trainer.compute_loss`); the data loss is what the sweep reports."""
        import tensorflow as tf

        from .convolution import install

        install()  # before the map is traced: each run's own Conv2D kernel as batched ops, not a loop
        loss, accuracy = self.loss, per_sample_accuracy(self.accuracy)
        taps = taps or []
        tables = [lookup.layer(self.model) for lookup in self.lookups] if taps else []

        def one_run(args):
            weights, own_state, own_taps, xb, yb = args
            # Programs of one model trace on the engine's threads at once: one at a time through its
            # layers, so that none traces an Embedding while another has it tapped.
            with _tracing, tapped(tables, own_taps) as ids:
                pred, own_state, extra = self.model.stateless_call(weights, own_state, xb, training=training,
                                                                   return_losses=True)
            # Loss.__call__ without its reduction: the per-sample values it averages.
            values = loss.call(tf.convert_to_tensor(yb, loss.dtype), tf.convert_to_tensor(pred, loss.dtype))
            acc = accuracy(yb, pred)
            # The regularization and add_loss losses, summed as Trainer.compute_loss sums them.
            penalty = tf.add_n([tf.cast(tf.reduce_sum(e), tf.float32) for e in extra]) if extra else tf.zeros([])
            return per_sample(values), per_sample(acc), own_state, ids, penalty

        # pfor turns a squeeze of every size-1 axis into one that also drops the run axis when
        # there is one run (known only at run time: K is not part of the trace). keras.ops.add
        # squeezes a bias reshaped to [1, ..., C] so (Conv1D, Conv2D, ...), and a lone run failed
        # ("Incompatible shapes: [16,1,1] vs. [1,150,10,16]"). So at least two runs are mapped: a
        # lone run also as a copy, whose values are dropped and whose gradient is stopped.
        # (No stop_gradient on the copy: forward-over-reverse through it gives IndexedSlices that
        # the curvature probe's jvp cannot take; the copy's values are dropped, so is its gradient.)
        k = tf.shape(x)[0]
        twice = [tf.concat([t, t[:tf.maximum(2 - k, 0)]], 0) for t in (*theta, *state, *taps, x, y)]
        ends = np.cumsum([len(theta), len(state), len(taps)])
        theta2, state2, taps2 = twice[:ends[0]], twice[ends[0]:ends[1]], twice[ends[1]:ends[2]]
        losses, accuracies, new_state, ids, penalty = vectorized_map(one_run, (theta2, state2, taps2, twice[-2],
                                                                               twice[-1]))
        return losses[:k], accuracies[:k], [v[:k] for v in new_state], [i[:k] for i in ids], penalty[:k]


@dataclass(frozen=True)
class Lookup:
    """An Embedding's table: its place among the model's trainable variables, its layer's path,
    and the shape of one sample's lookup (the layer's output without the batch axis).

    Keras hands such a table's gradient to the optimizer as `tf.IndexedSlices`, one slice per
    id looked up, and its TensorFlow arithmetic squares the slices before adding them up (the
    norms of clipnorm and global_clipnorm, clipnorm's and clipvalue's clipping, Adam's and
    RMSprop's second moment unless global_clipnorm made the gradient dense): a row looked up n times in a batch gets the sum of n squares where its
    dense gradient has the square of the sum. The step keeps the slices for that (`step.Slices`)."""

    variable: int
    path: str
    shape: tuple[int, ...]

    def layer(self, model):
        return next(layer for layer in model._flatten_layers() if getattr(layer, "embeddings", None) is not None
                    and layer.embeddings.path == self.path)


_tracing = threading.RLock()


@contextlib.contextmanager
def tapped(tables: list, taps: list):
    """While Keras's model runs: each Embedding of `tables` returns its lookup plus its tap (of
    `taps`, zeros), and the ids it looked up are appended to the list this yields. Keras's own
    Embedding.call, with the tap added before the cast to the compute dtype."""
    from keras import ops

    ids: list = []

    def call(layer, tap):
        def looked_up(inputs):
            if inputs.dtype != "int32" and inputs.dtype != "int64":
                inputs = ops.cast(inputs, "int32")
            ids.append(inputs)
            return ops.cast(ops.take(layer.embeddings, inputs, axis=0) + tap, dtype=layer.compute_dtype)
        return looked_up

    for layer, tap in zip(tables, taps):
        layer.call = call(layer, tap)  # an instance attribute: Layer.__call__ calls self.call
    try:
        yield ids
    finally:
        for layer in tables:
            del layer.call


def vectorized_map(fn: Callable, elems):
    """`tf.vectorized_map(fn, elems)` (dense tensors), traced into the caller's graph.

    Under XLA, TensorFlow's wraps the vectorized loop in a tf.function of its own. A gradient
    through it needs some of the loop's values as compile-time constants (the reduction axes
    pfor computes for a Mean), and XLA's constant analysis, which cannot see inside the call,
    then marks every input of the call constant: the weights, the data and the batch order. The
    program was compiled again at every epoch (a new batch order), and each compilation mapped
    more executable sections: an MLP's 8 runs x 20 epochs mapped 5,469, and the 792 runs of
    `sweep bench --set user_mlp` ran out of mappings ("LLVM ERROR: Unable to allocate section
    memory"). Traced inline, XLA compiles the program once per shape. The wrapper's reason (not
    compiling pfor's placeholders) does not arise: the caller's program is itself a function,
    and XLA compiles what its outputs need."""
    import tensorflow as tf
    from tensorflow.python.ops.parallel_for.control_flow_ops import _broadcasting_gather, _pfor_impl

    if tf.executing_eagerly():
        return tf.vectorized_map(fn, elems)
    flat = tf.nest.flatten(elems)
    static = [t.shape[0] for t in flat]
    n = max(static) if None not in static else tf.reduce_max([tf.shape(t)[0] for t in flat])
    return _pfor_impl(lambda i: fn(tf.nest.map_structure(lambda t: _broadcasting_gather(t, i), elems)), n,
                      fallback_to_while_loop=True)


def per_sample(values):
    """[B, ...] -> [B]: the mean over a sample's own elements, as `sum_over_batch_size` weighs them."""
    import tensorflow as tf

    return tf.reduce_mean(values, axis=list(range(1, len(values.shape)))) if len(values.shape) > 1 else values


def per_sample_accuracy(kind: str) -> Callable:
    """What metrics=["accuracy"] computes for every sample, on any leading axes."""
    import keras

    return keras.metrics.binary_accuracy if kind == "binary" else keras.metrics.categorical_accuracy


# Keras's losses the Dense path computes by name (`step.per_sample_loss`): the catalog's names
# and Keras's per-sample functions.
KERAS_LOSSES = {"binary_crossentropy": "binary_crossentropy",
                "categorical_crossentropy": "categorical_crossentropy", "mse": "mean_squared_error"}


def named_loss(loss) -> str | None:
    """The KERAS_LOSSES name of a compiled loss that is exactly one of them at its defaults (a
    name, a function or a default instance: `loss="binary_crossentropy"`,
    `keras.losses.BinaryCrossentropy()`), averaged over the batch; None for any other."""
    import inspect

    import keras

    if getattr(loss, "reduction", None) != "sum_over_batch_size" or getattr(loss, "dtype", None) != "float32":
        return None
    for name, function in KERAS_LOSSES.items():
        fn = getattr(keras.losses, function)
        if getattr(loss, "fn", None) is fn:
            defaults = inspect.signature(fn).parameters
            kwargs = getattr(loss, "_fn_kwargs", {})
            return name if all(k in defaults and defaults[k].default == v for k, v in kwargs.items()) else None
    return None


def read_model(model, accuracy: str) -> tuple[Architecture, np.ndarray]:
    """The architecture and the flat initial weights of a Keras stack of plain Dense layers."""
    import keras

    shapes, acts, weights, penalties = [], [], [], []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or layer.bias is None or getattr(layer, "lora_enabled", False):
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) is not a plain Dense layer with bias")
        penalty = kernel_penalty(layer.kernel_regularizer)
        if penalty is None or layer.bias_regularizer or layer.activity_regularizer \
                or layer.kernel_constraint or layer.bias_constraint or layer.dtype != "float32":
            raise Unsupported(f"layer {layer.name} has regularizers other than L1L2 on its kernel, constraints "
                              "or a non-float32 dtype")
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        shapes.append(kernel.shape)
        acts.append(layer.activation)
        penalties.append(penalty)
        weights += [kernel.ravel(), bias]
    if not shapes:
        raise Unsupported("model has no layers")
    penalised = tuple(penalties) if any(l1 or l2 for l1, l2 in penalties) else ()
    return Architecture(tuple(shapes), tuple(acts), accuracy, penalties=penalised), np.concatenate(weights)


def kernel_penalty(regularizer) -> tuple[float, float] | None:
    """(l1, l2) of Keras's L1L2, L1 or L2 regularizer, (0, 0) of none, None of any other."""
    import keras

    if regularizer is None:
        return 0.0, 0.0
    if type(regularizer) in (keras.regularizers.L1L2, keras.regularizers.L1, keras.regularizers.L2):
        return float(getattr(regularizer, "l1", 0.0)), float(getattr(regularizer, "l2", 0.0))
    return None


# Layer settings that shape no computation once the weights exist: two builds that differ in them
# share one program (Keras numbers layer names per build; initializers and seeds make weights).
NOT_COMPUTATION = ("name", "seed", "dtype")


def signature(model, loss) -> str:
    """The model's layers and loss as words equal for every build of one builder call."""
    def settings(config: dict) -> list:
        return sorted((k, repr(v)) for k, v in config.items()
                      if k not in NOT_COMPUTATION and not k.endswith(("initializer", "_seed")))

    layers = [(type(layer).__qualname__, settings(layer.get_config())) for layer in model._flatten_layers()]
    return repr((layers, type(loss).__qualname__, getattr(getattr(loss, "fn", None), "__qualname__", None),
                 settings(loss.get_config())))


def training_graph(model, input_shape: tuple[int, ...]):
    """The graph of one sample's forward pass in training mode."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=True)).get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32)).graph


def activation_floats(graph) -> int:
    """Floats of one sample's forward pass: every float32 value of the sample (leading axis the
    batch of one) its traced graph computes. Measured on the traced graph rather than from layer
    shapes, so that any layer, and an unrolled recurrent layer's every step, counts; weights are
    counted once per run elsewhere (`sizing.bytes_per_run`)."""
    import tensorflow as tf

    return int(sum(np.prod(t.shape.as_list()) for op in graph.get_operations() if op.type != "ReadVariableOp"
                   for t in op.outputs if t.dtype == tf.float32 and t.shape.is_fully_defined()
                   and t.shape.rank and t.shape[0] == 1))


def draws_random(graph) -> bool:
    """Whether the forward pass draws random numbers (Dropout, noise layers): their shape is the
    batch's, so a padded batch would draw other numbers than Keras."""
    return any("Random" in op.type for op in graph.get_operations())


def sparse_gradients(model, loss, graph, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> list[str]:
    """The paths of the trainable variables whose gradient Keras receives as `tf.IndexedSlices`
    (an Embedding's table, any variable read by a gather): one slice per lookup, a row looked up
    twice in a batch twice (what Keras's arithmetic does with them: `Lookup`). Only a forward
    pass that gathers (`graph`, `training_graph`'s) is traced again for its gradient."""
    import tensorflow as tf

    if not any("Gather" in op.type for op in graph.get_operations()):
        return []
    variables = model.trainable_variables

    def gradients(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, variables)

    grads = tf.function(gradients, autograph=False).get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32), tf.TensorSpec([1, *output_shape], tf.float32)).structured_outputs
    return [v.path for v, g in zip(variables, grads) if isinstance(g, tf.IndexedSlices)]


def read_graph(model, loss, accuracy: str) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """Any Keras model the engine runs by its own layer code (`Graph`), and its flat initial
    trainable weights followed by its non-trainable state. Raises `Unsupported`, naming the
    layer or feature, for what it cannot train exactly as the keras engine does."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise Unsupported(f"model {model.name} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                          "the engine trains models of one input and one output")
    for v in model.trainable_variables:
        if v.dtype != "float32":
            raise Unsupported(f"variable {v.path} is {v.dtype}; the engine trains float32 models")
        if getattr(v, "constraint", None) is not None:
            raise Unsupported(f"variable {v.path} has a constraint, which Keras's optimizer applies after "
                              "each update; the engine does not")
    reduction = getattr(loss, "reduction", None)
    if reduction != "sum_over_batch_size":
        raise Unsupported(f"loss {getattr(loss, 'name', loss)!r} reduces with {reduction!r}; the engine "
                          "averages per-sample losses (Keras's sum_over_batch_size)")
    jit = True
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.RNN):
            if hasattr(layer, "use_cudnn"):
                layer.use_cudnn = False  # one cuDNN call per run would serialise the population
            steps = layer.input.shape[1] if hasattr(layer, "input") else None
            if steps is not None and steps <= UNROLL_MAX_STEPS:
                layer.unroll = True
            else:
                jit = False
    input_shape = tuple(model.inputs[0].shape[1:])
    output_shape = tuple(model.outputs[0].shape[1:])
    if None in input_shape or None in output_shape:
        raise Unsupported(f"model {model.name} has inputs {input_shape} or outputs {output_shape} of unknown size")
    variables, state = model.trainable_variables, model.non_trainable_variables
    traced = training_graph(model, input_shape)
    lookups = []
    tables = {layer.embeddings.path: layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.Embedding)}
    paths = [v.path for v in variables]
    for path in sparse_gradients(model, loss, traced, input_shape, output_shape):
        layer = tables.get(path)
        if layer is None or getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise Unsupported(f"variable {path} gets a sparse gradient (tf.IndexedSlices) from a layer other than "
                              "a plain Embedding; the engine keeps the slices of Embedding tables only")
        lookups.append(Lookup(paths.index(path), path, tuple(layer.output.shape[1:])))
    random = draws_random(traced)
    # XLA draws other random numbers than TensorFlow's kernels for the same seeds: a model with
    # Dropout runs unjitted, as the keras engine does, so that every run draws Keras's masks.
    jit = jit and not random
    exact = random or any(isinstance(layer, keras.layers.BatchNormalization)
                                        for layer in model._flatten_layers())
    graph = Graph(signature(model, loss), tuple(tuple(v.shape) for v in variables), tuple(tuple(v.shape) for v in state),
                  tuple(str(v.dtype) for v in state), input_shape, output_shape, activation_floats(traced), accuracy, jit, exact, tuple(lookups), model, loss)
    values = tuple(np.asarray(v.numpy()) for v in (*variables, *state))
    for v in values:
        v.setflags(write=False)
    return graph, values


Model = Architecture | Graph
# A run's initial values: a Dense stack's flat float32 weights, a graph's variables one by one.
Weights = np.ndarray | tuple[np.ndarray, ...]


@functools.lru_cache(maxsize=512)
def built_model(study: "_StudyView", activation: str, knobs: tuple, seed: int) -> tuple[Model, Weights]:
    """The Keras build of one (example, activation, seed), read once and kept read-only."""
    from ...spec import config_from_dict, example_defaults

    config = replace(config_from_dict({**example_defaults(study.example), "activation": activation}), model=knobs)
    p = problem(study, config, seed)  # type: ignore[arg-type]
    if study.example in EXAMPLES:
        arch, theta = read_model(p.model, p.accuracy)
    else:
        # A user's plain Dense stack with a named Keras loss takes the catalog's hand-written path
        # (`sweep bench --set user_mlp`: the graph path took 2.9x its time cold, 2.0x cached).
        loss = named_loss(p.loss_fn)
        try:
            if loss is None:
                raise Unsupported("not a named Keras loss")
            arch, theta = read_model(p.model, p.accuracy)
        except Unsupported:
            return read_graph(p.model, p.loss_fn, p.accuracy)
        arch = replace(arch, loss=loss)
    theta.setflags(write=False)
    return arch, theta


@dataclass(frozen=True)
class _StudyView:
    """What `problem` reads of a study."""

    example: str
    data_seed: int
    search_path: tuple[str, ...] = ()


_build_lock = threading.Lock()


def initial_model(study: Study, config: Config, seed: int) -> tuple[Model, Weights]:
    """The Keras builder's model for this run and seed, read as an architecture and flat weights.

    They depend on the layers and the seed only (the scaler keeps the feature count), so the
    model is built once per (example, activation, model knobs, seed) and shared by every learning rate,
    clipping, scaler and schedule. A user's builder that fails here is the user's error, not
    an unsupported model: it is raised as it is, and the run records it."""
    view = _StudyView(study.example, study.data_seed, study.search_path)
    with _build_lock:  # keras.utils.set_random_seed is process-wide
        return built_model(view, config.activation, config.model, seed)
