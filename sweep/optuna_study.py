"""The study's Optuna copy: trials made from report rows, opened and reconciled on start, added per commit.

Parquet `trials/` is the record; Optuna holds a copy for its dashboard and
its samplers. Every finished run (grid and boundary samplers) becomes one
finished Optuna trial: its params are the axes the study varies plus the
seed; its value the final loss (+inf when the loss went non-finite); one
constraint, > 0 when the verdict is nan, diverged or unstable, so feasibility
is Optuna's own notion (kept as the system attribute `constraints` list, the
form both Optuna's samplers and optuna-dashboard read); and the report's verdict
and telemetry columns as user attributes (`ATTRS`, with the plan index `trial`,
`config_id` and `worker`).
`error` and `timeout` runs are FAIL trials carrying their message.

The tpe sampler asks Optuna for configurations instead: one trial per
configuration, trained on every seed, told the mean final loss when its
last seed is recorded (see `record`).

Where the copy is kept (a journal file by default): `optuna_journal`.

    >>> from sweep.spec import parse
    >>> from sweep.optuna_study import trial_for_row
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\n[grid]\\nlearning_rate=[0.1,1.0]', "d.toml")
    >>> run = study.plan()[0]
    >>> row = {"trial": 0, "config_id": run.config.config_id, "seed": 0, "learning_rate": 0.1,
    ...        "status": "nan", "final_loss": float("nan")}
    >>> t = trial_for_row(study, row)
    >>> t.params, t.value, t.constraints
    ({'learning_rate': 0.1, 'seed': 0}, inf, {'0': 1.0})
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from . import faults
from .optuna_journal import JOURNAL, append_trials, journal_copy_class, open_storage, sync
from .spec import AXES, Study

if TYPE_CHECKING:
    import optuna

# Verdicts that make a run infeasible for Optuna's constrained samplers.
UNSTABLE = ("nan", "diverged", "unstable")
FAILED = ("error", "timeout")
ADD_CHUNK = 512
# The report columns a trial carries as user attributes: the verdict and its telemetry, and
# where to find the run (the axes are its params; the rest is in trials/).
ATTRS = ("status", "message", "trial", "config_id", "seed", "initial_loss", "final_loss", "best_loss",
         "final_loss_ratio", "max_loss_ratio", "loss_spikes", "first_nonfinite_step", "grad_norm_p50",
         "grad_norm_p90", "grad_norm_max", "clip_fraction", "final_accuracy", "wall_seconds", "worker",
         "started_at", "engine")


class StorageConflict(Exception):
    """The Optuna storage holds this study name with a different plan."""


def _param(v):
    return "none" if v is None else v


def varying_axes(study: Study) -> list[str]:
    """The axes with more than one value: the study's Optuna params (with the seed)."""
    return [a for a in AXES if len(study.grid[a]) > 1]


def distributions(study: Study, with_seed: bool = True) -> dict:
    from optuna.distributions import CategoricalDistribution

    dists = {a: CategoricalDistribution([_param(v) for v in study.grid[a]]) for a in varying_axes(study)}
    if with_seed:
        dists["seed"] = CategoricalDistribution(list(study.seeds))
    return dists


def _plain(v):
    """A value Optuna's storages keep as it is (JSON): datetimes as text, non-finite floats as None."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, int, bool, float)):
        return v
    return str(v)


def _value(row: Mapping) -> float:
    v = row.get("final_loss")
    return float(v) if v is not None and math.isfinite(v) else math.inf


def _row_trial(row: Mapping, dists: dict) -> dict:
    """The parts of a report row's Optuna trial: params, state, value, attributes."""
    from optuna.trial import TrialState

    params = {a: _param(row[a]) for a in dists if a != "seed"} | {"seed": int(row["seed"])}
    attrs = {k: _plain(row.get(k)) for k in ATTRS}
    if row["status"] in FAILED:
        return {"params": params, "state": TrialState.FAIL, "value": None, "user_attrs": attrs, "system_attrs": {}}
    return {"params": params, "state": TrialState.COMPLETE, "value": _value(row), "user_attrs": attrs,
            "system_attrs": constraint(1.0 if row["status"] in UNSTABLE else 0.0)}


