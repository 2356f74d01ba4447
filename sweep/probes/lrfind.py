"""The learning-rate range test as fastai and Lightning define it, run on one setting with Keras.

Practitioners pick a learning rate with one short run whose learning rate grows
exponentially every batch, stopped when the loss blows up, and a rule that reads
a suggestion off the loss curve. This module is that test, on a setting's real
Keras model, optimizer and clipping, and the row it leaves in `lrfind.parquet`
(`results.rangetest`, from which the study's boundary takes `lr_rangetest_suggestion`);
`lrfind_study` runs it on every setting of a study and compares it with the
measured edge.

The two rule sets, as their public sources define them (fastai master of the
2.7 series; Lightning master after PR #21055, merged August 2025, which made
the gradient one in the learning rate itself):

* ``fastai``: ``Learner.lr_find(start_lr=1e-7, end_lr=10, num_it=100,
  stop_div=True, suggest_funcs=valley)`` (fastai/callback/schedule.py,
  generated from nbs/14_callback.schedule.ipynb). Batch i (0-based) trains at
  ``start_lr * (end_lr/start_lr) ** (i/num_it)`` (`SchedExp` at
  ``train_iter/num_it``). The recorded loss is the Recorder's smoothed loss
  (fastai/learner.py `AvgSmoothLoss(beta=0.98)`: ``val = beta*val +
  (1-beta)*loss``, reported as ``val / (1 - beta**count)``, count = batches so
  far). After each batch the best smoothed loss is updated, then training stops
  when it exceeds 4 x the best (a NaN never compares greater: fastai trains on)
  or after ``num_it`` batches. The suggestion (`valley`) takes the recorded
  curve without its first ``num_it//10`` and last 5 points, cut at its first
  NaN, finds the longest strictly decreasing run of losses (an O(n^2) longest
  decreasing subsequence, with its start at ``end - length``) and returns the
  learning rate ``int(len/3) + int(len/3/2)`` points into it.
* ``lightning``: ``Tuner.lr_find(min_lr=1e-8, max_lr=1, num_training=100,
  mode="exponential", early_stop_threshold=4.0)``
  (src/lightning/pytorch/tuner/lr_finder.py). `_ExponentialLR` is stepped
  after every batch and its first step is the one torch's scheduler makes at
  creation, so batch 0 trains at ``min_lr`` and batch i >= 1 at ``min_lr *
  (max_lr/min_lr) ** ((i+1)/num_training)``: the last batch reaches max_lr.
  `_LRCallback(beta=0.98)` smooths the same way but divides by ``1 -
  beta**(global_step+1)`` with global_step already counting the batch (one
  more than fastai's count). It stops after a batch (the batch's loss still
  recorded) when ``global_step > 1`` and the smoothed loss exceeds 4 x the
  best; the best is the first batch's smoothed loss, then any lower one. The
  suggestion (`_LRFinder.suggestion(skip_begin=10, skip_end=1)`) drops the
  first 10 and last point, keeps the finite losses, and returns the learning
  rate of the most negative ``torch.gradient(losses, spacing=[lrs])``
  (the derivative in the learning rate itself, not its log; `np.gradient`
  with the learning rates as coordinates is the same formula). Before PR
  #21055 the gradient was taken per point, i.e. in log learning rate; an open
  PR (#21171) proposes log10(lr) spacing again, and another (#21931) the even
  first step.

Here, as there, the loss of a batch is the model's own loss on that batch
after the forward pass and before the update. Batches come in the setting's
own order (`engines.batch_order`, seed = the study's first seed), epoch after
epoch as needed, each epoch's last partial batch included as Keras trains it
(fastai's training loader would drop it). Each setting builds a fresh model,
so fastai's and Lightning's restoring of the weights afterwards has nothing to
do. The learning rate is changed every batch with
``optimizer.learning_rate.assign``; a learning-rate schedule of the setting
(`plateau`) is not applied: the range test replaces it, so settings that differ
only in schedule share one test. Once the smoothed loss is NaN it stays NaN, so
training stops at the first NaN and the remaining points are recorded as NaN
without training them (what both tools would record).

    >>> import dataclasses
    >>> from sweep.probes.lrfind import RULES, schedule, range_test
    >>> lrs = schedule(RULES["fastai"])
    >>> len(lrs), f"{lrs[0]:.0e}", f"{lrs[-1]:.3g}"
    (100, '1e-07', '8.32')
    >>> f"{schedule(RULES['lightning'])[1]:.3g}", f"{schedule(RULES['lightning'])[-1]:.3g}"
    ('1.45e-08', '1')
    >>> from sweep.spec import parse
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nseeds=[0]', "d.toml")
    >>> short = dataclasses.replace(RULES["fastai"], num_it=30)
    >>> curve = range_test(study, study.configs()[0], 0, short)
    >>> len(curve.lrs), curve.steps <= 30
    (30, True)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..engines import batch_order, make_optimizer, problem
from ..engines.keras_engine import as_float32, objective
from ..spec import SETTING_AXES, Config, Study



@dataclass(frozen=True)
class Rule:
    """One tool's range test: its schedule, smoothing, stop rule and suggestion rule."""

    name: str
    start_lr: float
    end_lr: float
    num_it: int
    stop_factor: float  # stop once the smoothed loss exceeds this multiple of the best
    suggestion: str  # the rule that reads the curve: `valley` (fastai) or `steepest` (Lightning)
    beta: float = 0.98  # the loss's exponential smoothing


