"""The arithmetic of one training step of K runs at once, on stacked [K, ...] tensors.

Each of a population's weights, gradients and optimizer slots is one tensor per Keras variable
with the runs on its first axis ([K, fan-in, units] kernels, [K, units] biases); learning rates
and clipping thresholds are [K] vectors. Every op is batched over that axis (batched matmuls on
[K, B, D] activations, per-run reductions), so runs never mix: the gradient of run k's loss
reaches run k's weights only. No op combines runs, and values are selected with `tf.where`,
never masked by multiplication, so a run's NaN cannot leak into another run (no NaN * 0).

The arithmetic is Keras's, op for op: the Keras layers' own activation functions on
`matmul + bias` (`forward`), Keras's per-sample loss functions reduced as
`sum_over_batch_size` does (`per_sample_loss`, `masked_mean`), `BaseOptimizer`'s clipping
(`clip`: `clipnorm` per variable, `global_clipnorm`, `clipvalue`) and the optimizers'
`update_step` with Keras's default hyper-parameters (`update`: Adam's epsilon-hat form, SGD,
RMSprop). `Step` puts them together, with the finiteness test that stops a run::

    >>> import tensorflow as tf
    >>> theta = tf.constant([[1.0, -2.0], [1.0, -2.0]])  # one variable of two runs
    >>> g = tf.constant([[3.0, 4.0], [3.0, 4.0]])       # its gradient: norm 5 in each run
    >>> squares = tf.reduce_sum(tf.square(g), axis=1)[:, None]
    >>> off, on = tf.constant([0.0, 0.0]), tf.constant([0.0, 1.0])  # run 1 clips to norm 1
    >>> [g], acted, _ = clip([g], squares, tf.sqrt(squares[:, 0]), on, off, off, frozenset({"clipnorm"}))
    >>> g.numpy().tolist(), acted.numpy().tolist()
    ([[3.0, 4.0], [0.6000000238418579, 0.800000011920929]], [False, True])
    >>> theta, slots = update("sgd", theta, g, {}, tf.constant([0.5, 0.5]), iteration=0)
    >>> theta.numpy().tolist()
    [[-0.5, -4.0], [0.699999988079071, -2.4000000953674316]]
"""

from __future__ import annotations

from typing import Callable, Sequence

from ...catalog import make_loss
from .model import KERAS_LOSSES, Architecture, Graph, Unsupported, per_sample_accuracy, vectorized_map

# Keras's defaults for the optimizers the sweep builds (keras.optimizers.Adam(), SGD(), RMSprop()).
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
RMSPROP = {"rho": 0.9, "epsilon": 1e-7}
SLOTS = {"adam": ("m", "v"), "sgd": (), "rmsprop": ("velocity",)}
# SGD's slot when a population has momentum (Keras builds `momentums` only when momentum != 0):
# SLOTS["sgd"] + SGD_MOMENTUM_SLOTS, passed to `update` with the runs' momentum.
SGD_MOMENTUM_SLOTS = ("momentum",)


def slot_names(optimizer: str, momentum: bool) -> tuple[str, ...]:
    """The optimizer slots a program carries: SGD's momentum slot only where its runs have momentum."""
    return SLOTS[optimizer] + (SGD_MOMENTUM_SLOTS if momentum and optimizer == "sgd" else ())

WRITTEN_LOSSES = ("handwritten", "handwritten_clipped")


def per_run(value, rank: int):
    """A [K] per-run value shaped to broadcast over a [K, ...] variable of that rank."""
    import tensorflow as tf

    return tf.reshape(value, [-1] + [1] * (rank - 1))


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
        flat = vectorized_map(lambda t: written(t[0][None], t[1][None]),
                                 (tf.reshape(y, [-1, y.shape[-1]]), tf.reshape(pred, [-1, pred.shape[-1]])))
        return tf.reshape(flat, tf.shape(y)[:2])

    return per_sample


def accuracy_of(kind: str) -> Callable:
    """What metrics=["accuracy"] computes for every sample of every run, [K, B]."""
    import tensorflow as tf

    metric = per_sample_accuracy(kind)

    def accuracy(y, pred):
        values = metric(y, pred)
        return tf.reduce_mean(values, axis=list(range(2, len(values.shape)))) if len(values.shape) > 2 else values

    return accuracy


def masked_mean(values, valid, count):
    """Mean over the batch axis of [K, B] values where `valid` [B]; selected with `tf.where`, never
    multiplied by a mask, so a padded sample's non-finite value cannot leak in."""
    import tensorflow as tf

    return tf.reduce_sum(tf.where(valid[None, :], values, tf.zeros_like(values)), axis=1) / count


