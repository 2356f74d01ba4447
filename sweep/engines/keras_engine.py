"""The reference engine: one run at a time with the real Keras model, optimizer and loss.

Training is Keras's own arithmetic: the model's forward pass, the compiled
loss, `optimizer.apply_gradients` (which does the clipping), and Keras's
`ReduceLROnPlateau` callback driven at every epoch end. The loop is written
out only to see what `model.fit` hides: the unclipped gradient norm at every
step, whether clipping acted, and the first step at which anything turned
non-finite (training stops there). The epoch loss and accuracy are what
`model.fit` reports: batch means weighted by batch size. A mixed-precision run builds its
model under its Keras dtype policy and, for mixed_float16, trains through Keras's dynamic
`LossScaleOptimizer` unless its loss scaling is off: a batch whose scaled gradients overflow
is a skipped update (Keras halves the scale), counted in `skipped_steps`, not a non-finite
run; its gradient norm and clipping are read unscaled. With `[telemetry]
sharpness` on, the curvature of the whole training set's loss is measured at
initialisation and after every N-th epoch (`curvature`, `sweep.engines.sharpness`).

    >>> from sweep.spec import parse
    >>> from sweep.engines.keras_engine import KerasEngine
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> [outcome] = KerasEngine().train(study, study.plan())
    >>> len(outcome.epoch_loss)
    1
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..catalog import PLATEAU
from ..spec import Config, Run, Study
from . import Outcome, batch_order, make_optimizer, problem


def objective(model, loss):
    """What `model.fit` differentiates (`Trainer.compute_loss`): the data loss plus the model's
    regularization and `add_loss` losses, each summed to a scalar, added as one sum. The sweep
    reports and judges the data loss."""
    from keras import ops

    if not model.losses:
        return loss
    return ops.sum([loss, *(ops.cast(ops.sum(extra), loss.dtype) for extra in model.losses)])


def clipping_acted(config: Config, grads, global_norm):
    """True when the optimizer's clipping changed this step's gradients (Keras's own tests; an
    Embedding's `tf.IndexedSlices` by its slices, as Keras's norms and clip_by_value take them)."""
    import tensorflow as tf

    grads = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
    if config.clipnorm is not None:
        return tf.reduce_any(tf.stack([tf.norm(g) > config.clipnorm for g in grads]))
    if config.global_clipnorm is not None:
        return global_norm > config.global_clipnorm
    if config.clipvalue is not None:
        return tf.reduce_any(tf.stack([tf.reduce_any(tf.abs(g) > config.clipvalue) for g in grads]))
    return tf.constant(False)


def curvature(model, loss_fn, x, y, optimizer, kind: str, iterations: int):
    """The sharpness probe of one Keras run: `probe(initial)` returns λ_max(H) and λ_max(P⁻¹H)
    ([1] each; the second 0 for SGD) of the loss on (x, y) at the model's current weights, P the
    optimizer's current preconditioner, or at initialisation (`initial=True`) the one its first
    update would form from the gradient on (x, y) (`sweep.engines.sharpness.first_step_slots`)."""
    import tensorflow as tf

    from .sharpness import first_step_slots, measure, preconditioner, start_vector

    variables = model.trainable_variables
    non_trainable = [v.value for v in model.non_trainable_variables]
    v0 = [tf.constant(a) for a in start_vector([tuple(v.shape) for v in variables], 1)]
    xs, ys = tf.constant(x), tf.constant(y)
    hyper = {name: getattr(optimizer, name, None) for name in ("beta_1", "beta_2", "rho", "epsilon")}

    def loss_of(theta):
        pred, _ = model.stateless_call([t[0] for t in theta], non_trainable, xs, training=False)
        return tf.reshape(loss_fn(ys, pred), [1])

    def slot(name):
        # Keras keeps the slots as lists in the order of its variables (`_get_variable_index`).
        return [getattr(optimizer, name)[optimizer._get_variable_index(v)].value[None] for v in variables]

    @tf.function
    def probe(initial: bool):
        theta = [tf.convert_to_tensor(v.value)[None] for v in variables]
        p = None
        if kind in ("adam", "rmsprop") and initial:
            with tf.GradientTape() as tape:
                tape.watch(theta)
                total = tf.reduce_sum(loss_of(theta))
            p = preconditioner(kind, first_step_slots(kind, tape.gradient(total, theta), hyper), 1, hyper)
        elif kind == "adam":
            p = preconditioner(kind, {"v": slot("_velocities")}, optimizer.iterations, hyper)
        elif kind == "rmsprop":
            p = preconditioner(kind, {"velocity": slot("_velocities")}, optimizer.iterations, hyper)
        return measure(loss_of, theta, v0, iterations, p)

    return probe


def as_float32(pred):
    """A mixed-precision model's predictions as the loss sees them: cast to float32, as Keras's
    compiled losses cast them (a float32 prediction is passed through as it is)."""
    import tensorflow as tf

    return pred if pred.dtype == tf.float32 else tf.cast(pred, tf.float32)


def record_curvature(out: Outcome, epoch: int, probe, kind: str, initial: bool = False) -> None:
    sharp, precond = probe(initial)
    out.sharpness[epoch] = float(sharp[0])
    if kind != "sgd":
        out.precond_sharpness[epoch] = float(precond[0])


def train_one(study: Study, config: Config, seed: int) -> Outcome:
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    p = problem(study, config, seed)
    model, x, y = p.model, p.x, p.y
    optimizer = make_optimizer(config)
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # compile gives the callback its model.optimizer; training below is ours. The optimizer is
    # already wrapped for loss scaling where Keras's compile would wrap it (`make_optimizer`).
    model.compile(optimizer=optimizer, loss=p.loss_fn, auto_scale_loss=False)
    variables = model.trainable_variables
    optimizer.build(variables)
    accuracy_fn = keras.metrics.binary_accuracy if p.accuracy == "binary" else keras.metrics.categorical_accuracy

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            pred = as_float32(model(xb, training=True))
            loss = p.loss_fn(yb, pred)
            scaled = optimizer.scale_loss(objective(model, loss))  # without loss scaling: the objective
        grads = tape.gradient(scaled, variables)
        # What the update uses: the gradients unscaled by the scale before this step, which
        # LossScaleOptimizer applies only if every one is finite.
        applied = tf.constant(True)
        if scaling:
            applied = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
            grads_used = [g / optimizer.dynamic_scale for g in grads]
        else:
            grads_used = grads
        norm = tf.linalg.global_norm(grads_used)
        acted = clipping_acted(config, grads_used, norm)
        optimizer.apply_gradients(zip(grads, variables))
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
        return loss, tf.reduce_mean(accuracy_fn(yb, pred)), norm, acted, finite, applied

    pred0 = as_float32(model(x, training=False))
    out = Outcome(
        initial_loss=float(p.loss_fn(y, pred0)),
        initial_accuracy=float(np.mean(accuracy_fn(y, pred0))),
        engine="keras",
    )
    if not np.isfinite(out.initial_loss):
        out.first_nonfinite_step = 0
        out.wall_seconds = time.perf_counter() - started
        return out
    probe = None
    if study.sharpness is not None:
        rows = study.sharpness.rows(len(x))
        probe = curvature(model, p.loss_fn, x[:rows], y[:rows], optimizer, config.optimizer,
                          study.sharpness.iterations)
        record_curvature(out, 0, probe, config.optimizer, initial=True)

    plateau = None
    if config.schedule == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=0)
        plateau.set_model(model)
        plateau.on_train_begin()

    n, bs = len(x), config.batch_size
    norms, steps = [], 0
    if scaling:
        out.skipped_steps = 0
    for epoch in range(1, study.epochs + 1):
        lr = float(np.asarray(optimizer.learning_rate))
        order = batch_order(seed, epoch, n)
        loss_sum = acc_sum = 0.0
        seen, epoch_norm_max = 0, 0.0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            loss, acc, norm, acted, finite, applied = step(x[idx], y[idx])
            loss, norm, skipped = float(loss), float(norm), not bool(applied)
            loss_sum += loss * len(idx)
            acc_sum += float(acc) * len(idx)
            seen += len(idx)
            if not skipped:  # a skipped update has no gradient that acted: no norm, no clipping
                norms.append(norm)
                epoch_norm_max = max(epoch_norm_max, norm) if np.isfinite(norm) else norm
            if not (np.isfinite(loss) and (skipped or np.isfinite(norm)) and bool(finite)):
                out.first_nonfinite_step = steps
                break
            steps += 1
            if skipped:
                out.skipped_steps += 1
            else:
                out.clipped_steps += int(bool(acted))
        out.epoch_loss.append(loss_sum / seen)
        out.epoch_accuracy.append(acc_sum / seen)
        out.epoch_grad_norm_max.append(epoch_norm_max)
        out.epoch_learning_rate.append(lr)
        if out.first_nonfinite_step is not None:
            break
        if probe is not None and study.sharpness.due(epoch):
            record_curvature(out, epoch, probe, config.optimizer)
        if plateau is not None:
            plateau.on_epoch_end(epoch - 1, {"loss": out.epoch_loss[-1]})
    out.grad_norms = np.asarray(norms, dtype=np.float64)
    if scaling:
        out.final_loss_scale = float(optimizer.dynamic_scale.numpy())
    out.wall_seconds = time.perf_counter() - started
    return out


class KerasEngine:
    name = "keras"
    # One run at a time: the worker pool streams each run's row as it finishes, and a
    # per-run timeout stops just that run.
    batched = False

    def train(self, study: Study, runs: Sequence[Run]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException] = []
        for run in runs:
            try:
                results.append(train_one(study, run.config, run.seed))
            except Exception as exc:  # recorded as the run's `error` status by the caller
                results.append(exc)
        return results