RULES: dict[str, Rule] = {
    "fastai": Rule("fastai", start_lr=1e-7, end_lr=10.0, num_it=100, stop_factor=4.0, suggestion="valley"),
    "lightning": Rule("lightning", start_lr=1e-8, end_lr=1.0, num_it=100, stop_factor=4.0, suggestion="steepest"),
}
DEFAULT_RULE = "fastai"


def schedule(rule: Rule) -> np.ndarray:
    """The learning rate of every batch of the test (see the module's text for each tool's formula)."""
    i = np.arange(rule.num_it, dtype=np.float64)
    if rule.name == "lightning":
        # torch's scheduler takes one step when it is created: batch 0 at min_lr, then (i+1)/N.
        exponent = np.where(i == 0, 0.0, (i + 1) / rule.num_it)
    else:
        exponent = i / rule.num_it
    return rule.start_lr * (rule.end_lr / rule.start_lr) ** exponent


class Tracker:
    """The smoothed loss and the divergence stop of one tool, fed one batch loss at a time.

    >>> t = Tracker(RULES["fastai"])
    >>> [t.add(v) for v in (1.0, 1.0, 100.0)]
    [False, False, True]
    >>> [round(v, 2) for v in t.smoothed]
    [1.0, 1.0, 34.67]
    """

    def __init__(self, rule: Rule):
        self.rule = rule
        self.avg = 0.0
        self.best = math.inf if rule.name == "fastai" else 0.0
        self.smoothed: list[float] = []

    def add(self, loss: float) -> bool:
        """Record one batch's loss; True when the tool would stop after this batch."""
        r = self.rule
        self.avg = r.beta * self.avg + (1 - r.beta) * loss
        n = len(self.smoothed) + 1  # batches so far
        if r.name == "lightning":
            step = n  # trainer.global_step, already counting this batch
            value = self.avg / (1 - r.beta ** (step + 1))
            stop = step > 1 and value > r.stop_factor * self.best
            if value < self.best or step == 1:
                self.best = value
        else:
            value = self.avg / (1 - r.beta ** n)
            if value < self.best:
                self.best = value
            stop = value > r.stop_factor * self.best
        self.smoothed.append(value)
        return bool(stop)


def valley(lrs: np.ndarray, losses: np.ndarray) -> int | None:
    """fastai's `valley`: the index of the suggestion in (lrs, losses), None for an empty curve.

    >>> valley(np.arange(8.0), np.array([5, 4, 3, 2, 1, 0, 3, 9.0]))
    2

    (The run 5..0 has length 6 and ends at index 5; fastai puts its start at 5 - 6 = -1, one
    before its first point, and so picks index -1 + 2 + 1.)
    """
    n = len(losses)
    if n == 0:
        return None
    max_start = max_end = 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    # fastai indexes a tensor with it: -1 (a run of 2 at the very start) is the last point.
    return idx % n


def steepest(lrs: np.ndarray, losses: np.ndarray) -> int | None:
    """Lightning's rule on an already trimmed curve: the index of the most negative d loss / d lr
    among the finite points (None with fewer than 2).

    >>> steepest(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([9.0, 8.0, 5.0, 4.5, 4.4]))
    1
    """
    finite = np.flatnonzero(np.isfinite(losses))
    if len(finite) < 2:
        return None
    gradients = np.gradient(losses[finite], lrs[finite])
    return int(finite[int(np.argmin(gradients))])


