"""The population engine: K runs of one example trained in lockstep by one compiled TensorFlow program.

Each run's weights are one flat vector (kernel, bias, kernel, bias, ... as the
Keras model lists them), and the population's are a stacked [K, P] tensor;
so are Adam's or RMSprop's slots. Every op of the program is batched over the
run axis (batched matmuls on [K, B, D] activations, per-run reductions), so
runs never mix: the gradient of run k's loss reaches run k's weights only, and
a run whose loss, gradient or updated weights turn non-finite stops there. Its
outcome records that step; what its weights hold afterwards is never read and
cannot reach another run, because no op combines runs (so no NaN * 0 can leak:
even the partial last batch is padded with the batch's own samples and masked
with `tf.where`, not by multiplication).

The arithmetic is the keras engine's, op for op: the Keras layers' own
activation functions on `matmul + bias`, Keras's per-sample loss functions
(binary and categorical cross-entropy from the logits a sigmoid or softmax
output carries, mse) or the catalog's hand-written losses, reduced as Keras's
`sum_over_batch_size` does; Keras's clipping formulas (`clipnorm` per
variable, `global_clipnorm`, `clipvalue`), counted as acting by the keras
engine's tests; the optimizer's `update_step` (`step` below: Adam's
epsilon-hat form, SGD, RMSprop, with Keras's default hyper-parameters); and
`ReduceLROnPlateau`'s rules per run on the host at every epoch end
(`plateau.Plateau`). Initial weights are read from the Keras builder under the
run's seed (`sweep.engines.problem`), batches follow `sweep.engines.batch_order`.
What differs from the keras engine is float rounding only (a batched matmul
sums in another order than Keras's 2-D matmul), which tests/test_population.py
measures against each engine's own sensitivity to rounding. Where training is chaotic
that rounding decides where a run parts from Keras, as it decides where Keras
parts from itself re-run from weights one ulp apart (measured: sgd at lr 1 on
minmax_scaling parts at step 100, where a first-layer ReLU input is -2.6e-7 in
Keras and +1.9e-9 here; Keras's one-ulp re-run parts later and is 15 % from
Keras by epoch 10). So the tests also check every step's arithmetic from Keras's
own weights and optimizer slots, which chaos cannot hide.

A group (one program) holds runs of one example that share batch size, loss
and optimizer kind: those change the program's ops or shapes. Inside a group
each run has its own learning rate, schedule (constant or plateau), clipping
kind and threshold, scaler (its batches are gathered from its own scaled copy
of the data) and seed (initial weights, batch order). Activations share a
program while the group is small (`shared_activations`): each layer then
computes every activation the group uses and each run selects its own with
`tf.where`, which costs less than compiling a program per activation until the
group trains about MERGE_RUN_SAMPLES samples.
Models the engine cannot express (a user `module:function` builder, a layer
that is not a plain Dense layer) are trained by the keras engine, run by run,
and their outcomes say `engine="keras"`.

How K is chosen (`population_size`). A run's footprint is estimated from the
example's size (`bytes_per_run`: weights, gradient and optimizer slots with
their updated copies, the step's activations, its batch order). On a CPU
worker K is at most `CPU_MAX_K`: past it the population's weights and slots
no longer stay in cache and each run costs more (measured: see README
"Speed"), and several populations run at once, one per TensorFlow CPU thread,
together within a quarter of the memory available to the process
(MemAvailable, bounded by the cgroup limit). On a GPU worker K is at most
`GPU_MAX_K` and one population runs at a time, within half of the GPU memory
TensorFlow may still allocate (the device's memory limit minus
`tf.config.experimental.get_memory_info`'s current use). A group larger than K
is trained as the fewest populations of at most K runs, all of one size (the
last padded with repeats of a run, whose outcomes are dropped): XLA compiles
once per group. A population that still runs
out of memory is split in half and retried, so the worker never crashes on it.

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import PopulationEngine
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0, 1]', "d.toml")
    >>> outcomes = PopulationEngine().train(study, study.plan())
    >>> [o.engine for o in outcomes], [len(o.epoch_loss) for o in outcomes]
    (['population', 'population'], [1, 1])
"""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from ..catalog import EXAMPLES, PLATEAU, make_loss
from ..spec import CLIP_AXES, Config, Run, Study
from . import Outcome, batch_order, example_data, problem

# XLA's CPU tree-reduction rewrite turns each per-run reduction (gradient norm, finiteness test)
# into a reduce-window with a materialised intermediate, 3-5x slower here than the plain
# reduction (measured). XLA reads its flags at its first compilation, so this is set on import,
# before the engine compiles anything; it changes only the summation order of XLA reductions.
_NO_TREE = "--xla_disable_hlo_passes=tree_reduction_rewriter"
# LLVM's optimisation level 1 for XLA's CPU code, instead of the default 3: the program compiles
# about a quarter faster and its steps run about 30 % faster here (measured, batch 16, 32 and
# 128; O2 sits in between, O0 is 6x slower). Only code generation changes, not the ops: where
# LLVM contracts a multiply and an add into one FMA differs, so values move by rounding (on the
# bench set: about 1e-8 relative after one epoch, every first non-finite step the same).
_LLVM_O1 = "--xla_backend_optimization_level=1"
for _flag in (_NO_TREE, _LLVM_O1):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