class Slices:
    """An Embedding table's gradient as Keras's optimizer receives it (`model.Lookup`): for every
    run, the gradient of each id looked up, `values` [K, N, D], and the `ids` [K, N] of the
    table's `rows` rows they belong to. Keras's TensorFlow arithmetic adds them up
    (`tf.convert_to_tensor`, an unsorted segment sum) wherever a dense tensor meets them, and
    squares or clips them slice by slice where the op is elementwise; `rows` is that sum."""

    def __init__(self, values, segments, shape):
        self.values, self.segments, self.shape = values, segments, shape

    @classmethod
    def looked_up(cls, values, ids, rows: int) -> "Slices":
        import tensorflow as tf

        k = tf.shape(ids)[0]
        # Every run's ids offset into a segment range of its own: one segment sum for all runs.
        return cls(values, tf.reshape(ids + tf.range(k, dtype=ids.dtype)[:, None] * rows, [-1]),
                   tf.concat([[k, rows], tf.shape(values)[2:]], 0))

    def scaled(self, values) -> "Slices":
        """The same ids with other values."""
        return Slices(values, self.segments, self.shape)

    def sum(self, values=None):
        """The dense gradient [K, rows, D] of `values` (default: the slices) as Keras densifies it."""
        import tensorflow as tf

        values = self.values if values is None else values
        flat = tf.reshape(values, tf.concat([[-1], tf.shape(values)[2:]], 0))
        return tf.reshape(tf.math.unsorted_segment_sum(flat, self.segments, tf.reduce_prod(self.shape[:2])),
                          self.shape)

    def squares(self):
        """Each run's sum of squared slices, [K]: what Keras's norms of this gradient add up."""
        import tensorflow as tf

        return tf.reduce_sum(tf.square(self.values), axis=list(range(1, len(self.values.shape))))


def clip(grads: list, squares, global_norm, clipnorm, global_clipnorm, clipvalue, kinds: frozenset,
         slices: dict | None = None):
    """Keras's `BaseOptimizer._clip_gradients` for every run, on the stacked gradients [K, *shape]
    of each variable (a threshold of 0 means that kind is off for the run: Keras's own test is
    `if self.clipnorm and self.clipnorm > 0`). `squares` [K, variables] holds each variable's sum
    of squared gradients. `slices` holds, by variable index, the `Slices` of the variables whose
    gradient Keras receives slice by slice (`grads` holds their sums). Returns the gradients,
    whether clipping acted, by the keras engine's tests (some variable's norm above `clipnorm`,
    the global norm above `global_clipnorm`, some component beyond `clipvalue`), and per variable
    the square its optimizer's second moment adds where it is not the gradient's square (a
    sliced gradient that global_clipnorm did not turn dense), else None."""
    import tensorflow as tf

    slices = slices or {}
    acted = tf.zeros_like(clipnorm, dtype=tf.bool)
    dense = tf.zeros_like(clipnorm, dtype=tf.bool)  # runs whose clipping turned sliced gradients dense
    slices = dict(slices)
    if "clipnorm" in kinds:
        on = clipnorm > 0
        # BaseOptimizer._clip_by_norm, variable by variable, with its two-tap where at zero.
        pred = squares > 0
        l2norm = tf.where(pred, tf.sqrt(tf.where(pred, squares, tf.ones_like(squares))), squares)
        c = clipnorm[:, None]
        # A run that does not clip multiplies and divides by exactly 1, which leaves every value,
        # NaN and inf included, as it is: the same as selecting its own gradient, in one pass.
        one = tf.ones_like(clipnorm)
        factor = tf.where(on, clipnorm, one)
        denominator = tf.where(on[:, None], tf.maximum(l2norm, c), one[:, None])
        # A sliced gradient stays sliced: Keras scales and divides each slice.
        slices = {i: s.scaled((s.values * per_run(factor, 3)) / per_run(denominator[:, i], 3))
                  for i, s in slices.items()}
        grads = [slices[i].sum() if i in slices
                 else (g * per_run(factor, len(g.shape))) / per_run(denominator[:, i], len(g.shape))
                 for i, g in enumerate(grads)]
        acted = acted | (on & tf.reduce_any(l2norm > c, axis=1))
    if "global_clipnorm" in kinds:
        on = global_clipnorm > 0
        # keras.src.optimizers.base_optimizer.clip_by_global_norm
        scale = global_clipnorm * tf.minimum(1.0 / global_norm, 1.0 / global_clipnorm)
        scale = scale + (global_norm - global_norm)
        scale = tf.where(on, scale, tf.ones_like(scale))  # x * 1 is x: no select over the gradients
        # A sliced gradient times a tensor is its sum times it (Tensor.__rmul__ converts it).
        grads = [g * per_run(scale, len(g.shape)) for g in grads]
        acted = acted | (on & (global_norm > global_clipnorm))
        dense = dense | on
    squared: list = [None] * len(grads)
    for i, s in slices.items():
        squared[i] = s.sum(tf.square(s.values))
    if "clipvalue" in kinds:
        on = clipvalue > 0
        clipped = []
        for i, g in enumerate(grads):
            v = per_run(clipvalue, len(g.shape))
            if i in slices:  # Keras clips the slices (tf.clip_by_value keeps IndexedSlices)
                s = slices[i]
                values = tf.clip_by_value(s.values, -per_run(clipvalue, 3), per_run(clipvalue, 3))
                acted = acted | (on & tf.reduce_any(tf.abs(s.values) > per_run(clipvalue, 3), axis=[1, 2]))
                clipped.append(tf.where(per_run(on, len(g.shape)), s.sum(values), g))
                squared[i] = tf.where(per_run(on, len(g.shape)), s.sum(tf.square(values)), squared[i])
                continue
            axes = list(range(1, len(g.shape)))
            acted = acted | (on & tf.reduce_any(tf.abs(g) > v, axis=axes))
            clipped.append(tf.where(per_run(on, len(g.shape)), tf.clip_by_value(g, -v, v), g))
        grads = clipped
    for i in slices:
        squared[i] = tf.where(per_run(dense, len(grads[i].shape)), tf.square(grads[i]), squared[i])
    return grads, acted, squared