def trial_for_row(study: Study, row: Mapping, dists: dict | None = None):
    """The finished Optuna trial of one report row."""
    from optuna.trial import create_trial

    dists = dists if dists is not None else distributions(study)
    return create_trial(distributions=dists, **_row_trial(row, dists))


def constraint(unstable: float) -> dict:
    """The trial's one constraint (> 0: infeasible) as a system attribute.

    Optuna 5 also reads `constraints:<name>` keys (what `Trial.set_constraint` writes), but
    optuna-dashboard shows only this list form."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    return {_CONSTRAINTS_KEY: [float(unstable)]}


def config_outcome(rows: Sequence[Mapping]) -> tuple[float | None, float, dict]:
    """(value, unstable fraction, attributes) of one configuration over its seeds (tpe trials)."""
    ok = [r for r in rows if r["status"] not in FAILED]
    statuses = [r["status"] for r in rows]
    attrs = {"trials": sorted(int(r["trial"]) for r in rows), "seeds": sorted(int(r["seed"]) for r in rows),
             "statuses": ",".join(statuses), "n_stable": statuses.count("stable"),
             "status": max(set(statuses), key=statuses.count),
             "messages": "; ".join(r["message"] for r in rows if r.get("message"))[:2000] or None}
    for key in ("max_loss_ratio", "final_loss_ratio", "grad_norm_max", "first_nonfinite_step"):
        vals = [r[key] for r in ok if r.get(key) is not None and math.isfinite(r[key])]
        attrs[f"max_{key}"] = max(vals) if vals else None
    if not ok:
        return None, 0.0, attrs
    value = sum(_value(r) for r in ok) / len(ok)
    unstable = sum(r["status"] in UNSTABLE for r in ok) / len(ok)
    return value, unstable, attrs


def open_study(out: Path, study: Study, storage_url: str | None) -> "optuna.Study":
    """The Optuna study of this sweep study, created or loaded; one made for another plan is refused.

    A new one gets the study's description as user attributes, the plan digest last: it
    marks them complete, so a driver killed between two of them writes them all again at
    the next start."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(study_name=study.name, storage=open_storage(out, storage_url),
                                 load_if_exists=True, direction="minimize")
    digest = study.plan_digest()
    stored = ostudy.user_attrs.get("plan_digest")
    if stored is not None and stored != digest:
        raise StorageConflict(f"{storage_url or out / JOURNAL}: Optuna study {study.name!r} was made "
                              "for a different plan; use a new study name or another --storage")
    if stored is None:
        for key, value in {"example": study.example, "sampler": study.sampler, "epochs": study.epochs,
                           "seeds": list(study.seeds), "planned_runs": len(study.plan()),
                           "plan_digest": digest}.items():
            ostudy.set_user_attr(key, value)
            faults.point("start.optuna")
    return ostudy


def copied_and_running(ostudy: "optuna.Study") -> tuple[set[int], list]:
    """The plan indices (`trial`) the copy already holds, and its RUNNING trials (asked, never told)."""
    from optuna.trial import TrialState

    copied: set[int] = set()
    running = []
    for t in ostudy.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING:
            running.append(t)
        elif "trial" in t.user_attrs:
            copied.add(int(t.user_attrs["trial"]))
        else:
            copied.update(int(i) for i in t.user_attrs.get("trials") or [])
    return copied, running


def by_config(rows: Iterable[Mapping]) -> dict[str, dict[int, Mapping]]:
    """Rows grouped: config_id -> seed -> row."""
    out: dict[str, dict[int, Mapping]] = defaultdict(dict)
    for r in rows:
        out[r["config_id"]][int(r["seed"])] = r
    return out


def tell_config(ostudy: "optuna.Study", number: int, rows: Sequence[Mapping]) -> None:
    """Finish an asked tpe trial from its configuration's rows, one per seed."""
    from optuna.trial import TrialState

    value, unstable, attrs = config_outcome(rows)
    storage = ostudy._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(ostudy._study_id, number)
    for key, v in attrs.items():
        storage.set_trial_user_attr(trial_id, key, v)
    if value is None:
        ostudy.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        return
    for key, v in constraint(unstable).items():
        storage.set_trial_system_attr(trial_id, key, v)
    ostudy.tell(number, value, skip_if_finished=True)


