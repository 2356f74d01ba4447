"""The compiled program of one group of runs: the initial evaluation and one whole epoch.

A program serves the runs that share an example, batch size, loss and optimizer kind (those
change its ops or shapes); `ProgramShape` names everything else its trace depends on. One
trace serves every population size K and batch size, and XLA compiles it once per (K, batch
size); `program` keeps compiled programs for the life of the worker, and XLA's compile cache
(`sweep.engines.xla`) keeps them for the next process.
An epoch is one `tf.while_loop` over `step.Step`, with the keras engine's per-epoch
bookkeeping (`tally`) done inside the compiled loop, so the host sees one call per epoch::

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import ProgramShape, initial_model, program
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"', "d.toml")
    >>> arch, _ = initial_model(study, study.plan()[0].config, seed=0)
    >>> shape = ProgramShape((arch,), "binary_crossentropy", "adam", 1000, frozenset(), jit=True)
    >>> program(shape) is program(shape)
    True
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable, Hashable, TypeVar

from .. import xla
from .model import Architecture, Graph
from .step import Step, slot_names

# XLA's flags and its compile cache are set up before TensorFlow's first op (`sweep.engines.xla`).
xla.configure()


@dataclass(frozen=True)
class ProgramShape:
    """Everything a traced program depends on but K and the batch size; equal shapes share one
    trace, which XLA compiles once per (K, batch size)."""

    archs: tuple[Architecture | Graph, ...]  # one per activation the program serves; a run's `choice` picks it
    loss: str
    optimizer: str
    n: int  # training-set size
    clip_kinds: frozenset
    jit: bool
    momentum: bool = False  # SGD runs with momentum: the momentum slot and Keras's momentum update

    def key(self) -> str:
        """What the program is, in words that are the same in every process (activation functions
        by their qualified names, not their addresses): `xla.stable_names` numbers its
        trace from it."""
        return repr(([a.key() for a in self.archs], self.loss, self.optimizer, self.n, sorted(self.clip_kinds), self.jit)
                    + ((True,) if self.momentum else ()))


def tally(stats: dict, alive, finite, acted, loss, acc, norm, size, iteration) -> dict:
    """The keras engine's bookkeeping of one step: a run still alive adds the step's loss and
    accuracy (weighted by the batch's real samples) and its gradient norm to its epoch's; the
    step that turned non-finite still counts, and records `dead_at`."""
    import tensorflow as tf

    f64 = tf.float64
    w = tf.cast(size, f64)
    return dict(
        loss_sum=tf.where(alive, stats["loss_sum"] + tf.cast(loss, f64) * w, stats["loss_sum"]),
        acc_sum=tf.where(alive, stats["acc_sum"] + tf.cast(acc, f64) * w, stats["acc_sum"]),
        seen=tf.where(alive, stats["seen"] + w, stats["seen"]),
        norm_max=tf.where(alive, tf.where(tf.math.is_finite(norm), tf.maximum(stats["norm_max"], norm), norm),
                          stats["norm_max"]),
        clipped=stats["clipped"] + tf.cast(alive & finite & acted, tf.int32),
        dead_at=tf.where(alive & ~finite, iteration, stats["dead_at"]),
    )


class Program:
    """The compiled functions of one group: `initial` (l0 and the initial accuracy) and `epoch`.

    Every step of an epoch has one shape: the partial last batch (1000 samples in batches of 32
    leave 8) is padded to the batch size with repeats of its own samples, which the loss and
    accuracy leave out, so padding adds no value the batch does not already hold and an epoch
    is one loop over one step body (one body to trace and compile, not two)."""

    def __init__(self, shape: ProgramShape):
        import tensorflow as tf

        self.shape = shape
        self.step = Step(shape.archs, shape.loss, shape.optimizer, shape.clip_kinds, shape.momentum)
        # Input signatures with None for K and the batch size: one trace serves them all, and l0's
        # rounding does not depend on which slice of runs happened to be evaluated first.
        arch = shape.archs[0]
        theta = [tf.TensorSpec([None, *v], tf.float32) for v in arch.variable_shapes]
        state = [tf.TensorSpec([None, *v], d) for v, d in zip(arch.state_shapes, arch.state_dtypes)]
        per_run = tf.TensorSpec([None], tf.float32)
        x = tf.TensorSpec([None, *arch.input_shape], tf.float32)
        y = tf.TensorSpec([None, *arch.output_shape], tf.float32)
        choice = tf.TensorSpec([None], tf.int32)
        self.initial = tf.function(self._initial, autograph=False, input_signature=[
            theta, state, tf.TensorSpec([None, None, *arch.input_shape], tf.float32),
            tf.TensorSpec([None, None, *arch.output_shape], tf.float32), choice])
        self.epoch = tf.function(self._epoch, jit_compile=shape.jit, autograph=False, input_signature=[
            theta, state, {name: theta for name in slot_names(shape.optimizer, shape.momentum)},
            tf.TensorSpec([None], tf.bool), tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None, None], tf.int32), x,
            y, choice, per_run, per_run, per_run, per_run, per_run, tf.TensorSpec([None], tf.bool)])
        # Traced now, under names that are the same in every process, so that an executable
        # XLA compiled for it in another process is found in the compile cache; and before any
        # thread calls them, since a Keras model traces through shared layer objects.
        with xla.stable_names(shape.key()):
            self.epoch.get_concrete_function()
        self.initial.get_concrete_function()
        self.compiled: set[tuple[int, int]] = set()

    def run_epoch(self, theta, state, slots, alive, first_step, order, *rest):
        """`epoch` (see `_epoch`); the first call for each (K, batch size) compiles, and the cache
        entry XLA wrote for it is sealed (`xla.seal`) once it has run."""
        out = self.epoch(theta, state, slots, alive, first_step, order, *rest)
        shape = tuple(order.shape[::2])
        if shape not in self.compiled:
            self.compiled.add(shape)
            d = xla.active()
            if d is not None and self.shape.jit:
                xla.seal(d)
        return out

    def _initial(self, theta: list, state: list, x, y, choice):
        """l0 and the initial accuracy of every run on its whole training set x [K, n, ...] in
        inference mode, as `model(x, training=False)`; `theta`: the stacked variables, `state` the
        non-trainable ones; `choice` [K]: each run's activation (`step.forward`)."""
        import tensorflow as tf

        losses, accuracies, _ = self.step.evaluate(theta, state, x, y, choice, training=False)
        n = tf.cast(tf.shape(x)[1], tf.float32)
        return tf.reduce_sum(losses, axis=1) / n, tf.reduce_sum(accuracies, axis=1) / n

    def _epoch(self, theta, state, slots, alive, first_step, order, x, y, choice, lr, clipnorm, global_clipnorm,
               clipvalue, momentum, nesterov):
        """Train every run through one epoch. `order` [K, steps, B] holds each run's row indices
        into x, y in its batch order, the last batch padded; `first_step` is the global index of
        the epoch's first step. Returns the new weights, state and slots and the epoch's per-run
        telemetry.

        A model whose training step depends on the batch as a whole (BatchNormalization's batch
        statistics, the shape of a Dropout mask) trains its partial last batch as a step of its
        own, of its own size, after the loop, as Keras does: padding would change it."""
        import tensorflow as tf

        # Known when XLA compiles, not when the function is traced (one trace, every batch size).
        n_steps, B = tf.shape(order)[1], tf.shape(order)[2]
        n = self.shape.n
        k = tf.shape(alive)[0]
        f64 = tf.float64
        stats = dict(loss_sum=tf.zeros([k], f64), acc_sum=tf.zeros([k], f64), seen=tf.zeros([k], f64),
                     norm_max=tf.zeros([k], tf.float32), clipped=tf.zeros([k], tf.int32),
                     dead_at=tf.fill([k], tf.constant(-1, tf.int32)))
        # A tensor updated in place, not a TensorArray: a loop that carries a TensorArray is
        # lowered to XLA twice (once to learn the array's shape), 0.5 s per program.
        norms = tf.zeros([n_steps, k], tf.float32)

        def step_on(s, idx, valid, size, theta, state, slots, alive, stats, norms):
            iteration = first_step + s
            theta, state, slots, loss, acc, norm, acted, finite = self.step(
                theta, state, slots, iteration, tf.gather(x, idx), tf.gather(y, idx), valid,
                tf.cast(size, tf.float32), choice, lr, clipnorm, global_clipnorm, clipvalue, momentum, nesterov)
            stats = tally(stats, alive, finite, acted, loss, acc, norm, size, iteration)
            return theta, state, slots, alive & finite, stats, tf.tensor_scatter_nd_update(norms, [[s]], [norm])

        def one_step(s, *carry):
            idx = tf.gather(order, s, axis=1)
            return (s + 1, *step_on(s, idx, s * B + tf.range(B) < n, tf.minimum(B, n - s * B), *carry))

        exact_tail = self.shape.archs[0].exact_batches
        loop_steps = n // B if exact_tail else n_steps
        # An explicit while loop: the function is traced without AutoGraph, which traces faster.
        _, *carry = tf.while_loop(lambda s, *_: s < loop_steps, one_step,
                                  (tf.constant(0), theta, state, slots, alive, stats, norms))
        if exact_tail:
            # n and B are known when XLA compiles, so the tail's size is a constant there.
            tail = n - loop_steps * B
            carry = tf.cond(tail > 0, lambda: step_on(loop_steps, order[:, loop_steps, :tail], tf.range(tail) >= 0,
                                                      tail, *carry), lambda: tuple(carry))
        return tuple(carry)


T = TypeVar("T")


def kept(build: Callable[[Hashable], T], maxsize: int = 64) -> Callable[[Hashable], T]:
    """`build(key)` once per key for the life of the worker (the last `maxsize` keys), however
    many threads ask at once. `functools.lru_cache` builds again for a thread that misses while
    another is building, and the engine's threads start together: they traced the same
    program twice at the start of every sweep::

        >>> import threading, time
        >>> calls = []
        >>> @kept
        ... def slow(key):
        ...     calls.append(key); time.sleep(0.05); return object()
        >>> got = []
        >>> threads = [threading.Thread(target=lambda: got.append(slow("a"))) for _ in range(4)]
        >>> for t in threads: t.start()
        >>> for t in threads: t.join()
        >>> len(calls), len({id(g) for g in got})
        (1, 1)
    """
    built: dict = {}
    locks: dict = {}
    guard = threading.Lock()

    @functools.wraps(build)
    def get(key):
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            if key not in built:
                built[key] = build(key)
                if len(built) > maxsize:
                    oldest = next(iter(built))
                    del built[oldest]
                    with guard:
                        locks.pop(oldest, None)
            return built[key]

    def cache_clear() -> None:
        with guard:
            built.clear()
            locks.clear()

    get.cache_clear = cache_clear  # type: ignore[attr-defined]
    return get


@kept
def program(shape: ProgramShape) -> Program:
    """Compiled programs live as long as the worker: later batches of the same group reuse them."""
    return Program(shape)
