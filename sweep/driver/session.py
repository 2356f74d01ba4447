"""The driver: owns the plan, hands batches to the pool, commits rows, records the study.

The plan (which (configuration, seed) runs exist) comes from the study file;
what is done is what `trials/` records. So resuming is running again: runs
already recorded are skipped, the rest are trained. The loop:

    sampler.propose(study, done)  ->  pool.submit(batch) per idle worker
    pool.wait()                   ->  rows, buffered
    every COMMIT_ROWS rows or COMMIT_SECONDS: reports.write_batch, then the Optuna copy

A run is proposed again only when it is neither done nor in flight, so every
planned run is trained once however many workers there are. Rows that were
trained but not yet committed when the driver dies are trained again on
resume; a committed row is never trained again. Optuna's copy is brought
level with the Parquet record when a session starts (`OptunaRecord.reconcile`).
One driver at a time per study directory (a lock the kernel drops if the
driver dies).

    >>> from sweep import spec
    >>> from sweep.driver import session
    >>> from sweep.driver.pool import LocalPool
    >>> s = spec.parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0]', "d.toml")
    >>> import tempfile; results = tempfile.mkdtemp()
    >>> summary = session.run(s, results, pool=LocalPool(s, "keras"))
    >>> summary.ran, session.run(s, results, pool=LocalPool(s, "keras")).ran
    (1, 0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..answers import conditions, effects
from ..catalog import EXAMPLES
from ..engines import Engine
from ..results import faults, maps, rejudge, reports
from ..spec import AXIS_DEFAULTS, Run, Study
from .optuna_journal import JOURNAL
from .optuna_study import OptunaRecord
from .pool import Pool, Waiting, batch_limit, batch_size
from .samplers import DEFAULT_TPE_TRIALS, get_sampler
from .workers import as_engine, engine_name

if TYPE_CHECKING:
    import pyarrow as pa

STUDY_META = "study.json"
LOCK_FILE = ".driver.lock"
# Rows wait in memory until this many or this old, then one part file: fewer, larger
# files for readers, and what a killed driver can lose is bounded (it is trained again).
COMMIT_ROWS = 4096
COMMIT_SECONDS = 5.0


class StudyConflict(Exception):
    """The results directory holds a different plan under the same study name."""


class StudyBusy(Exception):
    """Another driver is running this study."""


class ResultsWriteError(Exception):
    """The results directory stopped taking writes mid-session (full disk, quota, read-only).
    The driver has stopped cleanly: what was committed is intact, the same command resumes."""


# Write failures that mean "no room or no permission": the user can act on them; any other
# OSError is a bug or a fault elsewhere and keeps its traceback.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM})


@dataclass
class Summary:
    study_dir: Path
    planned: int
    already_done: int
    ran: int = 0
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    workers: int = 0
    in_flight: int = 0
    # Seconds the driver spent per phase: propose, write (Parquet), record (Optuna), start.
    phases: Counter = field(default_factory=Counter)
    reconciled: dict = field(default_factory=dict)


def engine_for(study: Study, requested: "str | Engine | None") -> "str | Engine":
    """The engine that trains this study: the one asked for on the command line, else the study's."""
    if requested is not None and not isinstance(requested, str):
        return requested
    return requested or study.engine


def engine_line(study: Study, requested: str | None) -> str:
    """What `sweep run` says at the start about the engine, and, when the population engine
    cannot express the study's model or some of its runs, that they train on the keras engine and why."""
    name = engine_for(study, requested)
    if name != "population":
        return f"engine: {name}"
    note = ""
    if any(v != AXIS_DEFAULTS["precision"] for v in study.grid["precision"]):
        note = " (runs in mixed precision train on the keras engine, run by run: the population engine computes in float32)"
    if study.example in EXAMPLES:  # the catalog's models are all Dense stacks
        return f"engine: population{note}"
    from ..engines.population import PopulationEngine, Unsupported

    first = dataclasses.replace(study.configs()[0], precision=AXIS_DEFAULTS["precision"])
    try:
        PopulationEngine.check(study, Run(0, first, study.seeds[0]))
    except Unsupported as why:
        return f"engine: keras, run by run (the population engine cannot express this model: {why})"
    return f"engine: population{note}"


