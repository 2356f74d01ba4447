"""Where runs are trained: batches of runs go to workers, report rows come back.

`execute` is the whole of a worker's job: train a batch with an engine,
judge each run, and yield its rows as soon as they exist. Workers never
touch the study storage.

Two pools share one small interface (`slots`, `idle()`, `submit(runs)`,
`wait()`, used as a context manager); every submitted run comes back from
`wait()` exactly once, as a row:

* `RayPool`: Ray actors, one per GPU (`num_gpus=1`, so Ray sets the actor's
  CUDA_VISIBLE_DEVICES before TensorFlow is imported in it), or one per
  `cpus_per_worker` CPUs when the cluster has no GPU. TensorFlow is imported
  once per actor. Faults end as rows, never as a stopped sweep: a run that
  raises is `error` with the message; a run that outlives the study's
  `timeout` is `timeout` (its actor is killed and replaced, the rest of its
  batch runs again); an actor that dies has its unfinished runs run again on a
  fresh actor, and a run during which actors died `max_deaths` times is
  `error`.
* `LocalPool`: trains in this process, one batch per `wait()`, no timeout.
  For tests, the driver benchmark, and debugging (a breakpoint in an engine
  works here).

    >>> from sweep.spec import parse
    >>> from sweep.pool import LocalPool
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> with LocalPool(study, "keras") as pool:
    ...     pool.submit(study.plan())
    ...     [(row, curves)] = pool.wait()
    >>> row["status"] in ("stable", "stalled", "unstable", "diverged", "nan")
    True
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

from .engines import Engine
from .reports import rows_for
from .spec import Run, Study

RunRows = tuple[dict, list[dict]]  # (trials row, curve rows)

# Runs per batch when the caller does not say: the keras engine trains one run at a
# time (a batch only saves round trips); the population engine trains a batch at once.
DEFAULT_BATCH_RUNS = {"keras": 4, "population": 512}


def as_engine(engine: str | Engine) -> Engine:
    """The engine itself, or the one a study file names (`engine = "keras"`).

    Engine modules are imported here, not in `engines`, which they import: no cycle."""
    if not isinstance(engine, str):
        return engine
    if engine == "keras":
        from .engines.keras_engine import KerasEngine

        return KerasEngine()
    if engine == "population":
        from .engines.population import PopulationEngine

        return PopulationEngine()
    raise ValueError(f"unknown engine {engine!r}")


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


class LocalPool:
    """Trains in this process: `wait()` trains the oldest submitted batch."""

    slots = 1

    def __init__(self, study: Study, engine: str | Engine):
        self.study, self.engine = study, as_engine(engine)
        self.queue: deque[Sequence[Run]] = deque()

    def idle(self) -> int:
        return 0 if self.queue else 1

    def submit(self, runs: Sequence[Run]) -> None:
        self.queue.append(runs)

    def wait(self) -> list[RunRows]:
        return list(execute(self.study, self.queue.popleft(), self.engine)) if self.queue else []

    def __enter__(self) -> "LocalPool":
        from .cluster import import_tensorflow

        import_tensorflow()
        return self

    def __exit__(self, *exc) -> None:
        self.queue.clear()


class Worker:
    """A Ray actor's state: TensorFlow set up once, then batch after batch."""

    def __init__(self, study: Study, engine: str | Engine, threads: int | None):
        from .cluster import import_tensorflow

        tf = import_tensorflow(threads)
        import keras

        gpus = tf.config.list_physical_devices("GPU")
        self.study, self.engine = study, as_engine(engine)
        self.versions = (tf.__version__, keras.__version__)
        import ray

        ctx = ray.get_runtime_context()
        gpu_ids = ctx.get_accelerator_ids().get("GPU") or []
        cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{','.join(gpu_ids)}" if gpu_ids else "")
        self.info = {"name": self.name, "pid": os.getpid(), "node": socket.gethostname(),
                     "node_id": ctx.get_node_id(), "gpu_ids": gpu_ids,
                     "cuda_visible_devices": cuda, "tf_gpus": [g.name for g in gpus],
                     "versions": self.versions, "batched": getattr(self.engine, "batched", True)}

    def describe(self) -> dict:
        return self.info

    def run(self, runs: Sequence[Run]) -> Iterator[RunRows]:
        yield from execute(self.study, runs, self.engine, worker=self.name, versions=self.versions)


