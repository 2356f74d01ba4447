"""The Optuna copy: the journal fast path writes what Optuna's own add_trials would."""

import math

import optuna

from sweep.optuna_study import OptunaRecord, trial_for_row
from sweep.spec import parse

STUDY = parse('[study]\nname="copy"\nexample="exploding_gradients"\nseeds=[0,1]\n[grid]\n'
              'learning_rate=[0.01,1.0]\nclipnorm=["none",1.0]', "copy.toml")


def row(run, status, final_loss, message=None):
    c = run.config
    return {"trial": run.trial, "config_id": c.config_id, "seed": run.seed, "learning_rate": c.learning_rate,
            "clipnorm": c.clipnorm, "status": status, "final_loss": final_loss, "message": message,
            "grad_norm_max": 3.5, "worker": "w:1"}


def test_journal_fast_path_reads_back_like_add_trials(tmp_path):
    plan = STUDY.plan()
    rows = [row(plan[0], "stable", 0.25), row(plan[1], "nan", math.nan),
            row(plan[2], "error", None, "ValueError: boom"), row(plan[3], "unstable", 0.5)]
    record = OptunaRecord(tmp_path, STUDY)
    record.add_rows(rows)
    fast = OptunaRecord(tmp_path, STUDY).ostudy.get_trials()       # read back from the file
    reference = optuna.create_study()
    reference.add_trials([trial_for_row(STUDY, r) for r in rows])
    slow = reference.get_trials()
    assert len(fast) == len(slow) == 4
    for f, s in zip(fast, slow):
        assert (f.state, f.value, f.params, f.user_attrs, f.system_attrs, f.distributions) == \
               (s.state, s.value, s.params, s.user_attrs, s.system_attrs, s.distributions)
    assert [t.constraints for t in fast] == [{"0": 0.0}, {"0": 1.0}, {}, {"0": 1.0}]
    assert fast[1].value == math.inf and fast[2].user_attrs["message"] == "ValueError: boom"