def planned_runs(study: Study) -> int:
    """How many runs the study will have when finished (boundary: at most this many)."""
    if study.sampler == "tpe":
        return min(study.n_trials or DEFAULT_TPE_TRIALS, len(study.configs())) * len(study.seeds)
    return len(study.plan())


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """Hold the study directory for this driver; the kernel releases it if the driver dies."""
    fh = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StudyBusy(f"{out}: another `sweep run` is running this study; wait for it or stop it") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def prepare_dir(study: Study, results: str | os.PathLike) -> Path:
    """The study's results directory, created and checked writable, its stored plan agreeing, and
    its runs judged by this version's rules (`results.rejudge`)."""
    out = Path(results) / study.name
    # spec.parse allows plain file names only; a Study made in code is held to the same.
    if out.parent != Path(results) or study.name in ("", ".", ".."):
        raise ValueError(f"study name {study.name!r}: not a plain file name, it would leave {results}")
    maps.check_knob_names(study)  # before anything is written: a knob's column must not clash
    meta_path = out / STUDY_META
    digest = study.plan_digest()
    try:
        out.mkdir(parents=True, exist_ok=True)
        # One byte, not zero: an empty file takes no block, so a full disk would pass.
        probe = out / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"x")
        finally:
            probe.unlink(missing_ok=True)
        if not meta_path.exists():
            tmp = meta_path.with_name(f".{STUDY_META}.tmp")
            tmp.write_text(json.dumps({"name": study.name, "example": study.example, "plan_digest": digest,
                                       "source": study.path, "study_toml": _source_text(study)}, indent=1))
            os.replace(tmp, meta_path)
            return out
        stored = json.loads(meta_path.read_text())
    except OSError as exc:
        raise PermissionError(f"{out}: results directory is not writable ({exc.strerror or exc})") from None
    except ValueError as exc:  # not JSON: not a study directory this sweep wrote
        raise StudyConflict(f"{meta_path}: not a study record ({exc}); use another --results directory") from None
    if not isinstance(stored, dict) or stored.get("plan_digest") != digest:
        raise StudyConflict(
            f"{out}: holds study {study.name!r} with a different plan (example, epochs, seeds, grid, "
            f"data_seed, verdict or telemetry changed). Use a new study name or another --results directory.")
    if rejudge.outdated(out):
        with driver_lock(out):
            rejudge.rejudge(out, study)
            # The Optuna copy holds the old statuses as trial attributes: the default journal is
            # dropped and copied again from trials/ when the session reconciles.
            (out / JOURNAL).unlink(missing_ok=True)
    return out


def _source_text(study: Study) -> str:
    try:
        return Path(study.path).read_text(encoding="utf-8")
    except OSError:
        return ""


def run(study: Study, results: str | os.PathLike = "results", *, engine: "str | Engine | None" = None,
        max_trials: int | None = None, address: str | None = None, storage: str | None = None,
        cpus_per_worker: float = 1, batch_runs: int | None = None,
        on_batch: Callable[[Summary, list[dict]], None] | None = None, pool: Pool | None = None) -> Summary:
    """Run (or resume) a study; returns what this session did.

    Without `pool`, trains on Ray: the cluster at `address` (or $RAY_ADDRESS), else a
    private local one (`cluster.ray_cluster`). `on_batch` sees the rows of every
    `pool.wait()`, committed or not yet."""
    out = prepare_dir(study, results)
    try:
        return _session(study, out, engine, max_trials, address, storage, cpus_per_worker, batch_runs,
                        on_batch, pool)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        try:
            recorded = f"{len(reports.done_rows(out))} runs are recorded and intact"
        except Exception:  # the report of the failure must not fail
            recorded = "the runs committed so far are intact"
        where = f" ({exc.filename})" if exc.filename else ""
        raise ResultsWriteError(
            f"{out}: cannot write results: {exc.strerror or exc}{where}. The driver stopped; {recorded}; "
            "runs trained but not yet committed will train again. Make room (or make it writable) and "
            "run the same command to resume.") from None


def _session(study, out, engine, max_trials, address, storage, cpus_per_worker, batch_runs, on_batch,
             pool) -> Summary:
    with driver_lock(out), contextlib.ExitStack() as stack:
        faults.point("start")
        started = time.perf_counter()
        reports.tidy(out)
        done = reports.done_rows(out)
        reports.check_curves(out)
        record = OptunaRecord(out, study, storage)
        summary = Summary(out, planned=planned_runs(study), already_done=len(done))
        summary.reconciled = record.reconcile(done)
        sampler = get_sampler(study.sampler, record.ostudy)
        eng = engine_for(study, engine)
        if pool is None:
            from .cluster import ray_cluster
            from .raypool import RayPool

            stack.enter_context(ray_cluster(address))
            pool = RayPool(study, eng, cpus_per_worker=cpus_per_worker)
        stack.enter_context(pool)
        summary.workers = pool.slots
        summary.phases["start"] = time.perf_counter() - started
        waiting = Waiting(getattr(as_engine(eng), "program_key", None))
        _loop(study, out, done, sampler, pool, record, summary, max_trials,
              lambda: batch_limit(engine_name(eng), pool.capacity(), batch_runs), waiting, on_batch, started)
    # The maps and the answers are views of trials/: rebuilt whole at the end of every session,
    # resumed or not; the answers from the maps' frames, not from the files.
    t0 = time.perf_counter()
    trials = maps.recorded(out, maps.MAP_INPUT)
    map_df, boundary_df = maps.write(out, trials)
    effects.write(out, map_df, boundary_df)
    conditions.write(out, trials)
    faults.point("done")
    summary.phases["maps"] = time.perf_counter() - t0
    summary.seconds = time.perf_counter() - started
    return summary