@dataclass
class _Slot:
    actor: Any
    starting: Any = None            # the describe() ref while the actor starts
    info: dict = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    gen: Any = None                 # the streaming generator of the batch in flight
    done: int = 0                   # runs of the batch already returned
    clock: float = 0.0              # when the current run (or group) started


class WorkerStartError(RuntimeError):
    """No worker could be started: TensorFlow or the engine fails to load on the cluster."""


class RayPool:
    """One Ray actor per GPU, else per `cpus_per_worker` CPUs, on the connected Ray cluster."""

    def __init__(self, study: Study, engine: str | Engine, *, cpus_per_worker: float = 1,
                 max_deaths: int = 2, max_start_failures: int = 3):
        self.study, self.engine = study, engine
        self.cpus_per_worker, self.max_deaths = cpus_per_worker, max_deaths
        self.max_start_failures = max_start_failures
        self.timeout = study.timeout
        self.slots_: list[_Slot] = []
        self.retry: deque[Run] = deque()
        self.deaths: Counter = Counter()
        self.start_failures = 0
        self.options: dict = {}

    # --- sizing -------------------------------------------------------------------------
    def plan_actors(self) -> tuple[int, dict, int | None]:
        """(number of actors, their Ray options, TF threads each) for the cluster as it is now."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpus = sum(int(r.get("GPU", 0)) for r in nodes)
        if gpus:
            # A GPU actor also holds one CPU: its input pipeline and Python run there.
            return gpus, {"num_gpus": 1, "num_cpus": 1}, None
        cpw = self.cpus_per_worker
        n = sum(int(r.get("CPU", 0) // cpw) for r in nodes)
        if n < 1:
            raise WorkerStartError(f"--cpus-per-worker {cpw}: no node of the cluster has that many CPUs "
                                   f"(nodes: {[r.get('CPU', 0) for r in nodes]})")
        return n, {"num_cpus": cpw, "num_gpus": 0}, max(1, int(cpw))

    @property
    def slots(self) -> int:
        return len(self.slots_)

    def __enter__(self) -> "RayPool":
        import ray

        n, self.options, self.threads = self.plan_actors()
        self.actor_class = ray.remote(Worker)
        self.slots_ = [self._start() for _ in range(n)]
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for slot in self.slots_:
            ray.kill(slot.actor, no_restart=True)
        self.slots_ = []

    def _start(self) -> _Slot:
        actor = self.actor_class.options(**self.options, max_restarts=0).remote(
            self.study, self.engine, self.threads)
        return _Slot(actor=actor, starting=actor.describe.remote())

    def _replace(self, slot: _Slot) -> bool:
        """A fresh actor in the slot of a dead or stopped one; False when the cluster has no
        room for it any more (a node left), and the slot is gone instead: a replacement that
        Ray can never place would hold its batch forever."""
        import ray

        ray.kill(slot.actor, no_restart=True)
        if len(self.slots_) > self._capacity():
            self.slots_.remove(slot)
            if not self.slots_:
                raise WorkerStartError("no node with room for a worker is left in the cluster; the runs "
                                       "committed so far are kept: run the same command again to resume")
            return False
        fresh = self._start()
        slot.__dict__.update(fresh.__dict__)
        slot.info, slot.runs, slot.gen, slot.done = {}, [], None, 0
        return True

    def _capacity(self) -> int:
        """How many actors the cluster's live nodes hold now."""
        try:
            return self.plan_actors()[0]
        except WorkerStartError:
            return 0

    # --- the interface ------------------------------------------------------------------
    def idle(self) -> int:
        """Actors without a batch, started or starting (none while re-runs are waiting)."""
        if self.retry:
            return 0
        return sum(1 for s in self.slots_ if not s.runs)

    def submit(self, runs: Sequence[Run]) -> None:
        """Give a batch to an actor without one; it starts when the actor has started."""
        slot = next(s for s in self.slots_ if not s.runs)
        slot.runs, slot.done = list(runs), 0
        if slot.starting is None:
            self._launch(slot)

    def _launch(self, slot: _Slot) -> None:
        slot.clock = time.monotonic()
        slot.gen = slot.actor.run.remote(slot.runs)

    def wait(self) -> list[RunRows]:
        """Block until submitted runs have rows or an actor became free; return the rows.

        [] means an actor is free for a batch, or nothing is in flight."""
        import ray

        while True:
            waitables = {}
            for s in self.slots_:
                if s.starting is not None:
                    waitables[s.starting] = s
                elif s.gen is not None:
                    waitables[s.gen] = s
            if not waitables:
                return []
            timeout = None
            if self.timeout is not None:
                clocks = [s.clock for s in self.slots_ if s.gen is not None]
                if clocks:
                    timeout = max(0.0, min(clocks) + self.timeout - time.monotonic())
            ready, _ = ray.wait(list(waitables), num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(list(waitables), num_returns=len(waitables), timeout=0)
            out: list[RunRows] = []
            for w in ready:
                slot = waitables[w]
                if w is slot.starting:
                    self._started(slot)
                else:
                    out.extend(self._collect(slot))
            freed = sum(1 for w in ready if waitables[w].gen is None and not waitables[w].runs)
            out.extend(self._enforce_timeout())
            self._dispatch_retries()
            if out or (freed and self.idle()):
                return out

    # --- faults -------------------------------------------------------------------------
    def _started(self, slot: _Slot) -> None:
        import ray

        try:
            slot.info = ray.get(slot.starting)
        except ray.exceptions.RayError as exc:
            self.start_failures += 1
            if self.start_failures >= self.max_start_failures:
                raise WorkerStartError(f"a worker failed to start {self.start_failures} times in a row: "
                                       f"{_message(exc)}") from None
            runs = slot.runs
            if self._replace(slot):
                slot.runs = runs
            else:
                self.retry.extend(runs)
            return
        slot.starting = None
        self.start_failures = 0
        if slot.runs:
            self._launch(slot)

    def _current(self, slot: _Slot) -> list[Run]:
        """The run (or, for a batched engine, the group) the actor is training now."""
        rest = slot.runs[slot.done:]
        return rest if slot.info.get("batched", True) else rest[:1]

    def _collect(self, slot: _Slot) -> list[RunRows]:
        """Everything the slot's batch has ready; on a dead actor, what to re-run."""
        import ray

        out = []
        while True:
            try:
                ref = next(slot.gen)
            except StopIteration:
                slot.runs, slot.gen, slot.done = [], None, 0
                return out
            except ray.exceptions.RayError as exc:
                return out + self._died(slot, exc)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayError as exc:
                return out + self._died(slot, exc)
            out.append(rows)
            slot.done += 1
            slot.clock = time.monotonic()
            ready, _ = ray.wait([slot.gen], timeout=0)
            if not ready:
                return out

    def _died(self, slot: _Slot, exc: BaseException) -> list[RunRows]:
        current = self._current(slot)
        rest = slot.runs[slot.done + len(current):]
        out = []
        for run in current:
            self.deaths[run.key] += 1
            if self.deaths[run.key] >= self.max_deaths:
                out.append(self._fault_row(slot, run, "error", f"worker died {self.deaths[run.key]} times "
                                           f"while training this run; last: {_message(exc)}"))
            else:
                self.retry.append(run)
        self.retry.extend(rest)
        self._replace(slot)
        return out

    def _enforce_timeout(self) -> list[RunRows]:
        if self.timeout is None:
            return []
        out = []
        now = time.monotonic()
        for slot in list(self.slots_):  # a slot may go (`_replace`)
            if slot.gen is None or now - slot.clock < self.timeout:
                continue
            current = self._current(slot)
            for run in current:
                out.append(self._fault_row(slot, run, "timeout", f"still training after the study's timeout "
                                           f"of {self.timeout:g} s on worker {slot.info.get('name', '?')}"))
            self.retry.extend(slot.runs[slot.done + len(current):])
            self._replace(slot)
        return out

    def _dispatch_retries(self) -> None:
        for slot in self.slots_:
            if not self.retry:
                return
            if not slot.runs:
                batch = [self.retry.popleft() for _ in range(min(len(self.retry), _share(len(self.retry), self.slots)))]
                self.submit(batch)

    def _fault_row(self, slot: _Slot, run: Run, status: str, message: str) -> RunRows:
        exc = TimeoutError(message) if status == "timeout" else RuntimeError(message)
        row, curves = rows_for(self.study, run, exc, worker=slot.info.get("name", ""), status=status,
                               versions=slot.info.get("versions") or ("", ""))
        row["engine"] = engine_name(self.engine)
        row["node"] = slot.info.get("node", row["node"])
        return row, curves


def _share(n: int, slots: int) -> int:
    return max(1, math.ceil(n / max(1, slots)))


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
