"""Where runs are trained: a pool takes batches of runs and gives back report rows.

Every pool has the small interface of `Pool`, and every submitted run comes
back from `wait()` exactly once, as a row:

* `raypool.RayPool`: Ray actors, one per GPU or per `cpus_per_worker` CPUs
  (`workers.place`); a run's faults (raising, hanging, its actor dying) end
  as rows, never as a stopped sweep.
* `LocalPool`: trains in this process, one batch per `wait()`, no timeout.
  For tests, the driver benchmark, and debugging (a breakpoint in an engine
  works here).

    >>> from sweep.spec import parse
    >>> from sweep.driver.pool import LocalPool
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> with LocalPool(study, "keras") as pool:
    ...     pool.submit(study.plan())
    ...     [(row, curves)] = pool.wait()
    >>> row["status"] in ("stable", "stalled", "unstable", "diverged", "nan")
    True

How many runs a batch holds is the policy of `batch_size`: the waiting runs
shared among the idle workers, at most what the worker trains at once (the
capacity its engine reports: K per population times populations at a time)
or the engine's `DEFAULT_BATCH_RUNS` if more, or the caller's limit. Which runs
a batch holds is `Waiting`'s: runs of one program key together, so that the
engine's populations are as large as the worker allows.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Hashable, Iterable, Protocol, Sequence

from ..engines import Engine
from ..spec import Run, Study
from .workers import RunRows, as_engine, engine_capacity, execute

# Runs per batch when the caller does not say: the keras engine trains one run at a
# time (a batch only saves round trips); the population engine trains a batch at once.
DEFAULT_BATCH_RUNS = {"keras": 4, "population": 512}


def batch_size(waiting: int, idle: int, limit: int) -> int:
    """Runs in the next batch: the `waiting` runs shared evenly among `idle` workers, at
    least one, at most `limit`, so that a short queue still keeps every worker busy.

    >>> batch_size(10, idle=4, limit=512), batch_size(5000, idle=2, limit=512), batch_size(3, idle=8, limit=4)
    (3, 512, 1)
    """
    return min(limit, max(1, math.ceil(waiting / max(1, idle))))


def batch_limit(engine: str, capacity: int, requested: int | None = None) -> int:
    """The most runs a batch holds: the caller's `requested`, else what the worker trains at once
    (`capacity`) or the engine's default if that is more (a CPU worker's capacity is a few
    dozen runs; a batch of several populations saves round trips).

    >>> batch_limit("population", capacity=8192), batch_limit("population", 96), batch_limit("keras", 0, 3)
    (8192, 512, 3)
    """
    return requested or max(DEFAULT_BATCH_RUNS.get(engine, 8), capacity)


class Waiting:
    """Runs waiting for a worker, by program key (`key`, the engine's `program_key`; one group
    without it). A batch takes from the group with the most runs waiting first, so that a group
    reaches its worker whole, or in parts as large as the batch.

    >>> w = Waiting(lambda run: run % 2)
    >>> w.extend(range(7)); w.take(5), len(w)
    ([0, 2, 4, 6, 1], 2)
    """

    def __init__(self, key: Callable[[Run], Hashable] | None = None):
        self.key = key
        self.groups: dict[Hashable, deque[Run]] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def extend(self, runs: Iterable[Run]) -> None:
        for run in runs:
            self.groups.setdefault(self.key(run) if self.key else None, deque()).append(run)
            self.n += 1

    def take(self, n: int) -> list[Run]:
        out: list[Run] = []
        while len(out) < n and self.groups:
            key = max(self.groups, key=lambda k: len(self.groups[k]))
            group = self.groups[key]
            out.extend(group.popleft() for _ in range(min(n - len(out), len(group))))
            if not group:
                del self.groups[key]
        self.n -= len(out)
        return out


class Pool(Protocol):
    """What the driver (`session.run`) uses of a pool. Entering it starts its workers;
    leaving it stops them."""

    @property
    def slots(self) -> int:
        """The number of workers."""

    def idle(self) -> int:
        """Workers without a batch: how many batches `submit` takes now."""

    def capacity(self) -> int:
        """Runs the idle worker that `submit` gives the next batch to trains at once, as its
        engine reports it (`capacity(study)`); 0 when the engine does not say."""

    def submit(self, runs: Sequence[Run]) -> None:
        """Give a batch to an idle worker."""

    def wait(self) -> list[RunRows]:
        """Rows of submitted runs as they come; [] when a worker became free or nothing is in flight."""

    def __enter__(self) -> "Pool": ...

    def __exit__(self, *exc) -> None: ...


class LocalPool:
    """Trains in this process: `wait()` trains the oldest submitted batch."""

    slots = 1

    def __init__(self, study: Study, engine: str | Engine):
        self.study, self.engine = study, as_engine(engine)
        self.queue: deque[Sequence[Run]] = deque()
        self._capacity: int | None = None

    def capacity(self) -> int:
        if self._capacity is None:
            self._capacity = engine_capacity(self.study, self.engine)
        return self._capacity

    def idle(self) -> int:
        return 0 if self.queue else 1

    def submit(self, runs: Sequence[Run]) -> None:
        self.queue.append(runs)

    def wait(self) -> list[RunRows]:
        return list(execute(self.study, self.queue.popleft(), self.engine)) if self.queue else []

    def __enter__(self) -> "LocalPool":
        from ..engines.runtime import import_tensorflow

        import_tensorflow()
        return self

    def __exit__(self, *exc) -> None:
        self.queue.clear()
