"""SGD's momentum and Nesterov flag as axes: the study file's rules, Keras's optimizer on the keras
engine, `step.update` against Keras's own `SGD.update_step`, and results written before the axes
(these and precision, loss_scaling) existed reading them at their defaults (ids, plan digests and
columns unchanged)."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import sweep
from sweep.engines import make_optimizer
from sweep.engines.population import PopulationEngine
from sweep.engines.population.step import SGD_MOMENTUM_SLOTS, update
from sweep.driver import session
from sweep.results import maps
from sweep.spec import SpecError, config_from_dict, parse

RESULTS = Path(__file__).resolve().parent.parent / "results"
STUDY = '[study]\nname = "m"\nexample = "exploding_gradients"\nepochs = 1\nseeds = [0]\n'


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse(text, "bad.toml")
    return info.value.problems


@pytest.mark.parametrize("grid, field, words", [
    ("optimizer = ['sgd']\nmomentum = [1.5]", "grid.momentum", "numbers from 0 to 1"),
    ("optimizer = ['sgd']\nmomentum = [-0.1]", "grid.momentum", "numbers from 0 to 1"),
    ("optimizer = ['sgd']\nmomentum = ['0.9']", "grid.momentum", "not a number"),
    ("optimizer = ['sgd']\nnesterov = [1]", "grid.nesterov", "true or false"),
    ("momentum = [0.0, 0.9]", "grid.momentum", 'add "sgd" to grid.optimizer'),
    ("optimizer = ['adam', 'rmsprop']\nnesterov = [true]", "grid.nesterov", "take none"),
])
def test_a_bad_momentum_or_nesterov_is_named(grid, field, words):
    found = problems(STUDY + "[grid]\n" + grid + "\n")
    assert [f for f, _ in found] == [field], found
    assert words in found[0][1]


def test_momentum_and_nesterov_are_sgds_alone():
    s = parse(STUDY + "[grid]\noptimizer = ['adam', 'sgd']\nmomentum = [0.0, 0.9]\nnesterov = [false, true]\n", "m")
    points = {(c.optimizer, c.momentum, c.nesterov) for c in s.configs()}
    assert points == {("adam", 0.0, False), ("sgd", 0.0, False), ("sgd", 0.0, True), ("sgd", 0.9, False),
                      ("sgd", 0.9, True)}
    opt = make_optimizer(next(c for c in s.configs() if c.momentum == 0.9 and c.nesterov))
    assert (type(opt).__name__, opt.momentum, opt.nesterov) == ("SGD", 0.9, True)
    assert type(make_optimizer(s.configs()[0])).__name__ == "Adam"


def test_the_committed_results_keep_their_digests_ids_and_read_the_new_axes_at_their_defaults():
    for meta_path in sorted(RESULTS.glob("*/study.json")):
        meta = json.loads(meta_path.read_text())
        study = parse(meta["study_toml"], str(meta_path), import_builder=False)
        assert study.plan_digest() == meta["plan_digest"], meta_path.parent.name
    out = RESULTS / "reproduce-exploding_gradients"
    trials = sweep.load_trials(out)
    assert set(trials.momentum) == {0.0} and set(trials.nesterov) == {False}
    assert set(trials.precision) == {"float32"} and set(trials.loss_scaling) == {True}
    assert trials.skipped_steps.isna().all() and trials.final_loss_scale.isna().all()
    study = parse(json.loads((out / "study.json").read_text())["study_toml"], import_builder=False)
    assert set(trials.config_id) == {c.config_id for c in study.configs()}
    assert {config_from_dict(r).config_id for r in trials.to_dict("records")} == set(trials.config_id)
    for frame in (sweep.load_map(out), sweep.load_boundary(out)):
        assert set(frame.momentum) == {0.0} and set(frame.nesterov) == {False}


@pytest.mark.parametrize("nesterov", [False, True])
def test_update_is_keras_sgd_update_step_for_every_run(nesterov):
    """Runs of momentum 0, 0.5 and 0.9 stacked, five steps of random gradients: each run's weights
    and momentum are what Keras's SGD gives that run alone, bit for bit (the same ops in the same
    order; momentum 0 takes Keras's plain branch and keeps its slot untouched)."""
    import keras
    import tensorflow as tf

    momenta = [0.0, 0.5, 0.9]
    rng = np.random.default_rng(0)
    start = rng.standard_normal((4, 3)).astype("float32")
    grads = rng.standard_normal((5, 4, 3)).astype("float32")
    lr = 0.05
    theta = tf.constant(np.stack([start] * len(momenta)))
    slots = {name: tf.zeros_like(theta) for name in SGD_MOMENTUM_SLOTS}
    for step, g in enumerate(grads):
        theta, slots = update("sgd", theta, tf.constant(np.stack([g] * len(momenta))), slots,
                              tf.fill([len(momenta)], lr), step, tf.constant(momenta),
                              tf.fill([len(momenta)], nesterov))
    for k, beta in enumerate(momenta):
        variable = keras.Variable(start)
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=beta, nesterov=nesterov)
        opt.build([variable])
        for g in grads:
            opt.apply_gradients([(tf.constant(g), variable)])
        assert np.array_equal(theta[k].numpy(), variable.numpy()), beta
        keras_slot = opt.momentums[0].numpy() if beta else np.zeros_like(start)
        assert np.array_equal(slots["momentum"][k].numpy(), keras_slot), beta