# Keras's defaults for the optimizers the sweep builds (keras.optimizers.Adam(), SGD(), RMSprop()).
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
RMSPROP = {"rho": 0.9, "epsilon": 1e-7}
SLOTS = {"adam": ("m", "v"), "sgd": (), "rmsprop": ("velocity",)}
# ReduceLROnPlateau's arguments beyond the catalog's: Keras's defaults.
PLATEAU_MIN_DELTA, PLATEAU_COOLDOWN = 1e-4, 0

CPU_MAX_K = 48
# Activations share a program while the group trains at most this many samples (runs x epochs x
# training-set size). Measured on the bench set, three interleaved runs each: relu and tanh in
# one program per batch size instead of two took 31.3-32.7 CPU-s cold against 35.0-39.1, and
# 22.9-25.3 warm (no compiles) against 21.0-23.0: about 2.6 CPU-s of compiles saved per program
# for 0.8 CPU-s of extra activation work per 5.3e6 run-samples, so merging pays up to about
# 1.8e7; the bound leaves room for dearer activations (gelu) than tanh.
MERGE_RUN_SAMPLES = 1e7
GPU_MAX_K = 8192
CPU_MEMORY_FRACTION = 0.25
GPU_MEMORY_FRACTION = 0.5

# Keras's per-sample loss functions for the losses it compiles by name.
KERAS_LOSSES = {"binary_crossentropy": "binary_crossentropy",
                "categorical_crossentropy": "categorical_crossentropy", "mse": "mean_squared_error"}
WRITTEN_LOSSES = ("handwritten", "handwritten_clipped")


class Unsupported(Exception):
    """A model or configuration this engine does not express; the keras engine trains it."""


@dataclass(frozen=True)
class Architecture:
    """The model as the program sees it: Dense layers (fan-in, units), their activation functions,
    and where each variable sits in a run's flat weight vector."""

    shapes: tuple[tuple[int, int], ...]
    activations: tuple[Callable, ...]
    accuracy: str

    @property
    def variable_shapes(self) -> list[tuple[int, ...]]:
        return [s for i, o in self.shapes for s in ((i, o), (o,))]

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.variable_shapes)

    def split(self, theta: np.ndarray) -> list[np.ndarray]:
        """[K, P] flat weights -> the stacked variables [K, *shape], in the model's order."""
        out, start = [], 0
        for shape in self.variable_shapes:
            size = int(np.prod(shape))
            out.append(np.ascontiguousarray(theta[:, start:start + size].reshape(-1, *shape)))
            start += size
        return out

    def flops_per_sample(self) -> int:
        """Floating-point operations of one sample's forward and backward pass through the matmuls:
        2 per multiply-add, forward once, backward twice (weights' and inputs' gradients) except
        the first layer's input gradient, which training never needs."""
        forward = sum(2 * i * o for i, o in self.shapes)
        return 3 * forward - 2 * self.shapes[0][0] * self.shapes[0][1]


def read_model(model, accuracy: str) -> tuple[Architecture, np.ndarray]:
    """The architecture and the flat initial weights of a Keras stack of plain Dense layers."""
    import keras

    shapes, acts, weights = [], [], []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or layer.bias is None or getattr(layer, "lora_enabled", False):
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) is not a plain Dense layer with bias")
        if layer.kernel_regularizer or layer.bias_regularizer or layer.activity_regularizer \
                or layer.kernel_constraint or layer.bias_constraint or layer.dtype != "float32":
            raise Unsupported(f"layer {layer.name} has regularizers, constraints or a non-float32 dtype")
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        shapes.append(kernel.shape)
        acts.append(layer.activation)
        weights += [kernel.ravel(), bias]
    if not shapes:
        raise Unsupported("model has no layers")
    return Architecture(tuple(shapes), tuple(acts), accuracy), np.concatenate(weights)


@functools.lru_cache(maxsize=512)
def _initial(example: str, data_seed: int, activation: str, seed: int) -> tuple[Architecture, np.ndarray]:
    from ..spec import config_from_dict

    config = config_from_dict({**EXAMPLES[example].defaults, "activation": activation})
    p = problem(_StudyView(example, data_seed), config, seed)  # type: ignore[arg-type]
    arch, theta = read_model(p.model, p.accuracy)
    theta.setflags(write=False)
    return arch, theta


@dataclass(frozen=True)
class _StudyView:
    """What `problem` reads of a study."""

    example: str
    data_seed: int


_build_lock = threading.Lock()


