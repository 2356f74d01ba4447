"""Curvature telemetry (sweep.engines.sharpness): λ_max of the training loss's Hessian, plain and
preconditioned, against closed forms, in both engines, and the two engines against each other.

Tolerances. Power iteration's Rayleigh quotient after M products is off by a factor
(1 - O((λ₂/λ₁)^{2M})); the closed-form cases have λ₂/λ₁ ≤ 0.15 and M = 60, so they agree with
numpy's eigvalsh to float32 rounding (rel 1e-4). The engines start from the same vector and take
the same M products, so on the same weights they agree to rounding however far the iteration is
from converged; their weights after training differ by float rounding only (docs/equivalence.md),
so rel 1e-3 holds with room (measured: about 1e-5)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import builders
from sweep.engines.keras_engine import KerasEngine
from sweep.engines.population import PopulationEngine
from sweep.engines.sharpness import hvp, measure, predicted_learning_rate, scaled, start_vector, top_eigenvalue
from sweep.spec import parse

ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}


def design(x):
    return np.hstack([x.astype(np.float64), np.ones((len(x), 1))])


def linear_hessian(x) -> np.ndarray:
    a = design(x)
    return 2.0 / len(a) * a.T @ a


def test_linear_models_batched_match_eigvalsh():
    """Three runs of a linear model (mse) on different data, stacked [K, ...]: one product of the
    summed loss gives each run its own H·v, and each run's λ_max is numpy's."""
    xs, ys = [], []
    for seed in range(3):
        _, x, y = builders.linear_model("linear", seed)
        xs.append(x * (1 + seed))  # each run its own curvature
        ys.append(y)
    x, y = tf.constant(np.stack(xs)), tf.constant(np.stack(ys))
    theta = [tf.constant(np.random.default_rng(0).standard_normal((3, 3, 1)).astype(np.float32)),
             tf.zeros([3, 1])]

    def loss_of(t):
        pred = tf.matmul(x, t[0]) + t[1][:, None, :]
        return tf.reduce_mean(tf.square(pred - y), axis=[1, 2])

    v0 = [tf.constant(v) for v in start_vector([(3, 1), (1,)], 3)]
    got = top_eigenvalue(lambda v: hvp(loss_of, theta, v), v0, 60).numpy()
    want = [np.linalg.eigvalsh(linear_hessian(xk))[-1] for xk in xs]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert len(set(np.round(want, 3))) == 3

    # Preconditioned by a diagonal P per run: λ_max(P⁻¹H) from numpy's eigenvalues of P⁻¹H.
    p = np.abs(np.random.default_rng(1).standard_normal((3, 4))) + 0.5
    d = [tf.constant(p[:, :3, None] ** -0.5, tf.float32), tf.constant(p[:, 3:] ** -0.5, tf.float32)]
    sharp, precond = measure(loss_of, theta, v0, 60, [tf.constant(p[:, :3, None], tf.float32),
                                                       tf.constant(p[:, 3:], tf.float32)])
    want_p = [max(np.linalg.eigvals(np.diag(1 / p[k]) @ linear_hessian(xs[k])).real) for k in range(3)]
    np.testing.assert_allclose(precond.numpy(), want_p, rtol=1e-4)
    np.testing.assert_allclose(sharp.numpy(), want, rtol=1e-4)
    assert d[0].shape == (3, 3, 1) and scaled(d, d)[1].shape == (3, 1)


def linear_study(optimizer: str, epochs: int = 2):
    return parse(f"""