def test_update_without_momentum_is_plain_sgd():
    import tensorflow as tf

    theta, g = tf.ones([2, 3]), tf.fill([2, 3], 2.0)
    plain, slots = update("sgd", theta, g, {}, tf.constant([0.1, 0.5]), 0)
    assert slots == {} and plain.numpy()[:, 0].tolist() == pytest.approx([0.8, 0.0])


def test_momentum_runs_train_on_the_population_engine_as_on_keras():
    """Momentum 0 and 0.9, with and without Nesterov, on both engines: the same losses, run for run
    (nesterov without momentum is Keras's plain branch)."""
    from sweep.engines.keras_engine import KerasEngine

    s = parse(STUDY + "[grid]\noptimizer = ['sgd']\nmomentum = [0.0, 0.9]\nnesterov = [false, true]\n"
              "learning_rate = [0.01]\n", "m.toml")
    outcomes = PopulationEngine().train(s, s.plan())
    assert [o.engine for o in outcomes] == ["population"] * len(s.plan())
    assert session.engine_line(s, None) == "engine: population"
    for mine, keras_run in zip(outcomes, KerasEngine().train(s, s.plan())):
        np.testing.assert_allclose(mine.epoch_loss, keras_run.epoch_loss, rtol=1e-5)
    finals = {(r.config.momentum, r.config.nesterov): o.epoch_loss[-1] for r, o in zip(s.plan(), outcomes)}
    assert finals[(0.0, False)] == finals[(0.0, True)] != finals[(0.9, False)] != finals[(0.9, True)]


def test_a_momentum_study_writes_and_maps_its_axes(tmp_path):
    """A small study on the keras engine: the columns in trials, map and boundary, effects for
    momentum, and the predicted edge's threshold 2 + 2 beta."""
    from sweep.answers.effects import load_effects
    from sweep.driver.pool import LocalPool

    text = STUDY.replace("epochs = 1", "epochs = 2") + textwrap.dedent("""
        engine = "keras"
        [grid]
        optimizer = ["sgd"]
        momentum = [0.0, 0.9]
        learning_rate = [0.01, 1.0]
        [telemetry]
        sharpness = {every_epochs = 1, iterations = 5, samples = 64}
        """)
    s = parse(text, str(tmp_path / "m.toml"))
    session.run(s, tmp_path, pool=LocalPool(s, "keras"))
    out = tmp_path / "m"
    trials = sweep.load_trials(out)
    assert trials.groupby("momentum").size().to_dict() == {0.0: 2, 0.9: 2}
    boundary = sweep.load_boundary(out).set_index("momentum")
    # the same initial curvature (it depends on the seed and data only), predicted 2 + 2 beta over it
    ratio = boundary.loc[0.9, "lr_predicted_init"] / boundary.loc[0.0, "lr_predicted_init"]
    assert ratio == pytest.approx(3.8 / 2.0)
    effects = load_effects(out)
    assert effects.axis.tolist() == ["momentum"] and effects.value.tolist() == ["0.9"]
    assert effects.reference.tolist() == ["0"]
    assert set(maps.load_map(out).momentum) == {0.0, 0.9}


def test_the_claims_space_leaves_the_new_axes_at_their_defaults_unsaid():
    from sweep.claims.studies import claim_studies, space_text

    text = space_text(claim_studies("exploding_gradients")["space"])
    assert text.endswith("held: scaler=none, loss=binary_crossentropy, schedule=constant")  # as in results/REPORT.md
    assert not any(a in text for a in ("momentum", "nesterov", "precision", "loss_scaling"))
