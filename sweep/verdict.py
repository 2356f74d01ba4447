"""What happened to a run: one status from its loss curve, by the rules of docs/design.md.

The rules are checked in order and the first that matches wins::

    >>> from sweep.verdict import Thresholds, judge
    >>> judge(initial_loss=0.69, epoch_losses=[0.6, 0.5, 0.4], first_nonfinite_step=None)
    'stable'
    >>> judge(0.69, [0.68, 0.68, 0.67], None)
    'stalled'
    >>> judge(0.69, [0.5, 1.2, 0.4], None)
    'unstable'
    >>> judge(0.69, [9.0, 0.7], None, Thresholds(diverge_factor=10.0))  # back above l0 after 13 x l0
    'diverged'
    >>> judge(0.69, [0.5, float("nan")], first_nonfinite_step=40)
    'nan'

`stalled` compares the final loss with the lower of l0 and the baseline loss (the best
constant prediction's, `sweep.engines.baseline`): a run that started worse than a constant
and ended at one learned nothing, however far its loss fell::

    >>> judge(1.10, [0.40, 0.17, 0.166], None)                       # l0 alone: it learned
    'stable'
    >>> judge(1.10, [0.40, 0.17, 0.166], None, baseline_loss=0.166)  # it learned the mean
    'stalled'
    >>> judge(0.69, [0.5, 0.3], None, baseline_loss=0.693)           # below chance: it learned
    'stable'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

# Training outcomes, in the order the rules are checked; then the orchestrator's own.
TRAINING_STATUSES = ("nan", "diverged", "stalled", "unstable", "stable")
ORCHESTRATOR_STATUSES = ("error", "timeout")
STATUSES = TRAINING_STATUSES + ORCHESTRATOR_STATUSES


@dataclass(frozen=True)
class Thresholds:
    """The study file's `[verdict]` section; these defaults are the product's."""

    diverge_factor: float = 10.0
    stall_ratio: float = 0.95
    spike_factor: float = 2.0


def spike_epochs(epoch_losses: Sequence[float], spike_factor: float) -> list[int]:
    """Epochs (0-based) whose loss rose above `spike_factor` x the lowest loss before them."""
    spikes, lowest = [], math.inf
    for i, loss in enumerate(epoch_losses):
        if i > 0 and loss > spike_factor * lowest:
            spikes.append(i)
        lowest = min(lowest, loss)
    return spikes


def judge(
    initial_loss: float,
    epoch_losses: Sequence[float],
    first_nonfinite_step: int | None,
    thresholds: Thresholds = Thresholds(),
    baseline_loss: float | None = None,
) -> str:
    """The status of one run.

    `initial_loss` is l0, the loss of the initialised model on the whole training set;
    `epoch_losses` are the training losses of epochs 1..E as Keras reports them;
    `baseline_loss` is lc, the best constant prediction's loss (None or NaN: unknown, l0 alone).
    """
    if first_nonfinite_step is not None:
        return "nan"
    if not epoch_losses:
        raise ValueError("a run that trained without turning non-finite has at least one epoch")
    l0, final, peak = initial_loss, epoch_losses[-1], max(epoch_losses)
    f = thresholds.diverge_factor
    if (final >= l0 and peak >= f * l0) or final >= f * l0:
        return "diverged"
    floor = l0 if baseline_loss is None or not math.isfinite(baseline_loss) else min(l0, baseline_loss)
    if final > thresholds.stall_ratio * floor:
        return "stalled"
    if spike_epochs(epoch_losses, thresholds.spike_factor):
        return "unstable"
    return "stable"