[study]
name = "lin"
example = "builders:linear_model"
epochs = {epochs}
seeds = [0]
[grid]
optimizer = ["{optimizer}"]
learning_rate = [0.01]
batch_size = [100]
[telemetry]
sharpness = {{every_epochs = 1, iterations = 60}}
""", "lin.toml")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_keras_engine_on_a_linear_model_gives_the_closed_form(optimizer):
    """The keras engine (a user builder): H is constant, so λ_max is numpy's at every epoch; for
    Adam at initialisation P is the first update's, (1 - β₁)(√((1 - β₂)g²) + ε)/√(1 - β₂),
    with g the whole training set's gradient at the initial weights."""
    import keras

    study = linear_study(optimizer)
    [outcome] = KerasEngine().train(study, study.plan())
    _, x, y = builders.linear_model("linear", 0)
    lam = np.linalg.eigvalsh(linear_hessian(x))[-1]
    assert sorted(outcome.sharpness) == [0, 1, 2]
    np.testing.assert_allclose(list(outcome.sharpness.values()), [lam] * 3, rtol=1e-4)
    if optimizer == "sgd":
        assert outcome.precond_sharpness == {}
        return
    keras.utils.set_random_seed(0)
    model, _, _ = builders.linear_model("linear", 0)
    w = np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)
    a = design(x)
    g = 2.0 / len(a) * a.T @ (a @ w - y[:, 0].astype(np.float64))
    b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
    p = (1 - b1) * (np.sqrt((1 - b2) * g * g) + eps) / np.sqrt(1 - b2)
    want = max(np.linalg.eigvals(np.diag(1 / p) @ linear_hessian(x)).real)
    assert outcome.precond_sharpness[0] == pytest.approx(want, rel=1e-3)
    assert set(outcome.precond_sharpness) == {0, 1, 2}


def catalog_study(quick: bool, epochs: int = 2) -> str:
    optimizers = '["sgd", "adam"]' if quick else '["sgd", "adam", "rmsprop"]'
    return f"""
[study]
name = "agree"
example = "exploding_gradients"
epochs = {epochs}
seeds = [0]
[grid]
optimizer = {optimizers}
learning_rate = [0.01]
batch_size = [250]
[telemetry]
sharpness = {{every_epochs = 1, iterations = 20, samples = 300}}
"""


@pytest.mark.slow
def test_engines_agree_on_a_catalog_model(request):
    quick = request.config.getoption("--quick")
    study = parse(catalog_study(quick, epochs=2 if quick else 6), "agree.toml")
    keras_out = KerasEngine().train(study, study.plan())
    pop_out = PopulationEngine().train(study, study.plan())
    for run, k, p in zip(study.plan(), keras_out, pop_out):
        assert p.engine == "population" and sorted(k.sharpness) == sorted(p.sharpness) == list(range(study.epochs + 1))
        for epoch in k.sharpness:
            assert p.sharpness[epoch] == pytest.approx(k.sharpness[epoch], rel=1e-3), (run.config.optimizer, epoch)
            if run.config.optimizer != "sgd":
                assert p.precond_sharpness[epoch] == pytest.approx(k.precond_sharpness[epoch], rel=1e-3)
        assert (p.precond_sharpness == {}) == (run.config.optimizer == "sgd")


def test_population_telemetry_leaves_training_unchanged_and_dead_runs_unmeasured():
    """Measuring between epochs changes no training value; a run that turned non-finite in an
    epoch has no value for it or any later epoch (null in curves)."""
    text = catalog_study(True).replace("learning_rate = [0.01]", "learning_rate = [0.01, 1000000.0]")
    on = parse(text, "on.toml")
    off = parse(text.split("[telemetry]")[0], "off.toml")
    with_t, without = PopulationEngine().train(on, on.plan()), PopulationEngine().train(off, off.plan())
    for a, b in zip(with_t, without):
        np.testing.assert_array_equal(a.epoch_loss, b.epoch_loss)
        assert a.first_nonfinite_step == b.first_nonfinite_step
        assert b.sharpness == {} and b.precond_sharpness == {}
    dead = [o for o in with_t if o.first_nonfinite_step is not None]
    assert dead and all(sorted(o.sharpness) == [0] for o in dead)
    alive = [o for o in with_t if o.first_nonfinite_step is None]
    assert all(sorted(o.sharpness) == [0, 1, 2] and all(math.isfinite(v) for v in o.sharpness.values())
               for o in alive)


def test_predicted_learning_rate_uses_each_optimizers_threshold():
    assert predicted_learning_rate("sgd", 4.0, None) == 0.5
    assert predicted_learning_rate("adam", 4.0, 76.0) == pytest.approx(0.5)
    assert predicted_learning_rate("rmsprop", 4.0, 8.0) == pytest.approx(0.25)
    assert math.isnan(predicted_learning_rate("adam", 4.0, None))