def _loop(study, out, done, sampler, pool, record, summary, max_trials, limit, pending, on_batch,
          started) -> None:
    scheduled: set[tuple[str, int]] = set()         # proposed and not yet returned
    taken = {int(r["trial"]) for r in done.values()}
    buffer = _RowBuffer(schema=reports.trial_schema(study))
    sampler_waits = False                            # nothing new until a result arrives
    phases = summary.phases
    stuck = False
    while True:
        budget = None if max_trials is None else max_trials - summary.ran - len(scheduled)
        if not pending and not sampler_waits and pool.idle() and (budget is None or budget > 0):
            t0 = time.perf_counter()
            new = _propose(study, done, sampler, scheduled, taken, budget)
            phases["propose"] += time.perf_counter() - t0
            pending.extend(new)
            sampler_waits = not new
            if new:
                faults.point("propose")
        submitted = False
        while pending and pool.idle():
            pool.submit(pending.take(batch_size(len(pending), pool.idle(), limit())))
            submitted = True
        summary.in_flight = len(scheduled)
        if not scheduled:
            break
        finished = pool.wait()  # rows, or [] when a worker became free
        if not finished:
            if stuck and not submitted:
                raise RuntimeError(f"the worker pool holds none of the {len(scheduled)} runs in flight")
            stuck = True
            continue
        stuck = False
        t0 = time.perf_counter()
        rows = []
        for row, curves in finished:
            key = (row["config_id"], int(row["seed"]))
            scheduled.discard(key)
            done[key] = reports.done_row(row)
            rows.append(row)
            buffer.add(row, curves)
        faults.point("collected")
        sampler_waits = False
        summary.ran += len(rows)
        summary.counts.update(r["status"] for r in rows)
        summary.in_flight = len(scheduled)
        phases["collect"] += time.perf_counter() - t0
        if buffer.due() or not scheduled:
            buffer.commit(out, record, done, phases)
        summary.seconds = time.perf_counter() - started
        if on_batch:
            on_batch(summary, rows)
    if buffer.rows:
        buffer.commit(out, record, done, phases)


def _propose(study: Study, done: dict, sampler, scheduled: set, taken: set, budget: int | None) -> list[Run]:
    """The sampler's next runs that are neither done nor in flight (at most `budget`), marked
    scheduled; a run whose trial number is taken gets the next free one."""
    new = []
    for r in sampler.propose(study, done):
        if r.key in done or r.key in scheduled:
            continue
        if r.trial in taken:  # a sampler numbering from `done` alone while runs are in flight
            r = dataclasses.replace(r, trial=max(taken) + 1)
        taken.add(r.trial)
        scheduled.add(r.key)
        new.append(r)
        if budget is not None and len(new) >= budget:
            break
    return new


@dataclass
class _RowBuffer:
    """Rows trained but not yet committed, with their curves."""

    schema: "pa.Schema"  # the study's trials columns (`reports.trial_schema`)
    rows: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    oldest: float = 0.0  # time.monotonic() of the first row

    def add(self, row: dict, curves: list[dict]) -> None:
        if not self.rows:
            self.oldest = time.monotonic()
        self.rows.append(row)
        self.curves.extend(curves)

    def due(self) -> bool:
        return len(self.rows) >= COMMIT_ROWS or time.monotonic() - self.oldest >= COMMIT_SECONDS

    def commit(self, out: Path, record: OptunaRecord, done: dict, phases: Counter) -> None:
        """One part file in trials/ (and curves/), then the Optuna copy."""
        t0 = time.perf_counter()
        reports.write_batch(out, self.rows, self.curves, self.schema)
        faults.point("write.trials")
        t1 = time.perf_counter()
        record.record(self.rows, done)
        phases["write"] += t1 - t0
        phases["record"] += time.perf_counter() - t1
        self.rows.clear()
        self.curves.clear()
        faults.point("committed")
