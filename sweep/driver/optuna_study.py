"""The study's Optuna copy: one trial per configuration, made from its report rows, one per seed.

Parquet `trials/` is the record, one row per (configuration, seed); Optuna
holds a copy for its dashboard and its samplers. A configuration becomes one
finished Optuna trial once all its seeds are recorded: its params are the
axes the study varies; its value the mean final loss over its trained seeds
(+inf when a loss went non-finite); one constraint, the fraction of those
seeds whose verdict is nan, diverged or unstable (> 0: infeasible, Optuna's
own notion, kept as the system attribute `constraints` list, the form both
Optuna's samplers and optuna-dashboard read); and the seeds as user
attributes: `seeds`, their plan indices `trials`, their `statuses` and
`final_losses` in seed order, with the modal `status`, `n_stable`, the
worst telemetry (`max_*`) and `config_id` (`config_outcome`). A configuration
whose seeds all ended `error` or `timeout` is a FAIL trial with their messages.

Why not one trial per run: Optuna reads a whole study into memory when it
opens it; at 1,000,000 runs, a trial per run made the copy the driver's
largest cost at every start (docs/performance.md gives the figures), while
the seeds of one configuration are one point of Optuna's search space.

The grid and boundary samplers add a configuration's trial when its last seed
is recorded; the tpe sampler asks Optuna for configurations and tells the
asked trial then (see `record`).

Where the copy is kept (a journal file by default): `optuna_journal`.

    >>> from sweep.spec import parse
    >>> from sweep.driver.optuna_study import config_trial, distributions
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nseeds=[0,1]\\n[grid]\\nlearning_rate=[0.1,1.0]', "d.toml")
    >>> runs = study.plan()[:2]
    >>> rows = [{"trial": r.trial, "config_id": r.config.config_id, "seed": r.seed, "status": status,
    ...          "final_loss": loss} for r, status, loss in zip(runs, ["stable", "nan"], [0.5, float("nan")])]
    >>> t = config_trial(runs[0].config, rows, distributions(study))
    >>> t["params"], t["value"], t["system_attrs"], t["user_attrs"]["statuses"]
    ({'learning_rate': 0.1}, inf, {'constraints': [0.5]}, 'stable,nan')
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from ..results import faults
from ..spec import Config, Study
from .optuna_journal import JOURNAL, append_trials, journal_copy_class, open_storage, sync

if TYPE_CHECKING:
    import optuna

# Verdicts that make a run infeasible for Optuna's constrained samplers.
UNSTABLE = ("nan", "diverged", "unstable")
FAILED = ("error", "timeout")
ADD_CHUNK = 512


class StorageConflict(Exception):
    """The Optuna storage holds this study name with a different plan."""


def _param(v):
    return "none" if v is None else v


def varying_axes(study: Study) -> list[str]:
    """The axes with more than one value (model knobs too): the study's Optuna params."""
    return [a for a in study.axes if len(study.values(a)) > 1]


def distributions(study: Study) -> dict:
    from optuna.distributions import CategoricalDistribution

    return {a: CategoricalDistribution([_param(v) for v in study.values(a)]) for a in varying_axes(study)}


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


def constraint(unstable: float) -> dict:
    """The trial's one constraint (> 0: infeasible) as a system attribute.

    Optuna 5 also reads `constraints:<name>` keys (what `Trial.set_constraint` writes), but
    optuna-dashboard shows only this list form."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    return {_CONSTRAINTS_KEY: [float(unstable)]}


def config_outcome(rows: Sequence[Mapping]) -> tuple[float | None, float, dict]:
    """(value, unstable fraction, attributes) of one configuration over its seeds' rows."""
    rows = sorted(rows, key=lambda r: int(r["seed"]))
    ok = [r for r in rows if r["status"] not in FAILED]
    statuses = [r["status"] for r in rows]
    attrs = {"trials": [int(r["trial"]) for r in rows], "seeds": [int(r["seed"]) for r in rows],
             "statuses": ",".join(statuses), "final_losses": [_plain(r.get("final_loss")) for r in rows],
             "n_stable": statuses.count("stable"), "status": max(set(statuses), key=statuses.count),
             "messages": "; ".join(r["message"] for r in rows if r.get("message"))[:2000] or None}
    for key in ("max_loss_ratio", "final_loss_ratio", "grad_norm_max", "first_nonfinite_step"):
        vals = [r[key] for r in ok if r.get(key) is not None and math.isfinite(r[key])]
        attrs[f"max_{key}"] = _plain(max(vals)) if vals else None
    if not ok:
        return None, 0.0, attrs
    value = sum(_value(r) for r in ok) / len(ok)
    unstable = sum(r["status"] in UNSTABLE for r in ok) / len(ok)
    return value, unstable, attrs


