"""Training one population: K runs of one group in lockstep, from initial weights to outcomes.

`train_population` reads as the run does: `prepare` stacks the runs' initial weights and
gathers their data, `initial_evaluation` measures l0 on the whole training set, and
`train_epochs` calls the compiled epoch once per epoch and keeps the host's per-run books:
each epoch's telemetry, the step where a run turned non-finite (it stops there; what its
weights hold afterwards is never read), and `ReduceLROnPlateau`'s rules (`plateau.Plateau`)
at every epoch end; with `[telemetry] sharpness` on, `record_curvature` measures the live
runs at initialisation and after every N-th epoch (`curvature`). Batches follow `sweep.engines.batch_order`; every step has the batch
size, the partial last batch padded with its own rows (`pad_last_batch`)::

    >>> pad_last_batch(np.array([[5, 6, 7, 8, 9]]), 2).tolist()
    [[5, 6, 7, 8, 9, 9]]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ...catalog import PLATEAU
from ...spec import CLIP_AXES, Run, Study
from .. import Outcome, batch_order, data_key, run_data
from .curvature import measure_population
from .model import initial_model
from .plateau import Plateau
from .program import Program, ProgramShape, program
from .step import slot_names


def pad_last_batch(order: np.ndarray, batch_size: int) -> np.ndarray:
    """[K, n] row indices -> [K, steps x batch_size]: the partial last batch repeats its own rows."""
    n = order.shape[1]
    missing = (-n) % batch_size
    if not missing:
        return order
    fill = np.resize(order[:, n - n % batch_size:].T, (missing, order.shape[0])).T
    return np.concatenate([order, fill], axis=1)


@dataclass
class Population:
    """One population's tensors, ready to train. Each data set the runs train on (one per scaler,
    `sweep.engines.data_key`) has its own copy in x, y, one after another; run k's rows start
    at `offset[k]`."""

    runs: Sequence[Run]
    program: Program
    theta: list  # each variable stacked over the runs, [K, *shape], in the model's order
    state: list  # each non-trainable variable stacked likewise (none for a Dense stack)
    slots: dict  # the optimizer's slots, one list like theta per slot name
    x: Any
    y: Any
    offset: np.ndarray  # [K] int32
    n: int  # training-set size
    choice: Any  # [K] int32: each run's activation, an index into the program's architectures
    hyper: tuple  # [K] each: a threshold per clipping kind of CLIP_AXES (0: unused), SGD's momentum and Nesterov flag


def prepare(study: Study, runs: Sequence[Run], jit: bool, clip_kinds: frozenset | None,
            activations: tuple[str, ...] | None) -> Population:
    """The runs' stacked initial weights, zero slots, data and program."""
    import tensorflow as tf

    configs = [r.config for r in runs]
    c0 = configs[0]
    models = [initial_model(study, c, r.seed) for c, r in zip(configs, runs)]
    arch = models[0][0]
    # Each variable stacked over the runs, [K, *shape]: the program's ops read them as they are.
    theta, state = arch.stack([w for _, w in models])
    theta, state = [tf.constant(v) for v in theta], [tf.constant(v) for v in state]
    momentum = c0.optimizer == "sgd" and c0.momentum != 0  # a program's runs all have momentum, or none
    slots = {name: [tf.zeros_like(v) for v in theta] for name in slot_names(c0.optimizer, momentum)}

    keys = sorted({data_key(study, c) for c in configs})
    first = {data_key(study, c): c for c in reversed(configs)}
    data = [run_data(study, first[key]) for key in keys]
    n = len(data[0][0])
    x = tf.constant(np.concatenate([d[0] for d in data]).astype(np.float32))
    y = tf.constant(np.concatenate([d[1] for d in data]).astype(np.float32))
    offset = np.array([keys.index(data_key(study, c)) * n for c in configs], dtype=np.int32)

    if clip_kinds is None:
        clip_kinds = frozenset(a for a in CLIP_AXES if any(getattr(c, a) is not None for c in configs))
    if activations is None:
        activations = tuple(sorted({c.activation for c in configs}))
    archs = tuple(initial_model(study, replace(c0, activation=a), runs[0].seed)[0] for a in activations)
    choice = tf.constant(np.array([activations.index(c.activation) for c in configs], dtype=np.int32))
    prog = program(ProgramShape(archs, c0.loss, c0.optimizer, n, clip_kinds, jit and all(a.jit for a in archs),
                                momentum))
    hyper = tuple(tf.constant(np.array([getattr(c, axis) or 0.0 for c in configs], dtype=np.float32))
                       for axis in CLIP_AXES)
    hyper += (tf.constant(np.array([c.momentum for c in configs], dtype=np.float32)),
              tf.constant(np.array([c.nesterov for c in configs], dtype=bool)))
    return Population(runs, prog, theta, state, slots, x, y, offset, n, choice, hyper)


