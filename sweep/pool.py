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
    >>> from sweep.pool import LocalPool
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> with LocalPool(study, "keras") as pool:
    ...     pool.submit(study.plan())
    ...     [(row, curves)] = pool.wait()
    >>> row["status"] in ("stable", "stalled", "unstable", "diverged", "nan")
    True

How many runs a batch holds is the policy of `batch_size`, with the limit
per engine in `DEFAULT_BATCH_RUNS` when the caller gives none.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol, Sequence

from .engines import Engine
from .spec import Run, Study
from .workers import RunRows, as_engine, execute

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


class Pool(Protocol):
    """What the driver (`study.run`) uses of a pool. Entering it starts its workers;
    leaving it stops them."""

    @property
    def slots(self) -> int:
        """The number of workers."""

    def idle(self) -> int:
        """Workers without a batch: how many batches `submit` takes now."""

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
