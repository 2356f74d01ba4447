"""The driver alone: its overhead per run on a grid of --runs runs, with an engine that trains nothing.

What is timed is everything `sweep run` does besides training: proposing runs
(the grid sampler over the whole plan), handing out batches (as to a GPU worker
whose capacity is the population engine's largest K), committing rows to
Parquet (`trials/` and `curves/` part files, fsynced), recording configurations
in the Optuna journal, starting (reading what is done, reconciling Optuna),
and writing the maps at the end. The engine's own time and the building of
each row (worker-side work) are measured apart and left out. Then the same
command is timed again on the finished study (a resume with nothing left to
do); the peak RSS is the process's over both sessions.

    python scripts/bench_driver.py                  # 20,000 runs, results in a temp directory
    python scripts/bench_driver.py --runs 1000000   # 36,000 configurations x 28 seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from sweep.driver import session as driver
from sweep.engines import Outcome
from sweep.engines.population import GPU_MAX_K
from sweep.driver.pool import LocalPool
from sweep.spec import parse
from sweep.driver.workers import execute


class InstantEngine:
    """Two epochs of a made-up, stable loss curve, no training."""

    name = "instant"

    def capacity(self, study):
        """Runs at once: as a GPU worker whose memory allows the population engine's largest K."""
        return GPU_MAX_K

    def train(self, study, runs):
        return [Outcome(initial_loss=0.7, initial_accuracy=0.5, epoch_loss=[0.5, 0.4], epoch_accuracy=[0.6, 0.7],
                        epoch_grad_norm_max=[1.0, 0.9], epoch_learning_rate=[r.config.learning_rate] * 2,
                        grad_norms=np.ones(8), engine=self.name) for r in runs]


class TimedPool(LocalPool):
    """LocalPool that keeps the time spent training and building rows (the workers' share).
    Its rows carry fixed library versions, so this process never imports TensorFlow (as a Ray
    driver never does): the driver's memory is measured without it."""

    worker_seconds = 0.0

    def __enter__(self):
        return self

    def wait(self):
        t0 = time.perf_counter()
        try:
            return list(execute(self.study, self.queue.popleft(), self.engine, versions=VERSIONS)) if self.queue else []
        finally:
            TimedPool.worker_seconds += time.perf_counter() - t0


VERSIONS = ("bench", "bench")


# The grid a user would write, axis by axis: the first four always, the rest added while a
# grid of that size would still need more than MAX_SEEDS seeds to reach the target.
BASE_AXES = {"learning_rate": [float(f"{x:.3g}") for x in np.geomspace(1e-4, 10, 25)],
             "clipnorm": ["none", 0.1, 1.0, 10.0], "batch_size": [16, 32, 128, 1000],
             "activation": ["relu", "tanh", "sigmoid", "gelu", "elu"]}
MORE_AXES = {"scaler": ["none", "standard", "minmax"], "optimizer": ["adam", "sgd", "rmsprop"],
             "schedule": ["constant", "plateau"]}
MAX_SEEDS = 20


def grid_study(target: int):
    """A grid of about `target` runs: 25 learning rates, clipping, batch size, activation, then
    scaler, optimizer and schedule as needed, and the seeds that make up the rest."""
    axes = dict(BASE_AXES)
    configs = math.prod(len(v) for v in axes.values())
    for name, values in MORE_AXES.items():
        if target / configs <= MAX_SEEDS:
            break
        axes[name] = values
        configs *= len(values)
    seeds = max(1, round(target / configs))
    grid = "\n".join(f"{name} = {json.dumps(values)}" for name, values in axes.items())
    text = f'''[study]
name = "bench-driver"
example = "exploding_gradients"
epochs = 2
seeds = {list(range(seeds))}
[grid]
{grid}
'''
    return parse(text, "bench-driver.toml", max_runs=configs * seeds)


def session(study, results):
    TimedPool.worker_seconds = 0.0
    t0 = time.perf_counter()
    summary = driver.run(study, results, pool=TimedPool(study, InstantEngine()))
    return summary, time.perf_counter() - t0, TimedPool.worker_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000, help="about this many planned runs (default 20000)")
    ap.add_argument("--results", default=None, help="results directory (default: a temporary one, removed)")
    ap.add_argument("--session", action="store_true",
                    help="run (or resume) the study once, untimed, keeping --results (the resume test's driver)")
    args = ap.parse_args()
    results = Path(args.results or tempfile.mkdtemp(prefix="bench-driver-"))
    study = grid_study(args.runs)
    n = len(study.plan())
    if args.session:
        summary, _, _ = session(study, results)
        print(f"ran {summary.ran}, already recorded {summary.already_done} of {n}")
        return
    try:
        summary, wall, worker = session(study, results)
        assert summary.ran == n, (summary.ran, n)
        driver_s = wall - worker
        p = summary.phases
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()}, {platform.system()} {platform.release()}, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"planned runs: {n}; session wall {wall:.1f} s, of which workers' share {worker:.1f} s")
        print(f"{'phase':<28}{'seconds':>10}{'ms per run':>12}")
        rows = [("start (read done, Optuna)", p["start"]), ("propose (grid sampler)", p["propose"]),
                ("write (Parquet parts)", p["write"]), ("record (Optuna journal)", p["record"]),
                ("collect (bookkeeping)", p["collect"]), ("maps (map/boundary.parquet)", p["maps"]),
                ("rest of the loop", driver_s - sum(p.values()))]
        for name, sec in rows:
            print(f"{name:<28}{sec:>10.2f}{sec / n * 1000:>12.3f}")
        print(f"{'driver total':<28}{driver_s:>10.2f}{driver_s / n * 1000:>12.3f}")
        summary2, wall2, _ = session(study, results)
        assert summary2.ran == 0
        print(f"resume of the finished study (nothing to train): {wall2:.1f} s")
        print(f"driver overhead: {driver_s / n * 1000:.3f} ms per run at {n} runs; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    finally:
        if args.results is None:
            shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    main()
