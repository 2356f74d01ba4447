"""The population engine: K runs of one example trained in lockstep by one compiled TensorFlow program.

Every weight of the model becomes one stacked tensor with the runs on its first
axis ([K, 10, 128], [K, 128], ...), and so does every optimizer slot. Each op of
the program is batched over that axis (batched matmuls, per-run reductions), so
runs never mix: the gradient of run k's loss reaches run k's weights only, and a
run whose loss, gradient or weights turn non-finite is frozen from that step
(its update is discarded with `tf.where`, which selects and never multiplies, so
NaN * 0 cannot leak) and recorded as `nan` at that step while the others go on.

The arithmetic is the keras engine's, op for op: the Keras layer's own
activation functions on `matmul + bias`, Keras's loss functions (binary and
categorical cross-entropy from the logits a sigmoid/softmax output carries,
mse) or the catalog's hand-written losses, Keras's clipping formulas
(`clipnorm` per variable, `global_clipnorm`, `clipvalue`, acting exactly when
Keras's own tests say they act), the optimizer's `update_step` (Adam with its
epsilon-hat form, SGD, RMSprop; `step` below), and `ReduceLROnPlateau`'s rules
kept per run on the host at each epoch end. Initial weights are read from the
Keras builder under the run's seed (`sweep.engines.problem`), batches follow
`sweep.engines.batch_order`, so both engines see the same numbers.

What varies inside one group (one program): learning rate, schedule (constant
or plateau), clipping kind and threshold, scaler (each run gathers its batches
from its own scaled copy of the data), and seed (initial weights, batch order).
What makes separate groups, because it changes the program's shape or ops:
activation, batch size, loss, optimizer kind (and the model's layer shapes).
Models the engine cannot express (a user `module:function` builder, a layer
that is not a bias-carrying Dense) are trained by the keras engine, and their
outcomes say `engine="keras"`.

How K is chosen (`population_size`): a run's footprint is estimated from the
example's size (weights and optimizer slots with their update temporaries,
per-step activations, its batch order). On a CPU worker K is the smaller of
`CPU_MAX_K` (beyond it throughput no longer grows; measured with `sweep bench`)
and what fits in a quarter of the memory available to the process (MemAvailable,
bounded by the cgroup limit). On a GPU worker it is the smaller of
`GPU_MAX_K` and what fits in half of the GPU memory TensorFlow may still
allocate (the device's memory limit minus `tf.config.experimental.get_memory_info`'s
current use). A group larger than K is trained as several populations; a
population that still runs out of memory is split in half and retried, so the
worker never crashes on it.

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import PopulationEngine
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0, 1]', "d.toml")
    >>> outcomes = PopulationEngine().train(study, study.plan())
    >>> [o.engine for o in outcomes], [len(o.epoch_loss) for o in outcomes]
    (['population', 'population'], [1, 1])
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..catalog import EXAMPLES, PLATEAU, make_loss
from ..spec import Config, Run, Study
from . import Outcome, batch_order, example_data, problem

# Keras's defaults for the optimizers the sweep builds (keras.optimizers.Adam(), SGD(), RMSprop()).
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
RMSPROP = {"rho": 0.9, "epsilon": 1e-7}
SLOTS = {"adam": ("m", "v"), "sgd": (), "rmsprop": ("velocity",)}
# ReduceLROnPlateau's arguments beyond the catalog's: Keras's defaults.
PLATEAU_MIN_DELTA, PLATEAU_COOLDOWN = 1e-4, 0

CPU_MAX_K = 256
GPU_MAX_K = 8192
CPU_MEMORY_FRACTION = 0.25
GPU_MEMORY_FRACTION = 0.5

# Losses Keras computes per sample (then sum / batch size, Keras's sum_over_batch_size);
# they read the logits a sigmoid or softmax output carries, as model.compile's loss does.
KERAS_LOSSES = {"binary_crossentropy": "binary_crossentropy",
                "categorical_crossentropy": "categorical_crossentropy", "mse": "mean_squared_error"}


class Unsupported(Exception):
    """A model or configuration this engine does not express; the keras engine trains it."""


@dataclass(frozen=True)
class Architecture:
    """The model as the program sees it: Dense layers (fan-in, units) and their activation functions."""

    shapes: tuple[tuple[int, int], ...]
    activations: tuple[Callable, ...]
    accuracy: str

    @property
    def n_params(self) -> int:
        return sum(i * o + o for i, o in self.shapes)

    def flops_per_sample(self) -> int:
        """Multiply-adds x 2 of one forward and backward pass (the backward pass costs two matmuls
        per layer, one for the first layer, whose input gradient is not needed)."""
        forward = sum(2 * i * o for i, o in self.shapes)
        return forward + 2 * forward - 2 * self.shapes[0][0] * self.shapes[0][1]


def read_model(model, accuracy: str) -> tuple[Architecture, list[np.ndarray]]:
    """The architecture and the initial weights [kernel, bias, kernel, bias, ...] of a Dense stack."""
    import keras

    shapes, acts, weights = [], [], []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or layer.bias is None or layer.lora_enabled:
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) is not a plain Dense layer with bias")
        if layer.kernel_regularizer or layer.bias_regularizer or layer.activity_regularizer \
                or layer.kernel_constraint or layer.bias_constraint or layer.dtype != "float32":
            raise Unsupported(f"layer {layer.name} has regularizers, constraints or a non-float32 dtype")
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        shapes.append(kernel.shape)
        acts.append(layer.activation)
        weights += [kernel, bias]
    if not shapes:
        raise Unsupported("model has no layers")
    return Architecture(tuple(shapes), tuple(acts), accuracy), weights


@functools.lru_cache(maxsize=256)
def _initial(example: str, data_seed: int, activation: str, scaler: str, seed: int):
    from ..spec import config_from_dict

    ex = EXAMPLES[example]
    config = config_from_dict({**ex.defaults, "activation": activation, "scaler": scaler})
    study = _StudyView(example, data_seed)
    p = problem(study, config, seed)  # type: ignore[arg-type]
    arch, weights = read_model(p.model, p.accuracy)
    for w in weights:
        w.setflags(write=False)
    return arch, weights


@dataclass(frozen=True)
class _StudyView:
    """What `problem` reads of a study, so that weights can be cached across studies."""

    example: str
    data_seed: int


def initial_model(study: Study, config: Config, seed: int) -> tuple[Architecture, list[np.ndarray]]:
    """The Keras builder's model for this run and seed, read as an architecture and weights.

    The weights depend on the seed and the layers only, so they are built once per
    (example, activation, seed) and reused by every learning rate, clipping and schedule."""
    if study.example not in EXAMPLES:
        raise Unsupported(f"{study.example} is a user builder")
    # The scaler never changes the model (features keep their count), so it is not part of the key.
    return _initial(study.example, study.data_seed, config.activation, "none", seed)


def group_key(study: Study, config: Config) -> tuple:
    """Runs with the same key share a program: these axes change its shape or its ops."""
    return (config.activation, config.batch_size, config.loss, config.optimizer)


# ---------------------------------------------------------------------------------------------
# The math of one step, on stacked tensors. `lr` and the clipping thresholds are [K] vectors.


def _per_run(v, like):
    """A [K] vector shaped to broadcast against a stacked [K, ...] tensor."""
    import tensorflow as tf

    return tf.reshape(v, [-1] + [1] * (len(like.shape) - 1))


def _sum_per_run(t):
    import tensorflow as tf

    return tf.reduce_sum(t, axis=list(range(1, len(t.shape))))


def clip(grads, squares, clipnorm, global_clipnorm, clipvalue, global_norm, kinds: frozenset):
    """Keras's `_clip_gradients`, per run (a threshold of 0 means that kind is off, Keras's own
    test `if self.clipnorm and self.clipnorm > 0`). `squares` holds each variable's per-run sum
    of squared gradients. Returns the gradients and whether clipping acted, by the keras
    engine's tests: a variable's norm above `clipnorm`, the global norm above
    `global_clipnorm`, any component beyond `clipvalue`."""
    import tensorflow as tf

    acted = tf.zeros_like(clipnorm, dtype=tf.bool)
    if "clipnorm" in kinds:
        on = clipnorm > 0
        out = []
        for g, l2sum in zip(grads, squares):
            # BaseOptimizer._clip_by_norm, with its two-tap where for a zero gradient.
            pred = l2sum > 0
            l2norm = tf.where(pred, tf.sqrt(tf.where(pred, l2sum, tf.ones_like(l2sum))), l2sum)
            c = _per_run(clipnorm, g)
            clipped = (g * c) / _per_run(tf.maximum(l2norm, clipnorm), g)
            out.append(tf.where(_per_run(on, g), clipped, g))
            acted = acted | (on & (l2norm > clipnorm))
        grads = out
    if "global_clipnorm" in kinds:
        on = global_clipnorm > 0
        # keras.src.optimizers.base_optimizer.clip_by_global_norm
        scale = global_clipnorm * tf.minimum(1.0 / global_norm, 1.0 / global_clipnorm)
        scale = scale + (global_norm - global_norm)
        grads = [tf.where(_per_run(on, g), g * _per_run(scale, g), g) for g in grads]
        acted = acted | (on & (global_norm > global_clipnorm))
    if "clipvalue" in kinds:
        on = clipvalue > 0
        out = []
        for g in grads:
            v = _per_run(clipvalue, g)
            out.append(tf.where(_per_run(on, g), tf.clip_by_value(g, -v, v), g))
            beyond = tf.reduce_any(tf.abs(g) > v, axis=list(range(1, len(g.shape))))
            acted = acted | (on & beyond)
        grads = out
    return grads, acted


def step(optimizer: str, variables, grads, slots, lr, iteration):
    """One optimizer update of every run: keras/src/optimizers/{adam,sgd,rmsprop}.py `update_step`,
    written on stacked tensors. `slots` maps a slot name to its list of stacked tensors;
    `iteration` is Keras's `optimizer.iterations` before this step. Returns (variables, slots)."""
    import tensorflow as tf

    new_vars, new_slots = [], {name: [] for name in slots}
    for i, (w, g) in enumerate(zip(variables, grads)):
        rate = _per_run(lr, w)
        if optimizer == "adam":
            b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
            local_step = tf.cast(iteration + 1, w.dtype)
            beta_1_power = tf.pow(tf.constant(b1, w.dtype), local_step)
            beta_2_power = tf.pow(tf.constant(b2, w.dtype), local_step)
            alpha = rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            m = slots["m"][i] + (g - slots["m"][i]) * (1 - b1)
            v = slots["v"][i] + (tf.square(g) - slots["v"][i]) * (1 - b2)
            new_vars.append(w - (m * alpha) / (tf.sqrt(v) + eps))
            new_slots["m"].append(m)
            new_slots["v"].append(v)
        elif optimizer == "sgd":  # momentum 0: Keras's plain branch
            new_vars.append(w - g * rate)
        elif optimizer == "rmsprop":  # rho 0.9, momentum 0, not centered
            rho, eps = RMSPROP["rho"], RMSPROP["epsilon"]
            velocity = rho * slots["velocity"][i] + (1 - rho) * tf.square(g)
            new_vars.append(w - (rate * g) / tf.sqrt(velocity + eps))
            new_slots["velocity"].append(velocity)
        else:
            raise Unsupported(f"optimizer {optimizer!r}")
    return new_vars, new_slots


