"""The sharpness probe of one population: `sweep.engines.sharpness` on the stacked weights, between epochs.

A program's runs share the example, loss and optimizer kind, so one compiled probe measures any
slice of them: the loss of every run on its whole training set (its own scaler's copy) is one
[K] vector, and one Hessian-vector product of its sum with a stacked [K, ...] vector is every
run's own product (the Hessian is block-diagonal over the runs). The probe is a function of its
own, called by `train` between epochs, so the training program's ops are the same with the
telemetry on or off. Live runs are measured in slices of one fixed size (the last padded with
repeats), so the probe compiles once per program, whatever the number of runs still alive::

    >>> slices(np.array([3, 5, 8]), 2).tolist()
    [[3, 5], [8, 8]]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ...spec import SharpnessTelemetry
from ..sharpness import first_step_slots, measure, preconditioner, start_vector
from .model import Architecture, Graph
from .program import kept
from .step import ADAM, RMSPROP, SLOTS, Step

HYPER = {"adam": ADAM, "rmsprop": RMSPROP, "sgd": {}}
# Bytes of activations a slice may hold; the forward-over-reverse product keeps a few copies of
# every layer's [runs, n, width] activations, so a slice is a few hundred MB at most.
SLICE_BYTES = 64e6


def slices(runs: np.ndarray, size: int) -> np.ndarray:
    """`runs` cut into rows of `size`, the last padded with repeats of its last run."""
    pad = (-len(runs)) % size
    return np.concatenate([runs, np.repeat(runs[-1:], pad)]).reshape(-1, size)


def slice_size(arch: Architecture | Graph, n: int, k: int) -> int:
    """Runs per slice: as many as SLICE_BYTES of float32 activations hold, at most k."""
    return int(max(1, min(k, SLICE_BYTES // (4 * n * arch.widths))))


@dataclass(frozen=True)
class ProbeShape:
    archs: tuple[Architecture | Graph, ...]
    loss: str
    optimizer: str
    iterations: int
    jit: bool  # the program's: XLA compiles the probe too


class Probe:
    """`initial(theta, state, x, y, choice)` and `current(theta, state, slots, steps, x, y, choice)`:
    per run λ_max(H) and λ_max(P⁻¹H) (0 for SGD), [K] each, of the loss on x [K, n, ...] in
    inference mode (the keras engine's probe calls the model with training=False)."""

    def __init__(self, shape: ProbeShape):
        import tensorflow as tf

        self.shape = shape
        self.traced: set[str] = set()
        self.step = Step(shape.archs, shape.loss, shape.optimizer, frozenset())
        arch = shape.archs[0]
        self.v0 = start_vector(list(arch.variable_shapes), 1)
        theta = [tf.TensorSpec([None, *v], tf.float32) for v in arch.variable_shapes]
        state = [tf.TensorSpec([None, *v], d) for v, d in zip(arch.state_shapes, arch.state_dtypes)]
        x = tf.TensorSpec([None, None, *arch.input_shape], tf.float32)
        y = tf.TensorSpec([None, None, *arch.output_shape], tf.float32)
        choice = tf.TensorSpec([None], tf.int32)
        self.initial = tf.function(self._initial, jit_compile=shape.jit, autograph=False,
                                   input_signature=[theta, state, x, y, choice])
        self.current = tf.function(self._current, jit_compile=shape.jit, autograph=False, input_signature=[
            theta, state, {name: theta for name in SLOTS[shape.optimizer]}, tf.TensorSpec([], tf.int32), x, y,
            choice])

    def _loss_of(self, state, x, y, choice):
        import tensorflow as tf

        def loss_of(theta):
            return tf.reduce_mean(self.step.evaluate(theta, state, x, y, choice, training=False)[0], axis=1)
        return loss_of

    def _start(self, theta):
        import tensorflow as tf

        k = tf.shape(theta[0])[0]
        return [tf.tile(tf.constant(v), tf.concat([[k], tf.ones([len(v.shape) - 1], tf.int32)], 0)) for v in self.v0]

    def _initial(self, theta, state, x, y, choice):
        import tensorflow as tf

        kind, hyper = self.shape.optimizer, HYPER[self.shape.optimizer]
        loss_of = self._loss_of(state, x, y, choice)
        p = None
        if kind != "sgd":
            with tf.GradientTape() as tape:
                tape.watch(theta)
                total = tf.reduce_sum(loss_of(theta))
            p = preconditioner(kind, first_step_slots(kind, tape.gradient(total, theta), hyper), 1, hyper)
        return measure(loss_of, theta, self._start(theta), self.shape.iterations, p)

    def _current(self, theta, state, slots, steps, x, y, choice):
        kind = self.shape.optimizer
        p = preconditioner(kind, slots, steps, HYPER[kind]) if kind != "sgd" else None
        return measure(self._loss_of(state, x, y, choice), theta, self._start(theta), self.shape.iterations, p)


# Populations train on threads side by side. Tracing forward-mode code goes through TensorFlow's
# process-wide table of per-op JVP functions, which two threads tracing at once corrupt ("OrderedDict
# mutated during iteration", seen with two probes tracing together), so first calls take turns;
# a traced function runs its graph without touching that table.
_TRACING = threading.Lock()


def call(pr: Probe, name: str, args: tuple):
    if name in pr.traced:
        return getattr(pr, name)(*args)
    with _TRACING:
        out = getattr(pr, name)(*args)
        pr.traced.add(name)
    return out


@kept
def probe(shape: ProbeShape) -> Probe:
    """Probes live as long as the worker, like the programs."""
    return Probe(shape)


def measure_population(p, theta: list, state: list, slots: dict, steps: int, live: np.ndarray,
                       telemetry: SharpnessTelemetry, initial: bool) -> tuple[np.ndarray, np.ndarray]:
    """λ_max(H) and λ_max(P⁻¹H) of the runs `live` of population `p` (`train.Population`) at the
    weights `theta` and slots after `steps` updates, on the loss of the training set's first
    `telemetry.rows` rows; [K] each, NaN for runs not measured and, for λ_max(P⁻¹H), for SGD."""
    import tensorflow as tf

    c0 = p.runs[0].config
    shape = p.program.shape
    # Under XLA, pfor writes a Keras graph's per-run values with XlaDynamicUpdateSlice, which has
    # no gradient for the forward-over-reverse product: a graph's probe runs without XLA.
    jit = shape.jit and not isinstance(shape.archs[0], Graph)
    pr = probe(ProbeShape(shape.archs, c0.loss, c0.optimizer, telemetry.iterations, jit))
    K = len(p.runs)
    sharp, precond = np.full(K, np.nan), np.full(K, np.nan)
    if not len(live):
        return sharp, precond
    rows = np.arange(telemetry.rows(p.n), dtype=np.int32)
    for some in slices(live.astype(np.int32), slice_size(p.program.shape.archs[0], len(rows), len(live))):
        args = ([tf.gather(v, some) for v in theta], [tf.gather(v, some) for v in state])
        if not initial:  # the preconditioner's slots (SGD's momentum is none)
            args += ({name: [tf.gather(v, some) for v in slots[name]] for name in SLOTS[c0.optimizer]},
                     tf.constant(steps, tf.int32))
        args += (tf.gather(p.x, p.offset[some, None] + rows), tf.gather(p.y, p.offset[some, None] + rows),
                 tf.gather(p.choice, some))
        s, q = call(pr, "initial" if initial else "current", args)
        sharp[some] = s.numpy()
        if c0.optimizer != "sgd":
            precond[some] = q.numpy()
    return sharp, precond