def initial_model(study: Study, config: Config, seed: int) -> tuple[Architecture, np.ndarray]:
    """The Keras builder's model for this run and seed, read as an architecture and flat weights.

    They depend on the layers and the seed only (the scaler keeps the feature count), so the
    model is built once per (example, activation, seed) and shared by every learning rate,
    clipping, scaler and schedule."""
    if study.example not in EXAMPLES:
        raise Unsupported(f"{study.example} is a user builder")
    with _build_lock:  # keras.utils.set_random_seed is process-wide
        return _initial(study.example, study.data_seed, config.activation, seed)


def group_key(config: Config) -> tuple:
    """Runs with the same key can share a program: these axes change its ops or shapes (the
    activation changes its ops too, but a program can hold several: `shared_activations`)."""
    return (config.batch_size, config.loss, config.optimizer)


def shared_activations(activations: Sequence[str], run_samples: float) -> list[tuple[str, ...]]:
    """The activations of one group, as the sets that share a program: all in one while the
    group trains at most MERGE_RUN_SAMPLES samples, else one program each.

    >>> shared_activations(["tanh", "relu", "relu"], 5e6)
    [('relu', 'tanh')]
    >>> shared_activations(["tanh", "relu"], 5e7)
    [('relu',), ('tanh',)]
    """
    names = sorted(set(activations))
    return [tuple(names)] if run_samples <= MERGE_RUN_SAMPLES else [(a,) for a in names]


# ---------------------------------------------------------------------------------------------
# The math of one step, on [K, P] tensors; `lr` and the clipping thresholds are [K] vectors.


def per_run(value, rank: int):
    """A [K] per-run value shaped to broadcast over a [K, ...] variable of that rank."""
    import tensorflow as tf

    return tf.reshape(value, [-1] + [1] * (rank - 1))


def clip(grads: list, squares, global_norm, clipnorm, global_clipnorm, clipvalue, kinds: frozenset):
    """Keras's `BaseOptimizer._clip_gradients` for every run, on the stacked gradients [K, *shape]
    of each variable (a threshold of 0 means that kind is off for the run: Keras's own test is
    `if self.clipnorm and self.clipnorm > 0`). `squares` [K, variables] holds each variable's sum
    of squared gradients. Returns the gradients and whether clipping acted, by the keras engine's
    tests: some variable's norm above `clipnorm`, the global norm above `global_clipnorm`, some
    component beyond `clipvalue`."""
    import tensorflow as tf

    acted = tf.zeros_like(clipnorm, dtype=tf.bool)
    if "clipnorm" in kinds:
        on = clipnorm > 0
        # BaseOptimizer._clip_by_norm, variable by variable, with its two-tap where at zero.
        pred = squares > 0
        l2norm = tf.where(pred, tf.sqrt(tf.where(pred, squares, tf.ones_like(squares))), squares)
        c = clipnorm[:, None]
        denominator = tf.maximum(l2norm, c)
        grads = [tf.where(per_run(on, len(g.shape)), (g * per_run(clipnorm, len(g.shape)))
                          / per_run(denominator[:, i], len(g.shape)), g) for i, g in enumerate(grads)]
        acted = acted | (on & tf.reduce_any(l2norm > c, axis=1))
    if "global_clipnorm" in kinds:
        on = global_clipnorm > 0
        # keras.src.optimizers.base_optimizer.clip_by_global_norm
        scale = global_clipnorm * tf.minimum(1.0 / global_norm, 1.0 / global_clipnorm)
        scale = scale + (global_norm - global_norm)
        grads = [tf.where(per_run(on, len(g.shape)), g * per_run(scale, len(g.shape)), g) for g in grads]
        acted = acted | (on & (global_norm > global_clipnorm))
    if "clipvalue" in kinds:
        on = clipvalue > 0
        clipped = []
        for g in grads:
            v = per_run(clipvalue, len(g.shape))
            axes = list(range(1, len(g.shape)))
            acted = acted | (on & tf.reduce_any(tf.abs(g) > v, axis=axes))
            clipped.append(tf.where(per_run(on, len(g.shape)), tf.clip_by_value(g, -v, v), g))
        grads = clipped
    return grads, acted


