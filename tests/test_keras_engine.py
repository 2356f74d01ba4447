"""The keras reference engine: every example trains, the documents' configurations run, and
the telemetry means what it says."""

import numpy as np
import pytest

from sweep.catalog import EXAMPLES
from sweep.engines import batch_order
from sweep.engines.keras_engine import KerasEngine, train_one
from sweep.spec import config_from_dict, parse
from sweep.verdict import TRAINING_STATUSES, judge


def study_for(example: str, epochs: int, grid: str = "", seeds: str = "[0]"):
    return parse(f'[study]\nname="t"\nexample="{example}"\nepochs={epochs}\nseeds={seeds}\n[grid]\n{grid}', "t.toml")


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_example_builds_and_trains(example):
    s = study_for(example, 2)
    [out] = KerasEngine().train(s, s.plan())
    assert not isinstance(out, BaseException), out
    assert np.isfinite(out.initial_loss) and len(out.epoch_loss) == 2
    n_steps = 2 * -(-1000 // 32)
    assert len(out.grad_norms) == n_steps and out.engine == "keras"
    assert 0.0 <= out.epoch_accuracy[-1] <= 1.0


@pytest.mark.parametrize("example,which", [(e, w) for e in sorted(EXAMPLES) for w in ("failure", "fix")])
def test_document_configurations_run(example, which):
    ex = EXAMPLES[example]
    config = config_from_dict(ex.config(getattr(ex, which)))
    s = study_for(example, ex.epochs)
    out = train_one(s, config, seed=0)
    status = judge(out.initial_loss, out.epoch_loss, out.first_nonfinite_step)
    assert status in TRAINING_STATUSES
    assert len(out.epoch_loss) == ex.epochs or out.first_nonfinite_step is not None


def test_same_configuration_and_seed_give_the_same_numbers():
    s = study_for("exploding_gradients", 3, "clipnorm=[1.0]")
    a, b = (train_one(s, s.plan()[0].config, 0) for _ in range(2))
    assert a.initial_loss == b.initial_loss
    assert a.epoch_loss == b.epoch_loss
    np.testing.assert_array_equal(a.grad_norms, b.grad_norms)
    c = train_one(s, s.plan()[0].config, 1)
    assert c.epoch_loss != a.epoch_loss  # another seed: other weights and order


def test_batch_order_comes_from_seed_and_epoch_alone():
    assert batch_order(3, 2, 100).tolist() == batch_order(3, 2, 100).tolist()
    assert batch_order(3, 2, 100).tolist() != batch_order(3, 1, 100).tolist()
    assert batch_order(3, 2, 100).tolist() != batch_order(4, 2, 100).tolist()
    assert sorted(batch_order(5, 1, 100).tolist()) == list(range(100))


def test_clipping_fraction_follows_keras_rules():
    s = study_for("exploding_gradients", 1, "clipnorm=['none', 1e-6, 1e6]\nglobal_clipnorm=['none', 1e-6]")
    by = {(r.config.clipnorm, r.config.global_clipnorm): train_one(s, r.config, 0) for r in s.plan()}
    assert by[(None, None)].clipped_steps == 0
    assert by[(1e-6, None)].clipped_steps == len(by[(1e-6, None)].grad_norms)
    assert by[(1e6, None)].clipped_steps == 0
    assert by[(None, 1e-6)].clipped_steps == len(by[(None, 1e-6)].grad_norms)
    # the recorded norm is the unclipped one: clipping does not change the first step's norm
    assert by[(1e-6, None)].grad_norms[0] == pytest.approx(by[(None, None)].grad_norms[0], rel=1e-6)


def test_training_stops_at_the_first_nonfinite_step():
    # measured: the document's hand-written loss at lr 1.0 puts log(0) in the loss at step 1
    s = study_for("log_of_zero", 5, "learning_rate=[1.0]\nloss=['handwritten']")
    out = train_one(s, s.plan()[0].config, 0)
    assert out.first_nonfinite_step is not None
    assert len(out.grad_norms) == out.first_nonfinite_step + 1
    assert len(out.epoch_loss) == 1 and not np.isfinite(out.epoch_loss[-1])
    assert judge(out.initial_loss, out.epoch_loss, out.first_nonfinite_step) == "nan"


def test_sigmoid_cross_entropy_does_not_nan_where_the_document_says():
    # tf-optimizer-error.md example 1: Keras computes BCE after a sigmoid from logits
    ex = EXAMPLES["exploding_gradients"]
    s = study_for("exploding_gradients", ex.epochs)
    out = train_one(s, config_from_dict(ex.config(ex.failure)), 0)
    assert out.first_nonfinite_step is None and np.isfinite(out.epoch_loss).all()


def keras_plateau_rates(losses, lr):
    """The rates ReduceLROnPlateau(monitor loss, factor 0.1, patience 3, min_lr 1e-6) sets,
    per Keras's rules (min_delta 1e-4, cooldown 0), for epochs 1..E given epoch losses."""
    rates, best, wait = [lr], np.inf, 0
    for loss in losses[:-1]:
        if loss < best - 1e-4:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= 3 and lr > np.float32(1e-6):
                lr, wait = max(lr * 0.1, 1e-6), 0
        rates.append(lr)
    return rates


def test_plateau_schedule_lowers_the_rate_by_keras_rules():
    s = study_for("builders:dead_model", 16, "learning_rate=[0.1]\nschedule=['plateau']")
    out = train_one(s, s.plan()[0].config, 0)
    assert out.epoch_learning_rate == pytest.approx(keras_plateau_rates(out.epoch_loss, 0.1), rel=1e-6)
    assert min(out.epoch_learning_rate) < 0.1  # the plateau was reached and the rate lowered


def test_constant_schedule_keeps_the_rate():
    s = study_for("builders:dead_model", 8, "learning_rate=[0.1]")
    out = train_one(s, s.plan()[0].config, 0)
    assert out.epoch_learning_rate == pytest.approx([0.1] * 8)


def test_user_builder_trains():
    s = study_for("builders:tiny_model", 2, "activation=['tanh']")
    [out] = KerasEngine().train(s, s.plan())
    assert not isinstance(out, BaseException), out
    assert len(out.epoch_loss) == 2 and len(out.grad_norms) == 2 * -(-200 // 32)


def test_user_builder_returning_garbage_is_a_run_error():
    s = study_for("builders:not_a_model", 1)
    [out] = KerasEngine().train(s, s.plan())
    assert isinstance(out, TypeError) and "must return (keras.Model, x, y)" in str(out)