def _trials(curvature: bool):
    import pandas as pd

    df = pd.DataFrame({
        "study": "d", "example": "exploding_gradients", "activation": "relu", "scaler": "none",
        "optimizer": ["sgd"] * 6 + ["adam"] * 6, "loss": "binary_crossentropy", "schedule": "constant",
        "batch_size": 1000, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
        "learning_rate": [0.1, 0.1, 1.0, 1.0, 10.0, 10.0] * 2, "seed": [0, 1] * 6,
        "status": ["stable"] * 4 + ["diverged"] * 2 + ["stable"] * 2 + ["unstable"] * 4,
        "initial_loss": 0.7, "final_loss": 0.5})
    if curvature:
        df["sharpness_init"] = [1.0, 3.0] * 6
        df["sharpness_early"] = [1.0, 1.0, 2.0, 4.0, 9.0, 9.0] * 2
        df["precond_sharpness_init"] = [None] * 6 + [100.0, 300.0] * 3
        df["precond_sharpness_early"] = [None] * 6 + [380.0, 380.0, 1.0, 1.0, 1.0, 1.0]
    return df


def test_boundary_predicts_the_edge_from_the_curvature_and_the_map_shows_it():
    """2/λ for SGD and 38/λ(P⁻¹H) for Adam: init from the median over the setting's runs, early
    from the seeds at lr_stable_max; null when the study measured nothing."""
    from rich.console import Console

    from sweep.results import maps
    from sweep.results.tables import map_table

    map_df, boundary = maps.build(_trials(True))
    b = boundary.set_index(boundary["optimizer"].astype(str))
    assert b.loc["sgd", "lr_stable_max"] == 1.0 and b.loc["adam", "lr_stable_max"] == 0.1
    assert b.loc["sgd", "lr_predicted_init"] == pytest.approx(2 / 2.0)  # median of 2/1 and 2/3
    assert b.loc["sgd", "lr_predicted_early"] == pytest.approx(2 / 3.0)  # seeds at lr 1.0: 2 and 4
    assert b.loc["adam", "lr_predicted_init"] == pytest.approx(38 / 200.0)
    assert b.loc["adam", "lr_predicted_early"] == pytest.approx(38 / 380.0)
    console = Console(width=200, record=True)
    console.print(map_table(map_df, boundary, [0.1, 1.0, 10.0], "t"))
    text = console.export_text()
    assert "predicted" in text and "1 / 0.67" in text and "0.19 / 0.1" in text

    _, plain = maps.build(_trials(False))
    assert plain[["lr_predicted_init", "lr_predicted_early"]].isna().all().all()
    console = Console(width=200, record=True)
    console.print(map_table(*maps.build(_trials(False)), [0.1, 1.0, 10.0], "t"))
    assert "predicted" not in console.export_text()


def test_engines_agree_on_a_keras_graph():
    """The probe through `tf.vectorized_map` of a user's Conv2D model (one seed: the initial
    measurement maps a lone run) against the keras engine's, for SGD and Adam."""
    s = parse('[study]\nname="g"\nexample="builders:tiny_cnn"\nepochs=2\nseeds=[0]\n[grid]\n'
              'learning_rate=[0.05]\noptimizer=["sgd", "adam"]\n'
              '[telemetry]\nsharpness = {every_epochs = 1, iterations = 20}', "g.toml")
    runs = s.plan()
    for p, k in zip(PopulationEngine().train(s, runs), KerasEngine().train(s, runs)):
        assert p.engine == "population" and sorted(p.sharpness) == sorted(k.sharpness) == [0, 1, 2]
        for epoch in k.sharpness:
            assert p.sharpness[epoch] == pytest.approx(k.sharpness[epoch], rel=1e-3)
        for epoch in k.precond_sharpness:
            assert p.precond_sharpness[epoch] == pytest.approx(k.precond_sharpness[epoch], rel=1e-2)
