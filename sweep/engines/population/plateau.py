"""Keras's `ReduceLROnPlateau` rules for one run, without a model: epoch loss in, learning rate out.

The population engine keeps one of these per run, on the host, because its runs share one
compiled program and no Keras model (the keras engine uses the Keras callback itself). Every
rule is Keras's (keras/src/callbacks/reduce_lr_on_plateau.py, mode min on 'loss'; `min_delta`
and `cooldown` default to Keras's defaults), including its float32 arithmetic: the comparison
`current - min_delta < best` runs on float32 tensors and the learning rate lives in a float32
variable::

    >>> from sweep.engines.population.plateau import Plateau
    >>> p = Plateau(factor=0.1, patience=3, min_lr=1e-6)
    >>> lr = 0.01
    >>> for loss in [1.0, 1.0, 1.0, 1.0, 1.0]:
    ...     lr = p.on_epoch_end(loss, lr)
    >>> round(lr, 9)
    0.001
"""

from __future__ import annotations

import numpy as np


class Plateau:
    def __init__(self, factor: float, patience: int, min_lr: float, min_delta: float = 1e-4, cooldown: int = 0,
                 monitor: str = "loss"):
        if monitor != "loss":
            raise ValueError("only monitor='loss' (mode min) is modelled")
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.min_delta, self.cooldown = min_delta, cooldown
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, current: float, learning_rate: float) -> float:
        """The learning rate for the next epoch, given this epoch's loss and the current rate."""
        lr = float(np.float32(learning_rate))
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        # MonitorCallback._is_improvement in mode min: ops.less(current - (-min_delta), best), on
        # float32 tensors (MonitorCallback negates min_delta when its monitor_op is `less`).
        if self.best is None or np.float32(current - -self.min_delta) < np.float32(self.best):
            self.best = current
            self.wait = 0
        elif not self.cooldown_counter > 0:
            self.wait += 1
            if self.wait >= self.patience and lr > np.float32(self.min_lr):
                lr = float(np.float32(max(lr * self.factor, self.min_lr)))
                self.cooldown_counter = self.cooldown
                self.wait = 0
        return lr
