"""What runs on a worker, and how many workers the cluster holds.

`execute` is the whole of a worker's job: train a batch with an engine, judge
each run, and yield its rows as soon as they exist. Workers never touch the
study storage.

`Worker` is the Ray actor around it. Its process imports TensorFlow once
(`engines.runtime.import_tensorflow`: GPU memory growth on, the CPU thread count of
its slot) and then trains batch after batch. `describe()` says where it runs.

`place` sizes the workers from the resources of the cluster's live nodes: one
actor per GPU (`num_gpus=1`, so Ray sets the actor's CUDA_VISIBLE_DEVICES
before TensorFlow is imported in it), or one per `cpus_per_worker` CPUs when
the cluster has no GPU:

    >>> from sweep.driver.workers import place
    >>> place([{"CPU": 8.0}, {"CPU": 3.0}], cpus_per_worker=2)
    Placement(count=5, options={'num_cpus': 2, 'num_gpus': 0}, threads=2)
    >>> place([{"CPU": 16.0, "GPU": 2.0}], cpus_per_worker=2)
    Placement(count=2, options={'num_gpus': 1, 'num_cpus': 1}, threads=None)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Sequence

from ..engines import Engine
from ..results.reports import rows_for
from ..spec import Run, Study

RunRows = tuple[dict, list[dict]]  # (trials row, curve rows)


def as_engine(engine: str | Engine) -> Engine:
    """The engine itself, or the one a study file names (`engine = "keras"`).

    Engine modules are imported here, not in `engines`, which they import: no cycle."""
    if not isinstance(engine, str):
        return engine
    if engine == "keras":
        from ..engines.keras_engine import KerasEngine

        return KerasEngine()
    if engine == "population":
        from ..engines.population import PopulationEngine

        return PopulationEngine()
    raise ValueError(f"unknown engine {engine!r}")


def engine_capacity(study: Study, engine: Engine) -> int:
    """Runs the engine trains at once on this worker (its `capacity`), 0 when it does not say."""
    capacity = getattr(engine, "capacity", None)
    return int(capacity(study)) if capacity else 0


def engine_name(engine: str | Engine) -> str:
    return engine if isinstance(engine, str) else engine.name


def execute(study: Study, runs: Sequence[Run], engine: str | Engine, worker: str = "local",
            versions: tuple[str, str] | None = None) -> Iterator[RunRows]:
    """Train `runs` and yield each run's rows as soon as they exist.

    An engine with `batched = False` gets one run at a time, so a batch streams run by
    run; otherwise the whole batch is one `train` call. Whatever raises, in the engine
    or in judging its outcome, becomes that run's `error` row."""
    eng = as_engine(engine)
    groups = [list(runs)] if getattr(eng, "batched", True) else [[r] for r in runs]
    for group in groups:
        started_at = datetime.now(timezone.utc)
        try:
            outcomes = list(eng.train(study, group))
            if len(outcomes) != len(group):
                raise RuntimeError(f"engine {eng.name!r} returned {len(outcomes)} outcomes for {len(group)} runs")
        except Exception as exc:  # the whole group failed: each of its runs is an `error` row
            outcomes = [exc] * len(group)
        for run, outcome in zip(group, outcomes):
            try:
                rows = rows_for(study, run, outcome, worker=worker, started_at=started_at, versions=versions)
            except Exception as exc:
                rows = rows_for(study, run, exc, worker=worker, started_at=started_at, versions=versions)
            yield rows


class Worker:
    """A Ray actor's state: TensorFlow set up once, then batch after batch."""

    def __init__(self, study: Study, engine: str | Engine, threads: int | None):
        from ..engines.runtime import import_tensorflow

        tf = import_tensorflow(threads)
        import keras
        import ray

        gpus = tf.config.list_physical_devices("GPU")
        self.study, self.engine = study, as_engine(engine)
        self.versions = (tf.__version__, keras.__version__)
        ctx = ray.get_runtime_context()
        gpu_ids = ctx.get_accelerator_ids().get("GPU") or []
        self.name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{','.join(gpu_ids)}" if gpu_ids else "")
        self.info = {"name": self.name, "pid": os.getpid(), "node": socket.gethostname(),
                     "node_id": ctx.get_node_id(), "gpu_ids": gpu_ids,
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "tf_gpus": [g.name for g in gpus], "versions": self.versions,
                     "batched": getattr(self.engine, "batched", True),
                     "capacity": engine_capacity(study, self.engine)}

    def describe(self) -> dict:
        return self.info

    def run(self, runs: Sequence[Run]) -> Iterator[RunRows]:
        yield from execute(self.study, runs, self.engine, worker=self.name, versions=self.versions)


class WorkerStartError(RuntimeError):
    """No worker could be started: TensorFlow or the engine fails to load on the cluster,
    or no node has room for one."""


@dataclass(frozen=True)
class Placement:
    count: int              # actors the cluster holds
    options: dict           # each actor's Ray resources
    threads: int | None     # TensorFlow CPU threads per actor; None: TensorFlow's default


def place(nodes: list[dict], cpus_per_worker: float) -> Placement:
    """The workers that `nodes` (each node's Ray resources) hold."""
    gpus = sum(int(r.get("GPU", 0)) for r in nodes)
    if gpus:
        # A GPU actor also holds one CPU: its input pipeline and Python run there.
        return Placement(gpus, {"num_gpus": 1, "num_cpus": 1}, None)
    n = sum(int(r.get("CPU", 0) // cpus_per_worker) for r in nodes)
    if n < 1:
        raise WorkerStartError(f"--cpus-per-worker {cpus_per_worker}: no node of the cluster has that many "
                               f"CPUs (nodes: {[r.get('CPU', 0) for r in nodes]})")
    return Placement(n, {"num_cpus": cpus_per_worker, "num_gpus": 0}, max(1, int(cpus_per_worker)))


def live_nodes() -> list[dict]:
    """The resources of the connected Ray cluster's live nodes, as they are now."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
