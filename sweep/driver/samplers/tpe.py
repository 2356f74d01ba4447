"""The tpe sampler: Optuna's TPE over the study's grid, one Optuna trial per configuration.

Each configuration is trained on every seed; the objective is the mean final
loss; a configuration with nan, diverged or unstable seeds is infeasible
(Optuna's constraint, set when the trial is told; see `optuna_study`).

    >>> import optuna
    >>> from sweep.spec import parse
    >>> study = parse('[study]\\nname="t"\\nexample="exploding_gradients"\\nseeds=[0,1]\\n'
    ...               'sampler="tpe"\\nn_trials=2\\n[grid]\\nlearning_rate=[0.001,0.01,0.1]', "t.toml")
    >>> sampler = TPESampler(optuna.create_study(), seed=0)
    >>> runs = sampler.propose(study, {})
    >>> [r.seed for r in runs], len({r.config for r in runs})
    ([0, 1], 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...spec import CLIP_AXES, Run, Study
from ..optuna_study import config_outcome, constraint, distributions
from .base import Done

if TYPE_CHECKING:
    import optuna

# Configurations tried when the study file gives no n_trials.
DEFAULT_TPE_TRIALS = 20


class TPESampler:
    """Asks Optuna for configurations until `n_trials` of them (default 20) have been asked.

    Its state is the Optuna study: asked trials are RUNNING until their last seed is
    recorded, so after a crash the missing seeds of those configurations come first."""

    def __init__(self, ostudy: "optuna.Study", seed: int | None = 0):
        import optuna

        self.ostudy = ostudy
        # constant_liar: configurations in flight count as bad guesses, so parallel workers
        # are not all sent to the same point.
        ostudy.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
        self._configs: dict[tuple, list[Run]] | None = None

    def _index(self, study: Study) -> dict[tuple, list[Run]]:
        if self._configs is None:
            by_axes: dict[tuple, list[Run]] = {}
            for run in study.plan():
                by_axes.setdefault(tuple(run.config.value(a) for a in study.axes), []).append(run)
            self._configs = by_axes
        return self._configs

    def propose(self, study: Study, done: Done) -> list[Run]:
        from optuna.trial import TrialState

        index = self._index(study)
        by_id = {runs[0].config.config_id: runs for runs in index.values()}
        trials = self.ostudy.get_trials(deepcopy=False)
        # Configurations asked but not finished (this session's or a killed driver's).
        todo = [r for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("config_id") in by_id
                for r in by_id[t.user_attrs["config_id"]] if r.key not in done]
        # n_trials counts configurations: a re-suggested one (told from its rows) is not another.
        asked = len({t.user_attrs["config_id"] for t in trials if "config_id" in t.user_attrs})
        if todo or asked >= min(study.n_trials or DEFAULT_TPE_TRIALS, len(index)):
            return todo
        dists = distributions(study)
        fixed = {a: study.values(a)[0] for a in study.axes if a not in dists}
        for _ in range(100):
            trial = self.ostudy.ask(dists)
            # "none" is absent clipping; a knob's "none" is the knob's own text value.
            values = fixed | {a: (None if a in CLIP_AXES and trial.params[a] == "none" else trial.params[a])
                              for a in dists}
            runs = index.get(tuple(values[a] for a in study.axes))
            if runs is None:  # e.g. clipnorm and clipvalue at once: not a configuration
                trial.set_user_attr("skipped", "not a configuration: Keras allows one kind of clipping")
                self.ostudy.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr("config_id", runs[0].config.config_id)
            todo = [r for r in runs if r.key not in done]
            if todo:
                return todo
            self._already_done(trial, runs, done)
        return []

    def _already_done(self, trial, runs: list[Run], done: Done) -> None:
        """TPE re-suggested a configuration already trained: told from its rows, no new runs."""
        from optuna.trial import TrialState

        value, unstable, attrs = config_outcome([done[r.key] for r in runs])
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if value is None:
            self.ostudy.tell(trial, state=TrialState.FAIL)
        else:
            for key, v in constraint(unstable).items():
                trial.storage.set_trial_system_attr(trial._trial_id, key, v)
            self.ostudy.tell(trial, value)