def step(optimizer: str, theta, g, slots: dict, lr, iteration):
    """One optimizer update of every run, keras/src/optimizers/{adam,sgd,rmsprop}.py `update_step`
    on one stacked variable [K, *shape] (Keras applies the same arithmetic to each variable).
    `lr` is [K]; `iteration` is Keras's `optimizer.iterations` before this step.
    Returns (theta, slots)."""
    import tensorflow as tf

    lr = per_run(lr, len(theta.shape))
    if optimizer == "adam":
        b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        local_step = tf.cast(iteration + 1, theta.dtype)
        beta_1_power = tf.pow(tf.constant(b1, theta.dtype), local_step)
        beta_2_power = tf.pow(tf.constant(b2, theta.dtype), local_step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m = slots["m"] + (g - slots["m"]) * (1 - b1)
        v = slots["v"] + (tf.square(g) - slots["v"]) * (1 - b2)
        return theta - (m * alpha) / (tf.sqrt(v) + eps), {"m": m, "v": v}
    if optimizer == "sgd":  # momentum 0: Keras's plain branch
        return theta - g * lr, {}
    if optimizer == "rmsprop":  # rho 0.9, momentum 0, not centered
        rho, eps = RMSPROP["rho"], RMSPROP["epsilon"]
        velocity = rho * slots["velocity"] + (1 - rho) * tf.square(g)
        return theta - (lr * g) / tf.sqrt(velocity + eps), {"velocity": velocity}
    raise Unsupported(f"optimizer {optimizer!r}")


# ---------------------------------------------------------------------------------------------
# The program of one group.


@dataclass(frozen=True)
class ProgramShape:
    """Everything a traced program depends on but K and the batch size; equal shapes share one
    trace, which XLA compiles once per (K, batch size)."""

    archs: tuple[Architecture, ...]  # one per activation the program serves; a run's `choice` picks it
    loss: str
    optimizer: str
    n: int  # training-set size
    clip_kinds: frozenset
    jit: bool


def forward(archs: Sequence[Architecture], variables, x, choice):
    """keras Dense.call for every run: matmul, add the bias, the layer's own activation function.

    `archs` differ in their activations only; run k's is `archs[choice[k]]`. Where they differ,
    a layer computes each and selects the run's with `tf.where`: a value the run does not select
    is never combined with its own, and the gradient reaching it is zero."""
    import tensorflow as tf

    h = x
    for layer, (kernel, bias) in enumerate(zip(variables[0::2], variables[1::2])):
        z = tf.matmul(h, kernel) + bias[:, None, :]
        functions = [arch.activations[layer] for arch in archs]
        h = functions[-1](z)
        for i in range(len(functions) - 2, -1, -1):
            if functions[i] is not functions[-1]:
                h = tf.where(tf.reshape(tf.equal(choice, i), [-1, 1, 1]), functions[i](z), h)
    return h


def per_sample_loss(name: str) -> Callable:
    """The loss of every sample of every run, [K, B], from targets and predictions [K, B, out].

    Every loss the catalog offers is a batch mean of a per-sample value; the batch loss is
    their mean over the batch's real samples (`masked_mean`)."""
    import keras
    import tensorflow as tf

    if name in KERAS_LOSSES:
        # The values keras.losses.*Crossentropy reduces with sum_over_batch_size; they read the
        # logits that a sigmoid or softmax output carries, exactly as model.compile's loss does.
        return getattr(keras.losses, KERAS_LOSSES[name])
    written = make_loss(name)  # written for one run's batch; here each sample is a batch of one

    def per_sample(y, pred):
        flat = tf.vectorized_map(lambda t: written(t[0][None], t[1][None]),
                                 (tf.reshape(y, [-1, y.shape[-1]]), tf.reshape(pred, [-1, pred.shape[-1]])))
        return tf.reshape(flat, tf.shape(y)[:2])

    return per_sample


def per_sample_accuracy(kind: str) -> Callable:
    """What metrics=["accuracy"] computes for every sample of every run, [K, B]."""
    import keras
    import tensorflow as tf

    metric = keras.metrics.binary_accuracy if kind == "binary" else keras.metrics.categorical_accuracy

    def accuracy(y, pred):
        values = metric(y, pred)
        return tf.reduce_mean(values, axis=list(range(2, len(values.shape)))) if len(values.shape) > 2 else values

    return accuracy


def masked_mean(values, valid, count):
    """Mean over the batch axis of [K, B] values where `valid` [B]; selected with `tf.where`, never
    multiplied by a mask, so a padded sample's non-finite value cannot leak in."""
    import tensorflow as tf

    return tf.reduce_sum(tf.where(valid[None, :], values, tf.zeros_like(values)), axis=1) / count


class Program:
    """The compiled functions of one group: the initial evaluation and one whole epoch.

    Every step of an epoch has one shape: the partial last batch (1000 samples in batches of 32
    leave 8) is padded to the batch size with repeats of its own samples, which the loss and
    accuracy leave out, so padding adds no value the batch does not already hold and an epoch
    is one loop over one step body (one body to trace and compile, not two)."""

    def __init__(self, shape: ProgramShape):
        import tensorflow as tf

        self.shape = shape
        self.loss = per_sample_loss(shape.loss)
        self.accuracy = per_sample_accuracy(shape.archs[0].accuracy)
        # One trace serves every K and batch size (XLA still compiles each): tracing `_epoch` took
        # 0.8 s a group here and `_initial`'s first call 0.4 s (profiled). A fixed signature also
        # makes l0's rounding independent of which slice of runs happened to be evaluated first.
        arch = shape.archs[0]
        theta = [tf.TensorSpec([None, *v], tf.float32) for v in arch.variable_shapes]
        per_run = tf.TensorSpec([None], tf.float32)
        x = tf.TensorSpec([None, arch.shapes[0][0]], tf.float32)
        y = tf.TensorSpec([None, arch.shapes[-1][1]], tf.float32)
        choice = tf.TensorSpec([None], tf.int32)
        self.initial = tf.function(self._initial, autograph=False, input_signature=[
            theta, tf.TensorSpec([None, None, arch.shapes[0][0]], tf.float32),
            tf.TensorSpec([None, None, arch.shapes[-1][1]], tf.float32), choice])
        self.epoch = tf.function(self._epoch, jit_compile=shape.jit, autograph=False, input_signature=[
            theta, {name: theta for name in SLOTS[shape.optimizer]}, tf.TensorSpec([None], tf.bool),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None, None], tf.int32), x, y, choice,
            per_run, per_run, per_run, per_run])

    def _initial(self, theta: list, x, y, choice):
        """l0 and the initial accuracy of every run on its whole training set x [K, n, features];
        `theta`: the stacked variables; `choice` [K]: each run's activation (`forward`)."""
        import tensorflow as tf

        pred = forward(self.shape.archs, theta, x, choice)
        n = tf.cast(tf.shape(x)[1], tf.float32)
        return tf.reduce_sum(self.loss(y, pred), axis=1) / n, tf.reduce_sum(self.accuracy(y, pred), axis=1) / n

    def _train_step(self, theta: list, slots: dict, iteration, xb, yb, valid, count, choice, lr, clipnorm,
                    global_clipnorm, clipvalue):
        """One step of every run: loss, gradient, clipping, update, and the finiteness test.
        `theta` and each slot are lists of stacked variables [K, *shape], in the model's order."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(theta)
            pred = forward(self.shape.archs, theta, xb, choice)
            loss = masked_mean(self.loss(yb, pred), valid, count)
            # The sum's gradient with respect to run k's weights is run k's own gradient.
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, theta)
        squares = tf.stack([tf.reduce_sum(tf.square(g), axis=list(range(1, len(g.shape)))) for g in grads], axis=1)
        norm = tf.sqrt(tf.reduce_sum(squares, axis=1))
        grads, acted = clip(grads, squares, norm, clipnorm, global_clipnorm, clipvalue, self.shape.clip_kinds)
        updated = [step(self.shape.optimizer, w, g, {name: s[i] for name, s in slots.items()}, lr, iteration)
                   for i, (w, g) in enumerate(zip(theta, grads))]
        theta = [w for w, _ in updated]
        slots = {name: [new[name] for _, new in updated] for name in slots}
        finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)
        for w in theta:
            finite &= tf.reduce_all(tf.math.is_finite(w), axis=list(range(1, len(w.shape))))
        accuracy = masked_mean(self.accuracy(yb, pred), valid, count)
        return theta, slots, loss, accuracy, norm, acted, finite

    def _epoch(self, theta, slots, alive, first_step, order, x, y, choice, lr, clipnorm, global_clipnorm, clipvalue):
        """Train every run through one epoch. `order` [K, steps, B] holds each run's row indices
        into x, y in its batch order, the last batch padded; `first_step` is the global index of
        the epoch's first step. Returns the new state and the epoch's per-run telemetry."""
        import tensorflow as tf

        # Known when XLA compiles, not when the function is traced (one trace, every batch size).
        n_steps, B = tf.shape(order)[1], tf.shape(order)[2]
        n = self.shape.n
        k = tf.shape(alive)[0]
        f64 = tf.float64
        stats = dict(loss_sum=tf.zeros([k], f64), acc_sum=tf.zeros([k], f64), seen=tf.zeros([k], f64),
                     norm_max=tf.zeros([k], tf.float32), clipped=tf.zeros([k], tf.int32),
                     dead_at=tf.fill([k], tf.constant(-1, tf.int32)))
        norms = tf.TensorArray(tf.float32, size=n_steps)
        def one_step(s, theta, slots, alive, stats, norms):
            idx = tf.gather(order, s, axis=1)
            valid = s * B + tf.range(B) < n
            size = tf.minimum(B, n - s * B)
            iteration = first_step + s
            theta, slots, loss, acc, norm, acted, finite = self._train_step(
                theta, slots, iteration, tf.gather(x, idx), tf.gather(y, idx), valid, tf.cast(size, tf.float32),
                choice, lr, clipnorm, global_clipnorm, clipvalue)
            # The keras engine's bookkeeping: the step that turned non-finite still counts in its
            # epoch's loss, accuracy and norm, then the run stops.
            w = tf.cast(size, f64)
            stats = dict(
                loss_sum=tf.where(alive, stats["loss_sum"] + tf.cast(loss, f64) * w, stats["loss_sum"]),
                acc_sum=tf.where(alive, stats["acc_sum"] + tf.cast(acc, f64) * w, stats["acc_sum"]),
                seen=tf.where(alive, stats["seen"] + w, stats["seen"]),
                norm_max=tf.where(alive, tf.where(tf.math.is_finite(norm), tf.maximum(stats["norm_max"], norm), norm),
                                  stats["norm_max"]),
                clipped=stats["clipped"] + tf.cast(alive & finite & acted, tf.int32),
                dead_at=tf.where(alive & ~finite, iteration, stats["dead_at"]),
            )
            return s + 1, theta, slots, alive & finite, stats, norms.write(s, norm)

        # An explicit while loop (the function is traced without AutoGraph: faster to trace).
        _, theta, slots, alive, stats, norms = tf.while_loop(
            lambda s, *_: s < n_steps, one_step, (tf.constant(0), theta, slots, alive, stats, norms))
        return theta, slots, alive, stats, norms.stack()


@functools.lru_cache(maxsize=64)
def program(shape: ProgramShape) -> Program:
    """Compiled programs live as long as the worker: later batches of the same group reuse them."""
    return Program(shape)


def forget() -> None:
    """Drop the compiled programs and the Keras builds, so that the next call starts cold (as
    `sweep bench` times it)."""
    program.cache_clear()
    _initial.cache_clear()


# ---------------------------------------------------------------------------------------------
# How many runs one program holds, and how many programs run at once.


def available_host_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, bounded by a cgroup limit if any."""
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                limit = fh.read().strip()
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            headroom = int(limit) - usage
            available = headroom if available is None else min(available, headroom)
    return available if available is not None else 2 << 30


