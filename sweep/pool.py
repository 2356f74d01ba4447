"""Where runs are trained: a batch of runs in, their report rows out.

`execute` is the whole of a worker's job: train the batch with an engine,
judge each run, and return its rows. Workers never touch the study storage.

    >>> from sweep.spec import parse
    >>> from sweep.pool import LocalPool
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> with LocalPool(study, "keras") as pool:
    ...     [(batch, results)] = list(pool.imap([study.plan()]))
    >>> results[0][0]["status"] in ("stable", "stalled", "unstable", "diverged", "nan")
    True
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Iterator, Sequence

from .engines import get_engine
from .reports import rows_for
from .spec import Run, Study

RunRows = tuple[dict, list[dict]]  # (trials row, curve rows)


def execute(study: Study, runs: Sequence[Run], engine: str, worker: str = "local") -> list[RunRows]:
    started_at = datetime.now(timezone.utc)
    outcomes = get_engine(engine).train(study, runs)
    return [rows_for(study, run, outcome, worker=worker, started_at=started_at)
            for run, outcome in zip(runs, outcomes)]


class LocalPool:
    """Trains in this process, one batch after another."""

    def __init__(self, study: Study, engine: str):
        self.study, self.engine = study, engine

    def imap(self, batches: Iterable[Sequence[Run]]) -> Iterator[tuple[Sequence[Run], list[RunRows]]]:
        for batch in batches:
            yield batch, execute(self.study, batch, self.engine)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