def config_trials(study: Study, configs: Sequence[Sequence[Mapping]]) -> list:
    """Finished tpe trials of configurations recorded in Parquet whose asked trial was lost."""
    from optuna.trial import TrialState, create_trial

    dists = distributions(study, with_seed=False)
    trials = []
    for rows in configs:
        value, unstable, attrs = config_outcome(rows)
        params = {a: _param(rows[0][a]) for a in dists}
        attrs["config_id"] = rows[0]["config_id"]
        if value is None:
            trials.append(create_trial(state=TrialState.FAIL, params=params, distributions=dists, user_attrs=attrs))
        else:
            trials.append(create_trial(params=params, distributions=dists, value=value, user_attrs=attrs,
                                       system_attrs=constraint(unstable)))
    return trials


class OptunaRecord:
    """The Optuna study of one sweep study: opened (and reconciled) once per session, then
    given the rows of every commit. Grid and boundary studies copy one trial per run; a tpe
    study (`per_config`) has one trial per configuration, told when its last seed is recorded."""

    def __init__(self, out: Path, study: Study, storage_url: str | None = None):
        self.study = study
        self.per_config = study.sampler == "tpe"
        self.dists = distributions(study)
        self.seeds = set(study.seeds)
        self.ostudy = open_study(out, study, storage_url)

    def reconcile(self, done: Mapping[tuple[str, int], dict]) -> dict[str, int]:
        """Make Optuna's copy agree with the Parquet record after any crash.

        Rows in Parquet but not in Optuna are added; RUNNING trials (a killed driver's)
        are finished from the rows when they are complete, failed when they never got
        their configuration, and otherwise left for the tpe sampler to complete."""
        from optuna.trial import TrialState

        copied, running = copied_and_running(self.ostudy)
        counts = {"added": 0, "told": 0, "failed": 0}
        if not self.per_config:
            for t in running:  # a grid study never leaves trials RUNNING; someone else's
                self.ostudy.tell(t.number, state=TrialState.FAIL)
                counts["failed"] += 1
            missing = [r for r in done.values() if int(r["trial"]) not in copied]
            self.add_rows(missing)
            counts["added"] = len(missing)
            return counts
        configs = by_config(done.values())
        for t in running:
            config_id = t.user_attrs.get("config_id")
            if config_id is None:
                self.ostudy.tell(t.number, state=TrialState.FAIL)
                counts["failed"] += 1
            elif set(configs.get(config_id, {})) >= self.seeds:
                tell_config(self.ostudy, t.number, list(configs[config_id].values()))
                counts["told"] += 1
            copied.update(int(r["trial"]) for r in configs.get(config_id, {}).values())
        orphans = [list(rows.values()) for rows in configs.values()
                   if set(rows) >= self.seeds and not any(int(r["trial"]) in copied for r in rows.values())]
        self._add_configs(orphans)
        counts["added"] = sum(len(rows) for rows in orphans)
        return counts

    def record(self, rows: Sequence[Mapping], done: Mapping[tuple[str, int], dict]) -> None:
        """Copy committed rows into Optuna (`done` already holds them)."""
        if not self.per_config:
            self.add_rows(rows)
            return
        from optuna.trial import TrialState

        finished = {r["config_id"] for r in rows}
        running = {t.user_attrs.get("config_id"): t.number
                   for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        new = []
        for config_id, seed_rows in by_config(r for r in done.values() if r["config_id"] in finished).items():
            if not set(seed_rows) >= self.seeds:
                continue
            if config_id in running:
                tell_config(self.ostudy, running[config_id], list(seed_rows.values()))
            else:
                new.append(list(seed_rows.values()))
        self._add_configs(new)

    def add_rows(self, rows: Iterable[Mapping]) -> None:
        """One finished trial per row: one append to a journal file, else Optuna's `add_trials`."""
        rows = list(rows)
        if not rows:
            return
        storage = self.ostudy._storage
        if isinstance(getattr(storage, "_backend", None), journal_copy_class()):
            append_trials(storage, self.ostudy._study_id, [_row_trial(r, self.dists) for r in rows], self.dists)
        else:
            for i in range(0, len(rows), ADD_CHUNK):
                self.ostudy.add_trials([trial_for_row(self.study, r, self.dists) for r in rows[i:i + ADD_CHUNK]])
        sync(storage)

    def _add_configs(self, configs: Sequence[Sequence[Mapping]]) -> None:
        if configs:
            self.ostudy.add_trials(config_trials(self.study, configs))