def gpu_free_memory() -> int | None:
    """Bytes TensorFlow may still allocate on the first GPU, or None on a CPU worker."""
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    from tensorflow.python.client import device_lib

    limit = next(d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU")
    used = tf.config.experimental.get_memory_info("GPU:0")["current"]
    return max(limit - used, 0)


def concurrent_populations() -> int:
    """Populations trained at once: one per TensorFlow CPU thread (XLA runs much of a small
    program on one thread), one on a GPU."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return 1
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return max(1, threads or len(os.sched_getaffinity(0)))


def bytes_per_run(arch: Architecture, batch_size: int, n: int, optimizer: str, activations: int = 1) -> int:
    """A generous estimate of one run's share of a program's memory, in bytes (float32).

    Weights, gradient and slots with the update's new copies and temporaries (8 + 2 x slots
    copies of the weights), the step's activations and their gradients (4 copies of every
    layer's output per activation the program computes, and of the gathered batch), and its
    batch order (int32)."""
    widths = arch.shapes[0][0] + activations * sum(o for _, o in arch.shapes)
    floats = (8 + 2 * len(SLOTS[optimizer])) * arch.n_params + 4 * batch_size * widths + n
    return 4 * floats


def population_size(arch: Architecture, batch_size: int, n: int, optimizer: str,
                    max_k: int | None = None, activations: int = 1) -> int:
    """K on this worker: the device's useful maximum, bounded by its free memory."""
    per_run = bytes_per_run(arch, batch_size, n, optimizer, activations)
    gpu_free = gpu_free_memory()
    if gpu_free is not None:
        k = min(GPU_MAX_K, int(GPU_MEMORY_FRACTION * gpu_free) // per_run)
    else:
        budget = CPU_MEMORY_FRACTION * available_host_memory() / concurrent_populations()
        k = min(CPU_MAX_K, int(budget) // per_run)
    if max_k is not None:
        k = min(k, max_k)
    return max(k, 1)


def populations(members: list, k: int) -> tuple[int, list[list]]:
    """Cut a group into the fewest populations of at most k runs, all of one size (so one
    compiled program serves them), with as little padding as that allows. Returns the size and
    the parts.

    >>> size, parts = populations(list(range(132)), 48)
    >>> size, [len(p) for p in parts]
    (44, [44, 44, 44])
    >>> populations(list(range(5)), 2)
    (2, [[0, 1], [2, 3], [4]])
    """
    parts = -(-len(members) // k)
    size = -(-len(members) // parts)
    return size, [members[i:i + size] for i in range(0, len(members), size)]


def pad_last_batch(order: np.ndarray, batch_size: int) -> np.ndarray:
    """[K, n] row indices -> [K, steps x batch_size]: the partial last batch repeats its own rows.

    >>> pad_last_batch(np.array([[5, 6, 7, 8, 9]]), 2).tolist()
    [[5, 6, 7, 8, 9, 9]]
    """
    n = order.shape[1]
    missing = (-n) % batch_size
    if not missing:
        return order
    fill = np.resize(order[:, n - n % batch_size:].T, (missing, order.shape[0])).T
    return np.concatenate([order, fill], axis=1)


# ---------------------------------------------------------------------------------------------
# The engine.


class PopulationEngine:
    """Trains runs in populations of K, one compiled program per group (see the module docstring).

    `jit=False` runs the same program without XLA; `max_k` caps K."""

    name = "population"
    batched = True

    def __init__(self, jit: bool = True, max_k: int | None = None):
        self.jit, self.max_k = jit, max_k

    def train(self, study: Study, runs: Sequence[Run]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException | None] = [None] * len(runs)
        by_key: dict[tuple, list[int]] = {}
        on_keras: list[int] = []
        for i, run in enumerate(runs):
            try:
                self.check(study, run)
                by_key.setdefault(group_key(run.config), []).append(i)
            except Unsupported:
                on_keras.append(i)
        if on_keras:
            from .keras_engine import KerasEngine

            for i, outcome in zip(on_keras, KerasEngine().train(study, [runs[i] for i in on_keras])):
                results[i] = outcome

        started = time.perf_counter()
        n = len(example_data(study.example, study.data_seed, "none")[0]) if by_key else 0
        work = []  # per group: (real runs' indices, population of runs padded to its group's size, program)
        for same_key in by_key.values():
            activations = [runs[i].config.activation for i in same_key]
            for shared in shared_activations(activations, len(same_key) * study.epochs * n):
                members = [i for i in same_key if runs[i].config.activation in shared]
                first = runs[members[0]]
                arch, _ = initial_model(study, first.config, first.seed)
                k = population_size(arch, first.config.batch_size, n, first.config.optimizer, self.max_k, len(shared))
                size, parts = populations(members, k)
                # A group's clipping kinds are fixed for all its populations: one program per group.
                kinds = frozenset(a for a in CLIP_AXES if any(getattr(runs[i].config, a) is not None for i in members))
                work.append([(part, [runs[i] for i in part] + [runs[part[-1]]] * (size - len(part)),
                              (kinds, shared)) for part in parts])
        # Every group's first population first, so that populations trained side by side at the
        # start belong to different groups and each thread compiles its own program rather than
        # waiting for the other's. Then the longest first: the smallest batches, whose epochs take
        # the most steps, so that no thread is left with a long population at the end while the
        # others idle (measured on the bench set: see README "Speed").
        def steps_first(w):
            return w[1][0].config.batch_size

        work = sorted((g[0] for g in work), key=steps_first) + sorted((w for g in work for w in g[1:]), key=steps_first)
        with ThreadPoolExecutor(max_workers=concurrent_populations()) as pool:
            done = pool.map(lambda w: self._train_fitting(study, w[1], w[2]), work)
            for (part, _, _), outcomes in zip(work, done):
                for i, outcome in zip(part, outcomes):
                    results[i] = outcome
        # Populations ran side by side: scale the runs' shares so that they add up to the time
        # this call took, keeping each population's own division among its runs.
        trained = [r for r in results if isinstance(r, Outcome) and r.engine == self.name]
        total = sum(r.wall_seconds for r in trained)
        if total > 0:
            scale = (time.perf_counter() - started) / total
            for r in trained:
                r.wall_seconds *= scale
        return results  # type: ignore[return-value]

    @staticmethod
    def check(study: Study, run: Run) -> None:
        """Raise Unsupported when this engine cannot train the run exactly as Keras would."""
        c = run.config
        if study.example not in EXAMPLES:
            raise Unsupported(f"{study.example}: user builders run on the keras engine")
        if c.optimizer not in SLOTS:
            raise Unsupported(f"optimizer {c.optimizer!r}")
        if c.loss not in KERAS_LOSSES and c.loss not in WRITTEN_LOSSES:
            raise Unsupported(f"loss {c.loss!r}")
        initial_model(study, c, run.seed)  # raises Unsupported for layers it cannot express

    def _train_fitting(self, study: Study, runs: list[Run], program_of: tuple) -> list[Outcome | BaseException]:
        """Train one population; if it runs out of memory, train its halves instead."""
        import tensorflow as tf

        kinds, shared = program_of
        try:
            return train_population(study, runs, jit=self.jit, clip_kinds=kinds, activations=shared)
        except tf.errors.ResourceExhaustedError as exc:
            if len(runs) == 1:
                return [exc]
            half = len(runs) // 2
            return (self._train_fitting(study, runs[:half], program_of)
                    + self._train_fitting(study, runs[half:], program_of))


def train_population(study: Study, runs: Sequence[Run], jit: bool = True, clip_kinds: frozenset | None = None,
                     activations: tuple[str, ...] | None = None) -> list[Outcome]:
    """Train the runs of one group in lockstep; returns their outcomes in order. `clip_kinds` and
    `activations` (the program's; by default the runs') choose the program."""
    import tensorflow as tf

    from .plateau import Plateau

    started = time.perf_counter()
    K = len(runs)
    configs = [r.config for r in runs]
    c0 = configs[0]
    models = [initial_model(study, c, r.seed) for c, r in zip(configs, runs)]
    arch = models[0][0]
    # Each variable stacked over the runs, [K, *shape]: the program's ops read them as they are.
    theta = [tf.constant(v) for v in arch.split(np.stack([w for _, w in models]))]
    slots = {name: [tf.zeros_like(v) for v in theta] for name in SLOTS[c0.optimizer]}

    # Each scaler a run asks for has its own copy of the data; a run's rows start at its offset.
    scalers = sorted({c.scaler for c in configs})
    data = [example_data(study.example, study.data_seed, s) for s in scalers]
    n = len(data[0][0])
    x = tf.constant(np.concatenate([d[0] for d in data]).astype(np.float32))
    y = tf.constant(np.concatenate([d[1] for d in data]).astype(np.float32))
    offset = np.array([scalers.index(c.scaler) * n for c in configs], dtype=np.int32)

    if clip_kinds is None:
        clip_kinds = frozenset(a for a in CLIP_AXES if any(getattr(c, a) is not None for c in configs))
    if activations is None:
        activations = tuple(sorted({c.activation for c in configs}))
    archs = tuple(initial_model(study, replace(c0, activation=a), runs[0].seed)[0] for a in activations)
    choice = tf.constant(np.array([activations.index(c.activation) for c in configs], dtype=np.int32))
    prog = program(ProgramShape(archs, c0.loss, c0.optimizer, n, clip_kinds, jit))

    def per_run(axis: str) -> tf.Tensor:
        return tf.constant(np.array([getattr(c, axis) or 0.0 for c in configs], dtype=np.float32))

    clipnorm, global_clipnorm, clipvalue = per_run("clipnorm"), per_run("global_clipnorm"), per_run("clipvalue")

    # l0 on the whole training set. It depends on the initial weights (activation, seed) and the
    # data (scaler) only, so it is evaluated once per distinct triple, some at a time (each needs
    # n x width activations).
    triple = [(c.activation, r.seed, c.scaler) for c, r in zip(configs, runs)]
    first = {t: k for k, t in reversed(list(enumerate(triple)))}
    distinct = np.array(sorted(first.values()), dtype=np.int32)
    rows = np.arange(n, dtype=np.int32)
    per_slice = max(1, int(64e6 // (4 * n * (arch.shapes[0][0] + sum(o for _, o in arch.shapes)))))
    initial = []
    for a in range(0, len(distinct), per_slice):
        some = distinct[a:a + per_slice]
        initial.append(prog.initial([tf.gather(v, some) for v in theta], tf.gather(x, offset[some, None] + rows),
                                    tf.gather(y, offset[some, None] + rows), tf.gather(choice, some)))
    of_run = np.searchsorted(distinct, [first[t] for t in triple])
    l0 = np.concatenate([l.numpy() for l, _ in initial])[of_run]
    a0 = np.concatenate([a.numpy() for _, a in initial])[of_run]

    outcomes = [Outcome(initial_loss=float(l0[k]), initial_accuracy=float(a0[k]), engine="population")
                for k in range(K)]
    alive = np.isfinite(l0)
    for k in np.flatnonzero(~alive):
        outcomes[k].first_nonfinite_step = 0
    lr = np.array([c.learning_rate for c in configs], dtype=np.float32)
    plateaus = [Plateau(**PLATEAU, min_delta=PLATEAU_MIN_DELTA, cooldown=PLATEAU_COOLDOWN)
                if c.schedule == "plateau" else None for c in configs]
    norms: list[list[np.ndarray]] = [[] for _ in range(K)]
    # Wall time: the set-up is shared by all runs, an epoch by the runs still training in it.
    wall = np.full(K, (time.perf_counter() - started) / K)

    B = c0.batch_size
    n_steps = -(-n // B)
    steps_done = 0
    alive_t = tf.constant(alive)
    for epoch in range(1, study.epochs + 1):
        live = np.flatnonzero(alive)
        if not len(live):
            break
        t0 = time.perf_counter()
        perms = {s: batch_order(s, epoch, n) for s in {r.seed for r in runs}}
        order = pad_last_batch(np.stack([offset[k] + perms[runs[k].seed] for k in range(K)]).astype(np.int32), B)
        order = order.reshape(K, n_steps, B)
        theta, slots, alive_t, stats, step_norms = prog.epoch(
            theta, slots, alive_t, tf.constant(steps_done, tf.int32), tf.constant(order), x, y, choice,
            tf.constant(lr), clipnorm, global_clipnorm, clipvalue)
        stats = {name: t.numpy() for name, t in stats.items()}
        step_norms = step_norms.numpy()
        for k in live:
            o = outcomes[k]
            dead_at = int(stats["dead_at"][k])
            taken = dead_at - steps_done + 1 if dead_at >= 0 else n_steps
            norms[k].append(step_norms[:taken, k])
            o.epoch_loss.append(float(stats["loss_sum"][k] / stats["seen"][k]))
            o.epoch_accuracy.append(float(stats["acc_sum"][k] / stats["seen"][k]))
            o.epoch_grad_norm_max.append(float(stats["norm_max"][k]))
            o.epoch_learning_rate.append(float(lr[k]))
            o.clipped_steps += int(stats["clipped"][k])
            if dead_at >= 0:
                o.first_nonfinite_step = dead_at
                alive[k] = False
            elif plateaus[k] is not None:
                lr[k] = plateaus[k].on_epoch_end(o.epoch_loss[-1], float(lr[k]))
        steps_done += n_steps
        wall[live] += (time.perf_counter() - t0) / len(live)
    for k, o in enumerate(outcomes):
        o.grad_norms = np.concatenate(norms[k]).astype(np.float64) if norms[k] else np.zeros(0)
        o.wall_seconds = float(wall[k])
    return outcomes