def update(optimizer: str, theta, g, slots: dict, lr, iteration, momentum=None, nesterov=None, squared=None):
    """One optimizer update of every run, keras/src/optimizers/{adam,sgd,rmsprop}.py `update_step`
    on one stacked variable [K, *shape] (Keras applies the same arithmetic to each variable).
    `lr` is [K]; `iteration` is Keras's `optimizer.iterations` before this step.
    SGD with `momentum` ([K] float, with its `SGD_MOMENTUM_SLOTS` in `slots`) and `nesterov`
    ([K] bool): Keras's momentum branch for the runs whose momentum is not 0, its plain branch
    for the others (whose slot stays as it was, as Keras builds none for them); without
    `momentum` every run takes the plain branch. `squared`: the square Adam's and RMSprop's second
    moment adds where it is not tf.square(g) (a sliced gradient's, `clip`). Returns (theta, slots).

    >>> import tensorflow as tf
    >>> theta, g, lr = tf.ones([3, 2]), tf.fill([3, 2], 2.0), tf.fill([3], 0.1)
    >>> momentum, nesterov = tf.constant([0.0, 0.5, 0.5]), tf.constant([False, False, True])
    >>> slots = {"momentum": tf.fill([3, 2], 1.0)}
    >>> theta, slots = update("sgd", theta, g, slots, lr, 0, momentum, nesterov)
    >>> [[round(float(v), 6) for v in t[:, 0]] for t in (theta, slots["momentum"])]
    [[0.8, 1.3, 0.95], [1.0, 0.3, 0.3]]
    """
    import tensorflow as tf

    lr = per_run(lr, len(theta.shape))
    squared = tf.square(g) if squared is None else squared
    if optimizer == "adam":
        b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        local_step = tf.cast(iteration + 1, theta.dtype)
        beta_1_power = tf.pow(tf.constant(b1, theta.dtype), local_step)
        beta_2_power = tf.pow(tf.constant(b2, theta.dtype), local_step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m = slots["m"] + (g - slots["m"]) * (1 - b1)
        v = slots["v"] + (squared - slots["v"]) * (1 - b2)
        return theta - (m * alpha) / (tf.sqrt(v) + eps), {"m": m, "v": v}
    if optimizer == "sgd" and momentum is not None:
        on = per_run(tf.not_equal(momentum, 0), len(theta.shape))
        beta = per_run(tf.cast(momentum, theta.dtype), len(theta.shape))
        m = slots["momentum"] * beta - g * lr
        # Nesterov adds the same expression again rather than m, as Keras's update_step does.
        step = m if nesterov is None else tf.where(per_run(nesterov, len(theta.shape)), m * beta - g * lr, m)
        # Selected run by run, never multiplied by a mask: a run without momentum gets Keras's plain
        # update whatever its (unused) slot holds.
        return tf.where(on, theta + step, theta - g * lr), {"momentum": tf.where(on, m, slots["momentum"])}
    if optimizer == "sgd":  # momentum 0: Keras's plain branch
        return theta - g * lr, {}
    if optimizer == "rmsprop":  # rho 0.9, momentum 0, not centered
        rho, eps = RMSPROP["rho"], RMSPROP["epsilon"]
        velocity = rho * slots["velocity"] + (1 - rho) * squared
        return theta - (lr * g) / tf.sqrt(velocity + eps), {"velocity": velocity}
    raise Unsupported(f"optimizer {optimizer!r}")


class Step:
    """One training step of every run of a program: loss, gradient, clipping, update, and the
    finiteness test. `archs` are the program's architectures (Dense stacks, one per activation
    it serves, or one `Graph`), `loss` the catalog's loss name (a `Graph` brings its own),
    `clip_kinds` the clipping kinds any of its runs uses (the others cost no ops)."""

    def __init__(self, archs: Sequence[Architecture | Graph], loss: str, optimizer: str, clip_kinds: frozenset,
                 momentum: bool = False):
        self.archs, self.optimizer, self.clip_kinds = tuple(archs), optimizer, clip_kinds
        self.momentum = momentum and optimizer == "sgd"  # SGD's momentum branch, per run
        self.graph = isinstance(self.archs[0], Graph)
        if not self.graph:
            self.loss = per_sample_loss(self.archs[0].loss or loss)
            self.accuracy = accuracy_of(self.archs[0].accuracy)

    def evaluate(self, theta: list, state: list, x, y, choice, training: bool):
        """Per-sample loss and accuracy of every run, [K, B] each, and the runs' new state."""
        if self.graph:
            return self.archs[0].evaluate(theta, state, x, y, training)[:3]
        pred = forward(self.archs, theta, x, choice)
        return self.loss(y, pred), self.accuracy(y, pred), state

    def __call__(self, theta: list, state: list, slots: dict, iteration, xb, yb, valid, count, choice, lr, clipnorm,
                 global_clipnorm, clipvalue, momentum=None, nesterov=None):
        """`theta` and each slot are lists of stacked variables [K, *shape], in the model's order,
        `state` the stacked non-trainable variables; `xb`, `yb` [K, B, ...] the batch, `valid` [B]
        its real samples (`count` of them); `choice` [K] each run's activation; `lr` and the
        thresholds [K]; with SGD's momentum, `momentum` [K] and `nesterov` [K] bool. Returns the new
        weights, state and slots and per run: loss, accuracy,
        unclipped gradient norm, whether clipping acted, and whether the loss, the norm and every
        updated weight are finite."""
        import tensorflow as tf

        lookups = self.archs[0].lookups if self.graph else ()
        # An Embedding table's gradient is taken as its slices: the gradient of a zero added to
        # each lookup (`Graph.evaluate`), not of the table, whose gradient would be their sum.
        taps = [tf.zeros(tf.concat([tf.shape(xb)[:2], lookup.shape], 0)) for lookup in lookups]
        tables = {lookup.variable for lookup in lookups}
        with tf.GradientTape() as tape:
            tape.watch([theta, taps])
            if self.graph:
                losses, accuracies, state, ids, penalty = self.archs[0].evaluate(theta, state, xb, yb, True, taps)
            else:
                losses, accuracies, state = self.evaluate(theta, state, xb, yb, choice, training=True)
                penalty = self.archs[0].penalty(theta) if self.archs[0].penalties else None
            loss = masked_mean(losses, valid, count)  # the data loss: what is reported and judged
            # The sum's gradient with respect to run k's weights is run k's own gradient; Keras
            # differentiates the data loss plus the penalties (`keras_engine.objective`).
            total = tf.reduce_sum(loss if penalty is None else loss + penalty)
        dense_grads, tap_grads = tape.gradient(total, [[w for i, w in enumerate(theta) if i not in tables], taps])
        found, slices = iter(dense_grads), {}
        for lookup, tap, looked_up in zip(lookups, tap_grads, ids if lookups else ()):
            k = tf.shape(tap)[0]
            slices[lookup.variable] = Slices.looked_up(tf.reshape(tap, [k, -1, tap.shape[-1]]), tf.reshape(looked_up, [k, -1]),
                                             theta[lookup.variable].shape[1])
        grads = [slices[i].sum() if i in slices else next(found) for i in range(len(theta))]
        squares = tf.stack([slices[i].squares() if i in slices else tf.reduce_sum(tf.square(g), axis=list(range(1, len(g.shape))))
                            for i, g in enumerate(grads)], axis=1)
        norm = tf.sqrt(tf.reduce_sum(squares, axis=1))
        grads, acted, squared = clip(grads, squares, norm, clipnorm, global_clipnorm, clipvalue, self.clip_kinds, slices)
        extra = (momentum, nesterov) if self.momentum else (None, None)
        updated = [update(self.optimizer, w, g, {name: s[i] for name, s in slots.items()}, lr, iteration, *extra,
                          squared=squared[i])
                   for i, (w, g) in enumerate(zip(theta, grads))]
        theta = [w for w, _ in updated]
        slots = {name: [new[name] for _, new in updated] for name in slots}
        finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)
        for w in theta:
            finite &= tf.reduce_all(tf.math.is_finite(w), axis=list(range(1, len(w.shape))))
        accuracy = masked_mean(accuracies, valid, count)
        return theta, state, slots, loss, accuracy, norm, acted, finite