def suggest(rule: Rule, lrs: np.ndarray, losses: np.ndarray) -> int | None:
    """The index of the tool's suggestion in the whole recorded curve, with the tool's trimming."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    if rule.suggestion == "steepest":
        begin, end = 10, len(losses) - 1  # skip_begin=10, skip_end=1
        if end <= begin:
            return None
        idx = steepest(lrs[begin:end], losses[begin:end])
        return None if idx is None else begin + idx
    begin, end = rule.num_it // 10, len(losses) - 5
    if end <= begin:
        return None
    part = losses[begin:end]
    nan = np.flatnonzero(np.isnan(part))
    if len(nan):
        part = part[:nan[0]]
    idx = valley(lrs[begin:begin + len(part)], part)
    return None if idx is None else begin + idx


@dataclass
class Curve:
    """One range test: the learning rate and loss of every recorded batch, and how it ended."""

    lrs: np.ndarray
    losses: np.ndarray  # each batch's loss (NaN where not trained: after a NaN)
    smoothed: np.ndarray  # the tool's smoothed loss, what it records
    steps: int  # batches trained
    stopped_on_divergence: bool
    first_nonfinite_step: int | None
    suggestion_index: int | None
    wall_seconds: float = 0.0

    @property
    def suggestion(self) -> float | None:
        return None if self.suggestion_index is None else float(self.lrs[self.suggestion_index])


def trace(rule: Rule, batch_losses: Callable[[float], float]) -> Curve:
    """Run the tool's loop: `batch_losses(lr)` trains one batch at `lr` and returns its loss."""
    lrs = schedule(rule)
    tracker, losses = Tracker(rule), []
    stopped, nonfinite = False, None
    for lr in lrs:
        loss = float(batch_losses(float(lr)))
        losses.append(loss)
        stopped = tracker.add(loss)
        if nonfinite is None and not math.isfinite(loss):
            nonfinite = len(losses) - 1
        if stopped or math.isnan(tracker.smoothed[-1]):
            break
    steps = len(losses)
    smoothed = tracker.smoothed
    if not stopped and steps < rule.num_it:
        # A NaN in the smoothed loss stays there: both tools would record NaN to num_it.
        pad = [math.nan] * (rule.num_it - steps)
        losses, smoothed = losses + pad, smoothed + pad
    recorded = lrs[:len(smoothed)]
    smoothed = np.asarray(smoothed, np.float64)
    return Curve(recorded, np.asarray(losses, np.float64), smoothed, steps, stopped, nonfinite,
                 suggest(rule, recorded, smoothed))


def _batches(seed: int, n: int, batch_size: int):
    """The setting's batches, epoch after epoch, in the sweep's own order."""
    epoch = 1
    while True:
        order = batch_order(seed, epoch, n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]
        epoch += 1


def range_test(study: Study, config: Config, seed: int, rule: Rule) -> Curve:
    """The range test of one setting (`config`'s learning rate is ignored) on the keras engine's pieces."""
    import tensorflow as tf

    started = time.perf_counter()
    p = problem(study, config, seed)
    model, x, y = p.model, p.x, p.y
    optimizer = make_optimizer(dataclasses.replace(config, learning_rate=rule.start_lr))
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = p.loss_fn(yb, as_float32(model(xb, training=True)))
            scaled = optimizer.scale_loss(objective(model, loss))  # mixed_float16's loss scaling
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    batches = _batches(seed, len(x), config.batch_size)

    def batch_loss(lr: float) -> float:
        optimizer.learning_rate.assign(lr)
        idx = next(batches)
        return float(step(x[idx], y[idx]))

    curve = trace(rule, batch_loss)
    curve.wall_seconds = time.perf_counter() - started
    return curve


def lrfind_row(study: Study, config: Config, rule: Rule, seed: int, c: Curve) -> dict:
    return {"study": study.name, "example": study.example, **{a: getattr(config, a) for a in SETTING_AXES},
            **config.knobs,
            "rule": rule.name, "seed": seed, "start_lr": rule.start_lr, "end_lr": rule.end_lr,
            "num_it": rule.num_it, "steps": c.steps, "stopped_on_divergence": c.stopped_on_divergence,
            "first_nonfinite_step": c.first_nonfinite_step, "suggestion": c.suggestion,
            "suggestion_step": c.suggestion_index, "wall_seconds": c.wall_seconds,
            "curve_lr": c.lrs.tolist(), "curve_loss": c.losses.tolist(), "curve_smoothed_loss": c.smoothed.tolist()}
