"""The driver: owns the plan, hands batches to the pool, commits rows, records the study.

The plan (which (configuration, seed) runs exist) comes from the study file;
what is done is what `trials/` records. So resuming is running again: runs
already recorded are skipped, the rest are trained. Optuna holds a copy of
every finished run (params, value, verdict and telemetry as attributes) for
its dashboard and samplers; Parquet is the record.

    >>> from sweep import spec, study
    >>> s = spec.load("studies/quickstart.toml")                  # doctest: +SKIP
    >>> summary = study.run(s, "results", engine="keras")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import maps, reports
from .pool import LocalPool
from .samplers import get_sampler
from .spec import AXES, Run, Study

STUDY_META = "study.json"
OPTUNA_FILE = "study.journal"


class StudyConflict(Exception):
    """The results directory holds a different plan under the same study name."""


@dataclass
class Summary:
    study_dir: Path
    planned: int
    already_done: int
    ran: int = 0
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def engine_for(study: Study, requested: str | None) -> str:
    """The engine that trains this study: a user builder always runs on keras."""
    name = requested or study.engine
    if ":" in study.example:
        return "keras"
    return name


def prepare_dir(study: Study, results: str | os.PathLike) -> Path:
    """The study's results directory, created and checked writable, its stored plan agreeing."""
    out = Path(results) / study.name
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"{out}: results directory is not writable ({exc.strerror or exc})") from None
    meta_path = out / STUDY_META
    digest = study.plan_digest()
    if meta_path.exists():
        stored = json.loads(meta_path.read_text())
        if stored.get("plan_digest") != digest:
            raise StudyConflict(
                f"{out}: holds study {study.name!r} with a different plan (example, epochs, seeds, grid, "
                f"data_seed or verdict changed). Use a new study name or another --results directory.")
    else:
        tmp = meta_path.with_name(f".{STUDY_META}.tmp")
        tmp.write_text(json.dumps({"name": study.name, "example": study.example, "plan_digest": digest,
                                   "source": study.path, "study_toml": _source_text(study)}, indent=1))
        os.replace(tmp, meta_path)
    return out


def _source_text(study: Study) -> str:
    try:
        return Path(study.path).read_text(encoding="utf-8")
    except OSError:
        return ""


def record_in_optuna(out: Path, study: Study, rows: Sequence[dict]) -> None:
    """Add finished runs to the study's Optuna record (journal file: fast appends)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / OPTUNA_FILE)))
    ostudy = optuna.create_study(study_name=study.name, storage=storage, load_if_exists=True,
                                 direction="minimize")
    dists = {a: CategoricalDistribution([_param(v) for v in study.grid[a]]) for a in AXES}
    dists["seed"] = CategoricalDistribution(list(study.seeds))
    trials = []
    for r in rows:
        params = {a: _param(r[a]) for a in AXES} | {"seed": r["seed"]}
        value = r.get("final_loss")
        ok = r["status"] not in ("error", "timeout") and value is not None and math.isfinite(value)
        attrs = {k: v for k, v in r.items() if k not in AXES and _plain(v)}
        trials.append(create_trial(params=params, distributions=dists,
                                   value=value if ok else None,
                                   state=TrialState.COMPLETE if ok else TrialState.FAIL,
                                   user_attrs=attrs))
    ostudy.add_trials(trials)


def _param(v):
    return "none" if v is None else v


def _plain(v) -> bool:
    return v is None or isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v))


def chunks(runs: Sequence[Run], size: int) -> list[Sequence[Run]]:
    return [runs[i:i + size] for i in range(0, len(runs), size)]


def run(study: Study, results: str | os.PathLike = "results", *, engine: str | None = None,
        max_trials: int | None = None, batch_size: int = 8,
        on_batch: Callable[[Summary, list[dict]], None] | None = None, pool=None) -> Summary:
    """Run (or resume) a study; returns what was done. `on_batch` sees each committed batch."""
    out = prepare_dir(study, results)
    reports.tidy(out)
    done = reports.done_rows(out)
    sampler = get_sampler(study.sampler)
    summary = Summary(out, planned=len(study.plan()), already_done=len(done))
    started = time.perf_counter()
    pool = pool or LocalPool(study, engine_for(study, engine))
    with pool:
        while max_trials is None or summary.ran < max_trials:
            todo = sampler.propose(study, done)
            if max_trials is not None:
                todo = todo[:max_trials - summary.ran]
            if not todo:
                break
            for _batch, results_ in pool.imap(chunks(todo, batch_size)):
                rows = [r for r, _ in results_]
                curves = [c for _, cs in results_ for c in cs]
                reports.write_batch(out, rows, curves)
                record_in_optuna(out, study, rows)
                done.update(((r["config_id"], r["seed"]), r) for r in rows)
                summary.ran += len(rows)
                summary.counts.update(r["status"] for r in rows)
                summary.seconds = time.perf_counter() - started
                if on_batch:
                    on_batch(summary, rows)
    # The maps are a view of trials/: rebuilt whole at the end of every session, resumed or not.
    maps.write(out)
    summary.seconds = time.perf_counter() - started
    return summary