def config_trial(config: Config, rows: Sequence[Mapping], dists: dict) -> dict:
    """The finished trial of one configuration (`create_trial`'s keyword arguments but the
    distributions), from its rows, one per seed."""
    from optuna.trial import TrialState

    value, unstable, attrs = config_outcome(rows)
    params = {a: _param(config.value(a)) for a in dists}
    attrs["config_id"] = rows[0]["config_id"]
    if value is None:
        return {"params": params, "state": TrialState.FAIL, "value": None, "user_attrs": attrs, "system_attrs": {}}
    return {"params": params, "state": TrialState.COMPLETE, "value": value, "user_attrs": attrs,
            "system_attrs": constraint(unstable)}


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


class OptunaRecord:
    """The Optuna study of one sweep study: opened (and reconciled) once per session, then
    given the rows of every commit; a configuration's trial is added (or, asked by the tpe
    sampler, told) when its last seed is recorded."""

    def __init__(self, out: Path, study: Study, storage_url: str | None = None):
        self.study = study
        self.asks = study.sampler == "tpe"
        self.dists = distributions(study)
        self.seeds = tuple(study.seeds)
        self.ostudy = open_study(out, study, storage_url)
        self._configs: dict[str, Config] | None = None

    def config(self, config_id: str) -> Config:
        if self._configs is None:
            self._configs = {c.config_id: c for c in self.study.configs()}
        return self._configs[config_id]

    def reconcile(self, done: Mapping[tuple[str, int], dict]) -> dict[str, int]:
        """Make Optuna's copy agree with the Parquet record after any crash.

        Configurations complete in Parquet but not in Optuna are added; RUNNING trials (a
        killed driver's asks) are told from the rows when their configuration is complete,
        failed when they never got one, and otherwise left for the tpe sampler to complete."""
        from optuna.trial import TrialState

        copied, running = copied_and_running(self.ostudy)
        counts = {"added": 0, "told": 0, "failed": 0}
        configs = by_config(done.values())
        for t in running:
            config_id = t.user_attrs.get("config_id")
            if config_id is None or not self.asks:  # a grid study never leaves trials RUNNING; someone else's
                self.ostudy.tell(t.number, state=TrialState.FAIL)
                counts["failed"] += 1
            elif set(configs.get(config_id, {})) >= set(self.seeds):
                tell_config(self.ostudy, t.number, list(configs[config_id].values()))
                counts["told"] += 1
            copied.update(int(r["trial"]) for r in configs.get(config_id, {}).values())
        orphans = [list(rows.values()) for rows in configs.values()
                   if set(rows) >= set(self.seeds) and not any(int(r["trial"]) in copied for r in rows.values())]
        self.add_configs(orphans)
        counts["added"] = sum(len(rows) for rows in orphans)
        return counts

    def record(self, rows: Sequence[Mapping], done: Mapping[tuple[str, int], dict]) -> None:
        """Copy the configurations that committed rows complete into Optuna (`done` already holds them)."""
        complete = []
        for config_id in dict.fromkeys(r["config_id"] for r in rows):
            seed_rows = [done.get((config_id, seed)) for seed in self.seeds]
            if all(seed_rows):
                complete.append(seed_rows)
        if not self.asks:
            self.add_configs(complete)
            return
        from optuna.trial import TrialState

        running = {t.user_attrs.get("config_id"): t.number
                   for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for seed_rows in complete:
            if seed_rows[0]["config_id"] in running:
                tell_config(self.ostudy, running[seed_rows[0]["config_id"]], seed_rows)
        self.add_configs([c for c in complete if c[0]["config_id"] not in running])

    def add_configs(self, configs: Sequence[Sequence[Mapping]]) -> None:
        """One finished trial per configuration: one append to a journal file, else Optuna's `add_trials`."""
        if not configs:
            return
        trials = [config_trial(self.config(rows[0]["config_id"]), rows, self.dists) for rows in configs]
        storage = self.ostudy._storage
        if isinstance(getattr(storage, "_backend", None), journal_copy_class()):
            append_trials(storage, self.ostudy._study_id, trials, self.dists)
        else:
            from optuna.trial import create_trial

            for i in range(0, len(trials), ADD_CHUNK):
                self.ostudy.add_trials([create_trial(distributions=self.dists, **t) for t in trials[i:i + ADD_CHUNK]])
        sync(storage)
