"""The Optuna copy: one trial per configuration; the journal fast path writes what Optuna's own add_trials would."""

import math

import optuna
from optuna.trial import TrialState, create_trial

from sweep.driver.optuna_study import OptunaRecord, config_trial
from sweep.spec import parse

STUDY = parse('[study]\nname="copy"\nexample="exploding_gradients"\nseeds=[0,1]\n[grid]\n'
              'learning_rate=[0.01,1.0]\nclipnorm=["none",1.0]', "copy.toml")


def row(run, status, final_loss, message=None):
    c = run.config
    return {"trial": run.trial, "config_id": c.config_id, "seed": run.seed, "learning_rate": c.learning_rate,
            "clipnorm": c.clipnorm, "status": status, "final_loss": final_loss, "message": message,
            "grad_norm_max": 3.5, "worker": "w:1"}


def test_journal_fast_path_reads_back_like_add_trials(tmp_path):
    plan = STUDY.plan()   # 4 configurations x 2 seeds
    statuses = [("stable", 0.25), ("stable", 0.35), ("nan", math.nan), ("stable", 0.5),
                ("error", None), ("timeout", None), ("unstable", 0.5), ("unstable", 0.7)]
    rows = [row(run, status, loss, None if loss is not None else f"ValueError: boom {run.seed}")
            for run, (status, loss) in zip(plan, statuses)]
    configs = [rows[i:i + 2] for i in range(0, 8, 2)]
    record = OptunaRecord(tmp_path, STUDY)
    record.add_configs(configs)
    fast = OptunaRecord(tmp_path, STUDY).ostudy.get_trials()       # read back from the file
    reference = optuna.create_study()
    reference.add_trials([create_trial(distributions=record.dists, **config_trial(record.config(c[0]["config_id"]), c, record.dists))
                           for c in configs])
    slow = reference.get_trials()
    assert len(fast) == len(slow) == 4
    for f, s in zip(fast, slow):
        assert (f.state, f.value, f.params, f.user_attrs, f.system_attrs, f.distributions) == \
               (s.state, s.value, s.params, s.user_attrs, s.system_attrs, s.distributions)
    assert [t.constraints for t in fast] == [{"0": 0.0}, {"0": 0.5}, {}, {"0": 1.0}]
    assert [t.value for t in fast] == [0.3, math.inf, None, 0.6]
    assert fast[2].state == TrialState.FAIL and fast[2].user_attrs["messages"] == "ValueError: boom 0; ValueError: boom 1"
    assert fast[1].user_attrs["seeds"] == [0, 1] and fast[1].user_attrs["statuses"] == "nan,stable"
    assert fast[1].user_attrs["trials"] == [2, 3] and fast[1].user_attrs["final_losses"] == [None, 0.5]


def test_a_configuration_is_recorded_when_its_last_seed_is(tmp_path):
    plan = STUDY.plan()
    record = OptunaRecord(tmp_path, STUDY)
    first = row(plan[0], "stable", 0.25)
    done = {plan[0].key: first}
    record.record([first], done)
    assert record.ostudy.get_trials() == []
    second = row(plan[1], "stable", 0.35)
    done[plan[1].key] = second
    record.record([second], done)
    [trial] = OptunaRecord(tmp_path, STUDY).ostudy.get_trials()
    assert trial.user_attrs["trials"] == [0, 1] and trial.value == 0.3
