"""An engine for orchestration tests: no training, behaviour chosen per learning rate.

Ray actors get it by value (`ship_to_workers`), so the test directory need not be
importable on the workers.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from sweep.engines import Outcome


class ScriptedEngine:
    """Stable below learning rate 1, non-finite at 1 and above; `raise_at` learning rates raise,
    `hang_at` ones sleep `hang_seconds` (past any timeout); every run takes `seconds`."""

    name = "scripted"
    batched = False

    def __init__(self, seconds: float = 0.0, raise_at=(), hang_at=(), hang_seconds: float = 600.0,
                 jitter: float = 0.0):
        self.seconds, self.raise_at, self.hang_at = seconds, set(raise_at), set(hang_at)
        self.hang_seconds, self.jitter = hang_seconds, jitter

    def train(self, study, runs):
        out = []
        for run in runs:
            lr = run.config.learning_rate
            if lr in self.hang_at:
                time.sleep(self.hang_seconds)
            if lr in self.raise_at:
                out.append(ValueError(f"scripted failure at learning rate {lr}"))
                continue
            rng = np.random.default_rng([run.seed, int(lr * 1e6)])
            time.sleep(self.seconds + self.jitter * rng.random())
            out.append(outcome(lr, study.epochs))
        return out


def outcome(lr: float, epochs: int) -> Outcome:
    if lr >= 1:
        return Outcome(initial_loss=0.69, initial_accuracy=0.5, epoch_loss=[float("nan")], epoch_accuracy=[0.5],
                       epoch_grad_norm_max=[float("inf")], epoch_learning_rate=[lr],
                       grad_norms=np.array([float("inf")]), first_nonfinite_step=0, engine="scripted")
    losses = [0.69 * 0.5 ** (e + 1) for e in range(epochs)]
    return Outcome(initial_loss=0.69, initial_accuracy=0.5, epoch_loss=losses, epoch_accuracy=[0.9] * epochs,
                   epoch_grad_norm_max=[1.0] * epochs, epoch_learning_rate=[lr] * epochs,
                   grad_norms=np.ones(epochs), engine="scripted")


def ship_to_workers() -> None:
    """Pickle this module's classes by value, so Ray workers need not import `tests`."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
