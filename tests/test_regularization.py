"""L1 and L2 penalties: the catalog's `l1` and `l2` knobs ([grid.model]; Keras's L1L2 on every
kernel) and a user model's own regularizers. Both engines differentiate the data loss plus the
penalties, as `model.fit` does (`Trainer.compute_loss`), and report the data loss: the losses
in trials, the verdicts and the baselines are the data loss's."""

import pytest
from test_population import relative

from sweep.engines.keras_engine import KerasEngine
from sweep.engines.population import PopulationEngine, initial_model
from sweep.spec import SpecError, parse

CATALOG = """[study]
name = "r"
example = "exploding_gradients"
epochs = 3
seeds = [0]
[grid]
learning_rate = [0.001, 0.01]
optimizer = ["adam", "sgd"]
[grid.model]
l1 = [0.0, 0.001]
l2 = [0.0, 0.01]
"""


def test_catalog_penalties_train_on_the_population_engine_as_on_keras():
    s = parse(CATALOG, "r.toml")
    runs = s.plan()
    assert len(runs) == 16  # 2 learning rates x 2 optimizers x 2 l1 x 2 l2, one seed
    arch, _ = initial_model(s, next(r for r in runs if r.config.knobs == {"l1": 0.001, "l2": 0.01}).config, 0)
    assert arch.penalties == ((0.001, 0.01),) * 3
    pop, ref = PopulationEngine().train(s, runs), KerasEngine().train(s, runs)
    by_setting = {}
    for run, p, k in zip(runs, pop, ref):
        assert p.engine == "population", run
        assert p.initial_loss == pytest.approx(k.initial_loss, rel=1e-6)
        assert relative(p.epoch_loss, k.epoch_loss).max() < 1e-4, (run, p.epoch_loss, k.epoch_loss)
        by_setting[(run.config.learning_rate, run.config.optimizer, run.config.knobs["l1"], run.config.knobs["l2"])] = p
    for (lr, opt, l1, l2), p in by_setting.items():
        plain = by_setting[(lr, opt, 0.0, 0.0)]
        # l0 is the data loss of the same initial weights; the penalty changes the training.
        assert p.initial_loss == plain.initial_loss
        if (l1, l2) != (0.0, 0.0):
            assert p.epoch_loss[-1] != plain.epoch_loss[-1]


def test_the_reported_loss_is_the_data_loss():
    """A penalty far larger than the data loss (l2 = 1: about 1.5 at the initial weights) is
    trained on, not reported: the epoch losses stay at the scale of the binary cross-entropy."""
    s = parse(CATALOG.replace("l1 = [0.0, 0.001]\nl2 = [0.0, 0.01]", "l2 = [1.0]").replace(
        '["adam", "sgd"]', '["sgd"]').replace("[0.001, 0.01]", "[0.001]"), "r.toml")
    [p], [k] = PopulationEngine().train(s, s.plan()), KerasEngine().train(s, s.plan())
    assert max(p.epoch_loss) < 0.8 and relative(p.epoch_loss, k.epoch_loss).max() < 1e-5


def test_a_user_models_own_regularizers_train_on_the_population_engine():
    """Kernel L2 (swept as a knob), kernel L1 and an activity L1: `Model.stateless_call`'s losses."""
    s = parse('[study]\nname="u"\nexample="builders:regularized_model"\nepochs=3\nseeds=[0, 1]\n'
              '[grid]\nlearning_rate=[0.01, 0.1]\noptimizer=["adam", "sgd"]\n[grid.model]\nl2=[0.0, 0.1]\n', "u.toml")
    runs = s.plan()
    pop, ref = PopulationEngine().train(s, runs), KerasEngine().train(s, runs)
    for run, p, k in zip(runs, pop, ref):
        assert p.engine == "population", run
        assert relative(p.epoch_loss, k.epoch_loss).max() < 1e-4, (run, p.epoch_loss, k.epoch_loss)


@pytest.mark.parametrize("value", ["-0.1", "true", "'a'"])
def test_a_bad_penalty_is_named(value):
    with pytest.raises(SpecError) as info:
        parse(CATALOG.replace("l2 = [0.0, 0.01]", f"l2 = [{value}]"), "bad.toml")
    [(field, message)] = info.value.problems
    assert field == "grid.model.l2" and "a number >= 0" in message