# ---------------------------------------------------------------------------------------------
# The program of one group.


@dataclass(frozen=True)
class ProgramShape:
    """Everything a compiled program depends on; equal shapes share one compiled program."""

    arch: Architecture
    loss: str
    optimizer: str
    batch_size: int
    n: int  # training-set size
    clip_kinds: frozenset
    jit: bool


def _forward(arch: Architecture, variables, x):
    h = x
    for (kernel, bias), activation in zip(zip(variables[0::2], variables[1::2]), arch.activations):
        # keras Dense.call: matmul, add bias, activation (the layer's own function object).
        h = activation(tf_matmul(h, kernel) + bias[:, None, :])
    return h


def tf_matmul(a, b):
    import tensorflow as tf

    return tf.matmul(a, b)


def _per_sample_loss(name: str) -> Callable:
    """The loss of every sample of every run, [K, B], from stacked targets and predictions [K, B, out].

    Every loss the catalog offers is a mean over the batch of a per-sample value, so the batch
    loss is the masked mean of these (the partial last batch is padded, see `Program`)."""
    import keras
    import tensorflow as tf

    if name in KERAS_LOSSES:
        # keras.losses.binary_crossentropy & co.: the per-sample values Keras's Loss reduces with
        # sum_over_batch_size; they read the logits a sigmoid or softmax output carries.
        return getattr(keras.losses, KERAS_LOSSES[name])
    written = make_loss(name)  # written for one run's (y, pred); each sample is a batch of one

    def per_sample(y, pred):
        flat = tf.vectorized_map(lambda t: written(t[0][None], t[1][None]),
                                 (tf.reshape(y, [-1, y.shape[-1]]), tf.reshape(pred, [-1, pred.shape[-1]])))
        return tf.reshape(flat, tf.shape(y)[:2])

    return per_sample


