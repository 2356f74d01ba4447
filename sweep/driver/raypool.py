"""The Ray pool: batches of runs dispatched to worker actors, every run back once as a row.

Each actor sits in a `Slot` with the batch it trains; `Actors` keeps one per
worker the cluster holds (`workers.place`). `RayPool.wait` waits on all of
them at once, an actor starting or a batch streaming rows, and turns what
happens into rows. Faults end as rows, never as a stopped sweep:

* a run that raises is an `error` row with the message (`workers.execute`);
* a run that outlives the study's `timeout` is a `timeout` row; its actor is
  killed and replaced, and the rest of its batch runs again;
* an actor that dies has its unfinished runs run again on a fresh actor, and
  a run during which actors died `max_deaths` times is an `error` row;
* when a node leaves, a dead actor the cluster has no room for any more is not
  replaced: its slot goes, so its runs go to the actors that are left;
* an actor that fails to start is replaced; `max_start_failures` failures in
  a row (TensorFlow or the engine does not load) stop the sweep with
  `WorkerStartError`, as does a cluster with no room for any worker.

Runs cut short by a fault wait in `Faults.retry` and go out, before any new
batch, sized by `pool.batch_size`.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..engines import Engine
from ..engines import xla
from ..results.reports import rows_for
from ..spec import Run, Study
from .pool import batch_size
from .workers import RunRows, Worker, WorkerStartError, engine_name, live_nodes, place


@dataclass
class Slot:
    """One actor and the batch it holds. `done` counts the batch's runs already returned;
    `clock` is when the run (or group) it trains now started, for the timeout."""

    actor: Any
    starting: Any = None            # the describe() ref while the actor starts
    info: dict = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    gen: Any = None                 # the streaming generator of the batch in flight
    done: int = 0
    clock: float = 0.0

    def launch(self) -> None:
        self.clock = time.monotonic()
        self.gen = self.actor.run.remote(self.runs)

    def current(self) -> list[Run]:
        """The run (or, for a batched engine, the group) the actor is training now."""
        rest = self.runs[self.done:]
        return rest if self.info.get("batched", True) else rest[:1]

    def after_current(self) -> list[Run]:
        return self.runs[self.done + len(self.current()):]

    def collect(self) -> tuple[list[RunRows], BaseException | None]:
        """The rows the batch has ready, and the Ray error that ended it if its actor died.
        A batch that has returned all its rows leaves the slot free."""
        import ray

        out = []
        while True:
            try:
                rows = ray.get(next(self.gen))
            except StopIteration:
                self.runs, self.gen, self.done = [], None, 0
                return out, None
            except ray.exceptions.RayError as exc:
                return out, exc
            out.append(rows)
            self.done += 1
            self.clock = time.monotonic()
            if not ray.wait([self.gen], timeout=0)[0]:
                return out, None


class Actors:
    """The pool's actors, one `Slot` each: as many as the cluster holds when the pool
    opens; a dead or stopped one replaced by a fresh actor while the cluster has room."""

    def __init__(self, study: Study, engine: str | Engine, cpus_per_worker: float, max_start_failures: int):
        self.study, self.engine, self.cpus_per_worker = study, engine, cpus_per_worker
        self.max_start_failures = max_start_failures
        self.start_failures = 0     # in a row
        self.slots: list[Slot] = []

    def open(self) -> None:
        import ray

        self.placement = place(live_nodes(), self.cpus_per_worker)
        self.worker_class = ray.remote(Worker)
        self.slots = [self._start() for _ in range(self.placement.count)]

    def close(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots = []

    def _start(self) -> Slot:
        # Workers of a cluster do not inherit the driver's environment: the compile cache's
        # setting, if the user gave one, goes with them.
        setting = {k: os.environ[k] for k in (xla.ENV,) if k in os.environ}
        env = {"runtime_env": {"env_vars": setting}} if setting else {}
        actor = self.worker_class.options(**self.placement.options, **env, max_restarts=0).remote(
            self.study, self.engine, self.placement.threads)
        return Slot(actor=actor, starting=actor.describe.remote())

    def started(self, slot: Slot) -> bool:
        """Whether the slot's actor started (its `info` is then set); raises WorkerStartError
        when actors failed to start `max_start_failures` times in a row."""
        import ray

        try:
            slot.info = ray.get(slot.starting)
        except ray.exceptions.RayError as exc:
            self.start_failures += 1
            if self.start_failures >= self.max_start_failures:
                raise WorkerStartError(f"a worker failed to start {self.start_failures} times in a row: "
                                       f"{error_line(exc)}") from None
            return False
        slot.starting = None
        self.start_failures = 0
        return True

    def replace(self, slot: Slot) -> bool:
        """A fresh actor, without a batch, in the slot of a dead or stopped one; False when the
        cluster has no room for it any more (a node left), and the slot is gone instead: a
        replacement that Ray can never place would hold its batch forever."""
        import ray

        ray.kill(slot.actor, no_restart=True)
        try:
            room = place(live_nodes(), self.cpus_per_worker).count
        except WorkerStartError:
            room = 0
        if len(self.slots) > room:
            self.slots.remove(slot)
            if not self.slots:
                raise WorkerStartError("no node with room for a worker is left in the cluster; the runs "
                                       "committed so far are kept: run the same command again to resume")
            return False
        vars(slot).update(vars(self._start()))
        return True


class Faults:
    """When a batch is cut short (its actor died, or a run outlived the study's `timeout`),
    and what becomes of its runs then: a row each, or a place in `retry` to train again.
    Replacing the actor is the caller's part (`Actors.replace`)."""

    def __init__(self, study: Study, engine: str | Engine, max_deaths: int):
        self.study, self.engine, self.max_deaths = study, engine, max_deaths
        self.timeout = study.timeout
        self.retry: deque[Run] = deque()    # runs to train again, before any new batch
        self.deaths: Counter = Counter()    # per run key: actors that died while training it

    def seconds_left(self, slots: list[Slot]) -> float | None:
        """Seconds until the longest-running run in flight reaches the timeout; None: no limit."""
        clocks = [s.clock for s in slots if s.gen is not None]
        if self.timeout is None or not clocks:
            return None
        return max(0.0, min(clocks) + self.timeout - time.monotonic())

    def overdue(self, slots: list[Slot]) -> list[Slot]:
        if self.timeout is None:
            return []
        now = time.monotonic()
        return [s for s in slots if s.gen is not None and now - s.clock >= self.timeout]

    def died(self, slot: Slot, exc: BaseException) -> list[RunRows]:
        """The slot's actor died: its current runs train again, or are `error` rows once
        actors died `max_deaths` times under them; the rest of its batch trains again."""
        out = []
        for run in slot.current():
            self.deaths[run.key] += 1
            if self.deaths[run.key] >= self.max_deaths:
                out.append(self._row(slot, run, "error", f"worker died {self.deaths[run.key]} times "
                                     f"while training this run; last: {error_line(exc)}"))
            else:
                self.retry.append(run)
        self.retry.extend(slot.after_current())
        return out

    def timed_out(self, slot: Slot) -> list[RunRows]:
        """The slot's current runs are overdue: `timeout` rows; the rest of its batch trains again."""
        out = [self._row(slot, run, "timeout", f"still training after the study's timeout of {self.timeout:g} s "
                         f"on worker {slot.info.get('name', '?')}") for run in slot.current()]
        self.retry.extend(slot.after_current())
        return out

    def _row(self, slot: Slot, run: Run, status: str, message: str) -> RunRows:
        exc = TimeoutError(message) if status == "timeout" else RuntimeError(message)
        row, curves = rows_for(self.study, run, exc, worker=slot.info.get("name", ""), status=status,
                               versions=slot.info.get("versions") or ("", ""))
        row["engine"] = engine_name(self.engine)
        row["node"] = slot.info.get("node", row["node"])
        return row, curves


class RayPool:
    """The pool on the connected Ray cluster (see the module docstring for its faults).

    Longer than most classes because it is the `pool.Pool` protocol in one place (`idle`,
    `capacity`, `submit`, `wait` and the retries); the actors and the faults live in `Actors`
    and `Faults`, and each method here is short."""

    def __init__(self, study: Study, engine: str | Engine, *, cpus_per_worker: float = 1,
                 max_deaths: int = 2, max_start_failures: int = 3):
        self.actors = Actors(study, engine, cpus_per_worker, max_start_failures)
        self.faults = Faults(study, engine, max_deaths)

    @property
    def slots(self) -> int:
        return len(self.actors.slots)

    def __enter__(self) -> "RayPool":
        self.actors.open()
        return self

    def __exit__(self, *exc) -> None:
        self.actors.close()

    def idle(self) -> int:
        """Actors without a batch, started or starting (none while re-runs are waiting)."""
        return 0 if self.faults.retry else sum(1 for s in self.actors.slots if not s.runs)

    def capacity(self) -> int:
        """The capacity the next batch's actor reported. While every actor without a batch is
        still starting, waits for one of them: its capacity (GPU memory, K) is known only then."""
        import ray

        while True:
            idle = [s for s in self.actors.slots if not s.runs]
            if not idle:
                return 0
            started = [s for s in idle if s.starting is None]
            if started:
                return started[0].info.get("capacity") or 0
            ready, _ = ray.wait([s.starting for s in idle], num_returns=1)
            self._started(next(s for s in idle if s.starting is ready[0]))

    def submit(self, runs: Sequence[Run]) -> None:
        """Give a batch to an actor without one, a started one first (`capacity` spoke of it);
        at a starting actor, the batch starts when the actor has started."""
        slot = min((s for s in self.actors.slots if not s.runs), key=lambda s: s.starting is not None)
        slot.runs, slot.done = list(runs), 0
        if slot.starting is None:
            slot.launch()

    def wait(self) -> list[RunRows]:
        """Block until submitted runs have rows or an actor became free; return the rows.

        [] means an actor is free for a batch, or nothing is in flight."""
        import ray

        while True:
            waitables = {s.starting if s.starting is not None else s.gen: s
                         for s in self.actors.slots if s.starting is not None or s.gen is not None}
            if not waitables:
                return []
            timeout = self.faults.seconds_left(self.actors.slots)
            ready, _ = ray.wait(list(waitables), num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(list(waitables), num_returns=len(waitables), timeout=0)
            out: list[RunRows] = []
            for w in ready:
                slot = waitables[w]
                if w is slot.starting:
                    self._started(slot)
                    continue
                rows, died = slot.collect()
                out.extend(rows)
                if died:
                    out.extend(self.faults.died(slot, died))
                    self.actors.replace(slot)
            freed = sum(1 for w in ready if waitables[w].gen is None and not waitables[w].runs)
            for slot in self.faults.overdue(self.actors.slots):
                out.extend(self.faults.timed_out(slot))
                self.actors.replace(slot)
            self._dispatch_retries()
            if out or (freed and self.idle()):
                return out

    def _started(self, slot: Slot) -> None:
        if self.actors.started(slot):
            if slot.runs:
                slot.launch()
            return
        runs = slot.runs
        if self.actors.replace(slot):
            slot.runs = runs
        else:
            self.faults.retry.extend(runs)

    def _dispatch_retries(self) -> None:
        retry = self.faults.retry
        for slot in self.actors.slots:
            if not retry:
                return
            if not slot.runs:
                n = batch_size(len(retry), self.slots, limit=len(retry))
                self.submit([retry.popleft() for _ in range(n)])


def error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
