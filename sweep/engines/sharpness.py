"""Sharpness: the top eigenvalue of the training loss's Hessian, plain and preconditioned.

The sharpness λ_max(H) of the training loss is what the edge of stability is about: full-batch
gradient descent with step η is stable on a quadratic only while λ_max < 2/η, and trains with
λ_max hovering near 2/η (Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at
the Edge of Stability", ICLR 2021). For an adaptive method the quantity is the preconditioned
sharpness λ_max(P⁻¹H), which settles near the stability threshold of its update: for Adam,
(2 + 2β₁)/((1 − β₁)η), 38/η at β₁ = 0.9; for RMSProp (β₁ = 0) 2/η (Cohen et al., "Adaptive
Gradient Methods at the Edge of Stability", arXiv:2207.14484, 2022, Section 2, where Adam is
written as w ← w − η P⁻¹ m with the EMA m and P = (1 − β₁ᵗ)·[diag(√(ν/(1 − β₂ᵗ))) + εI], the
first moment's bias correction moved into P). `preconditioner` gives P exactly as the run's
own optimizer applies it: Keras's Adam adds ε to √ν before the bias correction (its
"epsilon-hat" form), so its P is (1 − β₁ᵗ)(√ν + ε)/√(1 − β₂ᵗ), the paper's with ε scaled by
1/√(1 − β₂ᵗ); Keras's RMSprop divides by √(ν + ε), so its P is √(ν + ε).

Both are found by power iteration on Hessian-vector products computed forward-over-reverse
(`hvp`: a `tf.autodiff.ForwardAccumulator` around a `tf.GradientTape`), for K runs at once:
every vector is a list of stacked [K, *shape] tensors, the loss a [K] vector of per-run losses.
The Hessian of their sum is block-diagonal over the runs, so one product of the summed loss
with a stacked vector is every run's own product; norms and Rayleigh quotients are per run.
P⁻¹H is similar to the symmetric P^{-1/2} H P^{-1/2}, whose power iteration converges as a
symmetric matrix's does. Power iteration finds the eigenvalue of largest magnitude; after M
products the Rayleigh quotient's error shrinks as (λ₂/λ₁)^{2M}. The start vector is fixed
(`start_vector`, seeded), so that two engines measuring the same weights agree to rounding.

A quadratic ½wᵀAw with known eigenvalues 1, 3 and 10, in two "runs" (the second scaled by 2)::

    >>> import numpy as np, tensorflow as tf
    >>> A = tf.constant(np.diag([1.0, 3.0, 10.0]), tf.float32)
    >>> def loss_of(theta):  # [K] losses of the stacked weights [K, 3]
    ...     w = theta[0]
    ...     return 0.5 * tf.reduce_sum((w @ A) * w, axis=1) * tf.constant([1.0, 2.0])
    >>> theta = [tf.ones([2, 3])]
    >>> v0 = [tf.constant(start_vector([(3,)], 2)[0])]
    >>> lam = top_eigenvalue(lambda v: hvp(loss_of, theta, v), v0, iterations=40)
    >>> np.round(lam.numpy(), 3).tolist()
    [10.0, 20.0]

Preconditioned by P = diag(1, 3, 10), P⁻¹A is the identity::

    >>> d = [tf.constant([[1.0, 3.0, 10.0]] * 2) ** -0.5]
    >>> lam = top_eigenvalue(lambda v: scaled(d, hvp(loss_of, theta, scaled(d, v))), v0, iterations=5)
    >>> np.round(lam.numpy(), 3).tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

# The start vector's seed: one fixed vector for every run and engine.
START_SEED = 20210226


def stability_threshold(optimizer: str, momentum: float = 0.0, nesterov: bool = False) -> float:
    """The threshold η·λ stays below for a stable update on a quadratic (Cohen et al. 2021,
    2022): 2 for gradient descent; 2 + 2β with SGD's momentum β (heavy ball: the root −1 of
    z² − (1 + β − ηλ)z + β), (2 + 2β)/(1 + 2β) with Nesterov's as Keras writes it (the gradient
    at the current weights; Cohen et al. 2021, appendix on momentum); (2 + 2β₁)/(1 − β₁) for
    Adam (38 at Keras's β₁ = 0.9), on the preconditioned sharpness; 2 for RMSProp, which the
    2022 paper treats as the β₁ = 0 case of the same analysis.

    >>> [round(stability_threshold(o), 6) for o in ("sgd", "adam", "rmsprop")]
    [2.0, 38.0, 2.0]
    >>> stability_threshold("sgd", 0.9), round(stability_threshold("sgd", 0.9, nesterov=True), 6)
    (3.8, 1.357143)
    """
    from .population.step import ADAM

    if optimizer == "adam":
        b1 = ADAM["beta_1"]
        return round((2 + 2 * b1) / (1 - b1), 9)  # 38, not 37.99999999999999 (0.9 is inexact)
    if optimizer == "sgd":
        return (2 + 2 * momentum) / (1 + 2 * momentum) if nesterov else 2 + 2 * momentum
    if optimizer == "rmsprop":
        return 2.0
    raise ValueError(f"no stability threshold for optimizer {optimizer!r}")


def predicted_learning_rate(optimizer: str, sharpness: float | None, precond_sharpness: float | None) -> float:
    """The learning rate at which the measured curvature sits on the stability threshold:
    2/λ_max for SGD, 38/λ_max(P⁻¹H) for Adam, 2/λ_max(P⁻¹H) for RMSprop; NaN when the needed
    value is missing or not positive.

    >>> predicted_learning_rate("sgd", 4.0, None), predicted_learning_rate("adam", 4.0, 380.0)
    (0.5, 0.1)
    """
    value = sharpness if optimizer == "sgd" else precond_sharpness
    if value is None or not math.isfinite(value) or value <= 0:
        return math.nan
    return stability_threshold(optimizer) / value


def start_vector(shapes: Sequence[tuple[int, ...]], k: int, seed: int = START_SEED) -> list[np.ndarray]:
    """The power iteration's start: one Gaussian vector over all variables (their `shapes`),
    unit norm, the same for each of the k runs, as [k, *shape] float32 arrays."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(s) for s in shapes]
    norm = math.sqrt(sum(float(np.sum(p * p)) for p in parts))
    return [np.broadcast_to((p / norm).astype(np.float32), (k, *p.shape)).copy() for p in parts]


def summary(kind: str, by_epoch: dict[int, float]) -> dict[str, float | None]:
    """A run's `<kind>_init, _early, _max, _final` from its measurements by epoch: epoch 0, the
    first measured epoch after it, the largest finite value, the last measured epoch; null
    where not measured or not finite.

    >>> summary("sharpness", {0: 1.5, 5: 2.0, 10: float("nan")})
    {'sharpness_init': 1.5, 'sharpness_early': 2.0, 'sharpness_max': 2.0, 'sharpness_final': None}
    """
    epochs = sorted(by_epoch)
    later = [e for e in epochs if e > 0]
    values = [v for v in map(finite_or_none, by_epoch.values()) if v is not None]
    return {f"{kind}_init": finite_or_none(by_epoch.get(0)),
            f"{kind}_early": finite_or_none(by_epoch[later[0]]) if later else None,
            f"{kind}_max": max(values) if values else None,
            f"{kind}_final": finite_or_none(by_epoch[epochs[-1]]) if epochs else None}


def finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _per_run_sum(tensors) -> "tf.Tensor":
    import tensorflow as tf

    return tf.add_n([tf.reduce_sum(t, axis=list(range(1, len(t.shape)))) for t in tensors])


def _per_run(value, rank: int):
    import tensorflow as tf

    return tf.reshape(value, [-1] + [1] * (rank - 1))


def hvp(loss_of: Callable, theta: list, v: list) -> list:
    """H·v of every run, forward-over-reverse: the directional derivative along `v` of the
    gradient of the summed per-run losses `loss_of(theta)` [K]."""
    import tensorflow as tf

    with tf.autodiff.ForwardAccumulator(theta, v) as acc:
        with tf.GradientTape() as tape:
            tape.watch(theta)
            total = tf.reduce_sum(loss_of(theta))
        grads = tape.gradient(total, theta)
    return acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def scaled(d: list, v: list) -> list:
    """The elementwise product of two stacked vectors (a diagonal matrix applied)."""
    return [a * b for a, b in zip(d, v)]


def top_eigenvalue(operator: Callable, v: list, iterations: int):
    """Power iteration on a symmetric `operator` (stacked vector -> stacked vector) from the unit
    vector `v`: the Rayleigh quotient [K] after `iterations` products. A run whose product is 0
    gets 0; a run whose product is not finite, NaN."""
    import tensorflow as tf

    def body(i, v, lam):
        w = operator(v)
        lam = _per_run_sum(scaled(v, w))
        norm = tf.sqrt(_per_run_sum([tf.square(x) for x in w]))
        return i + 1, [tf.math.divide_no_nan(x, _per_run(norm, len(x.shape))) for x in w], lam

    k = tf.shape(v[0])[0]
    _, _, lam = tf.while_loop(lambda i, *_: i < iterations, body,
                              (tf.constant(0), list(v), tf.zeros([k], v[0].dtype)))
    return lam


def preconditioner(optimizer: str, slots: dict, steps, hyper: dict):
    """P of the run's optimizer as its next update applies it, per variable ([K, *shape]), or
    None for SGD (no preconditioner). `slots` are the optimizer's (Adam: m, v; RMSprop:
    velocity), `steps` [K] or scalar the updates taken so far, `hyper` Keras's hyper-parameters
    (`step.ADAM`, `step.RMSPROP`). See the module docstring for the formulas."""
    import tensorflow as tf

    if optimizer == "adam":
        t = tf.cast(steps, tf.float32)
        b1, b2, eps = hyper["beta_1"], hyper["beta_2"], hyper["epsilon"]
        factor = (1 - tf.pow(b1, t)) / tf.sqrt(1 - tf.pow(b2, t))
        return [_per_run(factor, len(v.shape)) * (tf.sqrt(v) + eps) for v in slots["v"]]
    if optimizer == "rmsprop":
        return [tf.sqrt(v + hyper["epsilon"]) for v in slots["velocity"]]
    return None


def first_step_slots(optimizer: str, grads: list, hyper: dict) -> dict:
    """The slots the first update would leave from the gradients `grads`: the preconditioner an
    initialised model trains under (Adam then has steps = 1), measured at epoch 0."""
    import tensorflow as tf

    if optimizer == "adam":
        return {"v": [(1 - hyper["beta_2"]) * tf.square(g) for g in grads]}
    if optimizer == "rmsprop":
        return {"velocity": [(1 - hyper["rho"]) * tf.square(g) for g in grads]}
    return {}


def measure(loss_of: Callable, theta: list, v0: list, iterations: int, p: list | None):
    """λ_max(H) and, when `p` is given, λ_max(P⁻¹H) of every run ([K] each; the second is
    zeros without `p`), by `iterations` products each."""
    import tensorflow as tf

    sharp = top_eigenvalue(lambda v: hvp(loss_of, theta, v), v0, iterations)
    if p is None:
        return sharp, tf.zeros_like(sharp)
    d = [tf.math.rsqrt(x) for x in p]
    return sharp, top_eigenvalue(lambda v: scaled(d, hvp(loss_of, theta, scaled(d, v))), v0, iterations)
