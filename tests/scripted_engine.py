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


GPU_FREE_BYTES = 64 << 30


def instant_populations(study, runs, **program):
    """`train_population` without training: every run stable (see `outcome`)."""
    return [outcome(0.01, study.epochs) for _ in runs]


def act_as_gpu_worker(patch, sizes_file: str | None = None) -> None:
    """Make the population engine in this process see a GPU with `GPU_FREE_BYTES` free (one
    population at a time) and train populations instantly; `patch(module, name, value)` sets
    a module attribute (pytest's monkeypatch.setattr, or setattr in a Ray actor). With
    `sizes_file`, the engine's log of the populations it trained goes there."""
    import logging

    from sweep.engines.population import engine as population, sizing

    patch(sizing, "gpu_free_memory", lambda: GPU_FREE_BYTES)
    patch(population, "concurrent_populations", lambda: 1)
    patch(population, "train_population", instant_populations)
    population.log.setLevel(logging.INFO)
    if sizes_file and not population.log.handlers:
        population.log.addHandler(logging.FileHandler(sizes_file))


def population_sizes(lines) -> list[int]:
    """The real runs of each population in the engine's log lines ("population of N runs ...")."""
    return sorted(int(line.split()[2]) for line in lines if line.startswith("population of "))


def gpu_sized_engine(sizes_file: str):
    """A population engine that, in the Ray actor running it, acts as a GPU worker
    (`act_as_gpu_worker`) and logs its population sizes to `sizes_file`."""
    from sweep.engines.population import PopulationEngine

    class GpuSizedEngine(PopulationEngine):
        def capacity(self, study):
            act_as_gpu_worker(setattr, sizes_file)
            return super().capacity(study)

        def train(self, study, runs):
            act_as_gpu_worker(setattr, sizes_file)
            return super().train(study, runs)

    return GpuSizedEngine()