def initial_evaluation(p: Population) -> tuple[np.ndarray, np.ndarray]:
    """l0 and the initial accuracy of every run on the whole training set, [K] each.

    They depend on the initial weights (activation, seed) and the data (scaler) only, so they
    are evaluated once per distinct triple, some at a time (each needs n x width activations)."""
    import tensorflow as tf

    triple = [(r.config.activation, r.seed, r.config.scaler) for r in p.runs]
    first = {t: k for k, t in reversed(list(enumerate(triple)))}
    distinct = np.array(sorted(first.values()), dtype=np.int32)
    rows = np.arange(p.n, dtype=np.int32)
    per_slice = max(1, int(64e6 // (4 * p.n * p.program.shape.archs[0].widths)))
    initial = []
    for a in range(0, len(distinct), per_slice):
        some = distinct[a:a + per_slice]
        initial.append(p.program.initial([tf.gather(v, some) for v in p.theta], [tf.gather(v, some) for v in p.state],
                                         tf.gather(p.x, p.offset[some, None] + rows),
                                         tf.gather(p.y, p.offset[some, None] + rows), tf.gather(p.choice, some)))
    of_run = np.searchsorted(distinct, [first[t] for t in triple])
    return (np.concatenate([l.numpy() for l, _ in initial])[of_run],
            np.concatenate([a.numpy() for _, a in initial])[of_run])


def train_epochs(study: Study, p: Population, outcomes: list[Outcome], alive: np.ndarray,
                 wall: np.ndarray) -> list[list[np.ndarray]]:
    """Train epoch after epoch until the study's epochs are done or no run is alive. Appends
    each live run's epoch telemetry to its outcome and updates `alive` and `wall` (an epoch's
    time shared by the runs still training in it) in place; returns each run's step gradient
    norms, one array per epoch it trained."""
    import tensorflow as tf

    K, B = len(p.runs), p.runs[0].config.batch_size
    lr = np.array([r.config.learning_rate for r in p.runs], dtype=np.float32)
    plateaus = [Plateau(**PLATEAU) if r.config.schedule == "plateau" else None for r in p.runs]
    norms: list[list[np.ndarray]] = [[] for _ in range(K)]
    n_steps = -(-p.n // B)
    steps_done = 0
    theta, state, slots, alive_t = p.theta, p.state, p.slots, tf.constant(alive)
    for epoch in range(1, study.epochs + 1):
        live = np.flatnonzero(alive)
        if not len(live):
            break
        t0 = time.perf_counter()
        perms = {s: batch_order(s, epoch, p.n) for s in {r.seed for r in p.runs}}
        order = np.stack([p.offset[k] + perms[p.runs[k].seed] for k in range(K)]).astype(np.int32)
        order = pad_last_batch(order, B).reshape(K, n_steps, B)
        theta, state, slots, alive_t, stats, step_norms = p.program.run_epoch(
            theta, state, slots, alive_t, tf.constant(steps_done, tf.int32), tf.constant(order), p.x, p.y, p.choice,
            tf.constant(lr), *p.hyper)
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
        if study.sharpness is not None and study.sharpness.due(epoch):
            record_curvature(study, p, outcomes, theta, state, slots, steps_done, np.flatnonzero(alive), epoch)
        wall[live] += (time.perf_counter() - t0) / len(live)
    return norms


def record_curvature(study: Study, p: Population, outcomes: list[Outcome], theta: list, state: list, slots: dict,
                     steps: int, live: np.ndarray, epoch: int) -> None:
    """The sharpness of the `live` runs after `epoch` (0: the initialised model) into their outcomes."""
    sharp, precond = measure_population(p, theta, state, slots, steps, live, study.sharpness, initial=epoch == 0)
    for k in live:
        outcomes[k].sharpness[epoch] = float(sharp[k])
        if p.runs[k].config.optimizer != "sgd":
            outcomes[k].precond_sharpness[epoch] = float(precond[k])


def train_population(study: Study, runs: Sequence[Run], jit: bool = True, clip_kinds: frozenset | None = None,
                     activations: tuple[str, ...] | None = None) -> list[Outcome]:
    """Train the runs of one group in lockstep; returns their outcomes in order. `clip_kinds` and
    `activations` (the program's; by default the runs') choose the program."""
    started = time.perf_counter()
    K = len(runs)
    p = prepare(study, runs, jit, clip_kinds, activations)
    l0, a0 = initial_evaluation(p)
    outcomes = [Outcome(initial_loss=float(l0[k]), initial_accuracy=float(a0[k]), engine="population")
                for k in range(K)]
    alive = np.isfinite(l0)
    for k in np.flatnonzero(~alive):
        outcomes[k].first_nonfinite_step = 0
    if study.sharpness is not None:
        record_curvature(study, p, outcomes, p.theta, p.state, p.slots, 0, np.flatnonzero(alive), 0)
    # Wall time: the set-up is shared by all runs, an epoch by the runs still training in it.
    wall = np.full(K, (time.perf_counter() - started) / K)
    norms = train_epochs(study, p, outcomes, alive, wall)
    for k, o in enumerate(outcomes):
        o.grad_norms = np.concatenate(norms[k]).astype(np.float64) if norms[k] else np.zeros(0)
        o.wall_seconds = float(wall[k])
    return outcomes