def _per_sample_accuracy(kind: str) -> Callable:
    """What metrics=["accuracy"] computes for every sample of every run, [K, B]."""
    import keras
    import tensorflow as tf

    metric = keras.metrics.binary_accuracy if kind == "binary" else keras.metrics.categorical_accuracy

    def accuracy(y, pred):
        values = metric(y, pred)
        return tf.reduce_mean(values, axis=list(range(2, len(values.shape)))) if len(values.shape) > 2 else values

    return accuracy


def _masked_mean(values, valid, count):
    """Mean over the batch axis of [K, B] values where `valid` [B]; `tf.where`, never a product,
    so a padded sample's non-finite value cannot leak in."""
    import tensorflow as tf

    return tf.reduce_sum(tf.where(valid[None, :], values, tf.zeros_like(values)), axis=1) / count


class Program:
    """The compiled functions of one group: the initial evaluation and one whole epoch.

    Every step of an epoch has the same shape: the partial last batch (1000 samples in batches
    of 32 leave 8) is padded to the batch size with repeats of its own samples and masked out
    of the loss, so padding adds no value the batch does not already hold and the epoch is one
    loop over one step body (one body to trace and compile, not two)."""

    def __init__(self, shape: ProgramShape):
        import tensorflow as tf

        self.shape = shape
        self.loss = _per_sample_loss(shape.loss)
        self.accuracy = _per_sample_accuracy(shape.arch.accuracy)
        self.initial = tf.function(self._initial, reduce_retracing=True)
        self.epoch = tf.function(self._epoch, jit_compile=shape.jit, reduce_retracing=not shape.jit)

    def _initial(self, variables, x, y):
        """l0 and the initial accuracy of every run on its whole training set [K, n, ...]."""
        import tensorflow as tf

        pred = _forward(self.shape.arch, variables, x)
        n = tf.cast(tf.shape(x)[1], tf.float32)
        return tf.reduce_sum(self.loss(y, pred), axis=1) / n, tf.reduce_sum(self.accuracy(y, pred), axis=1) / n

    def _train_step(self, variables, slots, iteration, xb, yb, valid, count, lr, clipnorm, global_clipnorm,
                    clipvalue):
        """One step of every run: loss, gradients, clipping, update, and the finiteness test."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(variables)
            pred = _forward(self.shape.arch, variables, xb)
            loss = _masked_mean(self.loss(yb, pred), valid, count)
            # The sum's gradient with respect to run k's weights is run k's own gradient.
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, variables)
        squares = [_sum_per_run(tf.square(g)) for g in grads]
        norm = tf.sqrt(tf.add_n(squares))
        grads, acted = clip(grads, squares, clipnorm, global_clipnorm, clipvalue, norm, self.shape.clip_kinds)
        variables, slots = step(self.shape.optimizer, variables, grads, slots, lr, iteration)
        # No run's arithmetic touches another's, so a run that turned non-finite is simply never
        # read again: its outcome stops at this step, whatever its weights hold afterwards. (Masking
        # its update with tf.where would cost a pass over every weight and slot at every step.)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)
        for w in variables:
            finite = finite & tf.reduce_all(tf.math.is_finite(w), axis=list(range(1, len(w.shape))))
        accuracy = _masked_mean(self.accuracy(yb, pred), valid, count)
        return variables, slots, loss, accuracy, norm, acted, finite

    def _epoch(self, variables, slots, alive, first_step, order, x, y, lr, clipnorm, global_clipnorm, clipvalue):
        """Train every run through one epoch. `order` [K, steps x B] holds each run's row indices
        into x, y in its batch order, the last batch padded; `first_step` is the global index of
        the epoch's first step. Returns the new state and the epoch's per-run telemetry."""
        import tensorflow as tf

        B, n = self.shape.batch_size, self.shape.n
        n_steps = -(-n // B)
        k = tf.shape(alive)[0]
        f64 = tf.float64
        stats = dict(loss_sum=tf.zeros([k], f64), acc_sum=tf.zeros([k], f64), seen=tf.zeros([k], f64),
                     norm_max=tf.zeros([k], tf.float32), clipped=tf.zeros([k], tf.int32),
                     dead_at=tf.fill([k], tf.constant(-1, tf.int32)))
        norms = tf.TensorArray(tf.float32, size=n_steps)
        for s in tf.range(n_steps):
            idx = tf.slice(order, tf.stack([0, s * B]), [-1, B])
            valid = s * B + tf.range(B) < n
            size = tf.minimum(B, n - s * B)
            count = tf.cast(size, tf.float32)
            iteration = first_step + s
            variables, slots, loss, acc, norm, acted, finite = self._train_step(
                variables, slots, iteration, tf.gather(x, idx), tf.gather(y, idx), valid, count, lr,
                clipnorm, global_clipnorm, clipvalue)
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
            norms = norms.write(s, norm)
            alive = alive & finite
        return variables, slots, alive, stats, norms.stack()


@functools.lru_cache(maxsize=64)
def program(shape: ProgramShape) -> Program:
    """Compiled programs live as long as the worker: later batches of the same group reuse them."""
    return Program(shape)


# ---------------------------------------------------------------------------------------------
# How many runs one program holds.


def _available_host_memory() -> int:
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


def _gpu_free_memory() -> int | None:
    """Bytes TensorFlow may still allocate on the first GPU, or None on a CPU worker."""
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    from tensorflow.python.client import device_lib

    limit = next(d.memory_limit for d in device_lib.list_local_devices() if d.device_type == "GPU")
    used = tf.config.experimental.get_memory_info("GPU:0")["current"]
    return max(limit - used, 0)


def bytes_per_run(arch: Architecture, batch_size: int, n: int, optimizer: str) -> int:
    """A generous estimate of one run's share of a program's memory, in bytes (float32).

    Weights, gradients, optimizer slots, their updated copies and the update's temporaries
    (about 8 + 2 x slots copies of the weights), the step's activations and their gradients
    (4 copies of every layer's output, plus the gathered batch), the run's batch order, and
    its share of the initial evaluation on the whole training set (done in slices)."""
    widths = arch.shapes[0][0] + sum(o for _, o in arch.shapes)
    floats = (8 + 2 * len(SLOTS[optimizer])) * arch.n_params + 4 * batch_size * widths + n
    return 4 * floats


def population_size(arch: Architecture, batch_size: int, n: int, optimizer: str,
                    max_k: int | None = None) -> int:
    """K for this group on this worker: the device's useful maximum, bounded by its free memory."""
    per_run = bytes_per_run(arch, batch_size, n, optimizer)
    gpu_free = _gpu_free_memory()
    if gpu_free is not None:
        k = min(GPU_MAX_K, int(GPU_MEMORY_FRACTION * gpu_free) // per_run)
    else:
        k = min(CPU_MAX_K, int(CPU_MEMORY_FRACTION * _available_host_memory()) // per_run)
    if max_k is not None:
        k = min(k, max_k)
    return max(k, 1)


# ---------------------------------------------------------------------------------------------
# The engine.


def _split(items: list, k: int) -> list[list]:
    """`items` in ceil(len / k) nearly equal parts (equal parts keep one compiled shape busy)."""
    parts = -(-len(items) // k)
    size = -(-len(items) // parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def pad_last_batch(order: np.ndarray, batch_size: int) -> np.ndarray:
    """[K, n] row indices -> [K, steps x batch_size]: the partial last batch repeats its own rows.

    >>> pad_last_batch(np.array([[5, 6, 7, 8, 9]]), 2).tolist()
    [[5, 6, 7, 8, 9, 9]]
    """
    n = order.shape[1]
    last = n - n % batch_size if n % batch_size else n
    missing = (-n) % batch_size
    if not missing:
        return order
    fill = np.resize(order[:, last:].T, (missing, order.shape[0])).T
    return np.concatenate([order, fill], axis=1)


class PopulationEngine:
    """Trains runs in groups of K, one compiled program per group shape (see the module docstring).

    `jit` compiles the epoch with XLA (default: on; `sweep bench` measures both); `max_k` caps K."""

    name = "population"

    def __init__(self, jit: bool = True, max_k: int | None = None):
        self.jit, self.max_k = jit, max_k

    def train(self, study: Study, runs: Sequence[Run]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException | None] = [None] * len(runs)
        groups: dict[tuple, list[int]] = {}
        on_keras: list[int] = []
        for i, run in enumerate(runs):
            try:
                self.check(study, run)
                groups.setdefault(group_key(study, run.config), []).append(i)
            except Unsupported:
                on_keras.append(i)
        if on_keras:
            from .keras_engine import KerasEngine

            for i, outcome in zip(on_keras, KerasEngine().train(study, [runs[i] for i in on_keras])):
                results[i] = outcome
        for members in groups.values():
            arch, _ = initial_model(study, runs[members[0]].config, runs[members[0]].seed)
            config = runs[members[0]].config
            n = len(example_data(study.example, study.data_seed, "none")[0])
            k = population_size(arch, config.batch_size, n, config.optimizer, self.max_k)
            for part in _split(members, k):
                for i, outcome in zip(part, self._train_fitting(study, [runs[i] for i in part])):
                    results[i] = outcome
        return results  # type: ignore[return-value]

    @staticmethod
    def check(study: Study, run: Run) -> None:
        """Raise Unsupported when this engine cannot train the run exactly as Keras would."""
        c = run.config
        if study.example not in EXAMPLES:
            raise Unsupported(f"{study.example}: user builders run on the keras engine")
        if c.optimizer not in SLOTS:
            raise Unsupported(f"optimizer {c.optimizer!r}")
        if c.loss not in KERAS_LOSSES and c.loss not in ("handwritten", "handwritten_clipped"):
            raise Unsupported(f"loss {c.loss!r}")
        initial_model(study, c, run.seed)  # raises Unsupported for layers it cannot express

    def _train_fitting(self, study: Study, runs: list[Run]) -> list[Outcome | BaseException]:
        """Train one population; if it runs out of memory, train its halves instead."""
        import tensorflow as tf

        try:
            return train_population(study, runs, jit=self.jit)
        except tf.errors.ResourceExhaustedError as exc:
            if len(runs) == 1:
                return [exc]
            half = len(runs) // 2
            return self._train_fitting(study, runs[:half]) + self._train_fitting(study, runs[half:])


def train_population(study: Study, runs: Sequence[Run], jit: bool = True) -> list[Outcome]:
    """Train runs of one group in lockstep; returns their outcomes in order."""
    import tensorflow as tf

    from .plateau import Plateau

    started = time.perf_counter()
    K = len(runs)
    configs = [r.config for r in runs]
    c0 = configs[0]
    models = [initial_model(study, c, r.seed) for c, r in zip(configs, runs)]
    arch = models[0][0]
    variables = [tf.constant(np.stack([w[i] for _, w in models])) for i in range(len(models[0][1]))]
    slots = {name: [tf.zeros_like(v) for v in variables] for name in SLOTS[c0.optimizer]}

    # Every scaler a run asks for gets its own copy of the data; a run's rows start at its offset.
    scalers = sorted({c.scaler for c in configs})
    data = [example_data(study.example, study.data_seed, s) for s in scalers]
    n = len(data[0][0])
    x = tf.constant(np.concatenate([d[0] for d in data]).astype(np.float32))
    y = tf.constant(np.concatenate([d[1] for d in data]).astype(np.float32))
    offset = np.array([scalers.index(c.scaler) * n for c in configs], dtype=np.int32)

    kinds = frozenset(k for k in ("clipnorm", "global_clipnorm", "clipvalue")
                      if any(getattr(c, k) is not None for c in configs))
    prog = program(ProgramShape(arch, c0.loss, c0.optimizer, c0.batch_size, n, kinds, jit))

    def per_run(axis: str) -> tf.Tensor:
        return tf.constant(np.array([getattr(c, axis) or 0.0 for c in configs], dtype=np.float32))

    clipnorm, global_clipnorm, clipvalue = per_run("clipnorm"), per_run("global_clipnorm"), per_run("clipvalue")

    # l0 on the whole training set, a slice of runs at a time (each needs its own n x width activations).
    loss0, acc0 = [], []
    rows = np.arange(n, dtype=np.int32)
    per_slice = max(1, int(64e6 // (4 * n * (arch.shapes[0][0] + sum(o for _, o in arch.shapes)))))
    for a in range(0, K, per_slice):
        b = min(K, a + per_slice)
        xs = tf.gather(x, offset[a:b, None] + rows)
        ys = tf.gather(y, offset[a:b, None] + rows)
        l, acc = prog.initial([v[a:b] for v in variables], xs, ys)
        loss0.append(l.numpy())
        acc0.append(acc.numpy())
    l0, a0 = np.concatenate(loss0), np.concatenate(acc0)

    outcomes = [Outcome(initial_loss=float(l0[k]), initial_accuracy=float(a0[k]), engine="population")
                for k in range(K)]
    alive = np.isfinite(l0)
    for k in np.flatnonzero(~alive):
        outcomes[k].first_nonfinite_step = 0
    lr = np.array([c.learning_rate for c in configs], dtype=np.float32)
    plateaus = [Plateau(**PLATEAU, min_delta=PLATEAU_MIN_DELTA, cooldown=PLATEAU_COOLDOWN)
                if c.schedule == "plateau" else None for c in configs]
    norms: list[list[np.ndarray]] = [[] for _ in range(K)]
    # Wall time: setup is shared by all runs, an epoch by the runs still training in it.
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
        order = np.stack([offset[k] + perms[runs[k].seed] for k in range(K)]).astype(np.int32)
        order = pad_last_batch(order, B)
        variables, slots, alive_t, stats, step_norms = prog.epoch(
            variables, slots, alive_t, tf.constant(steps_done, tf.int32), tf.constant(order), x, y,
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
