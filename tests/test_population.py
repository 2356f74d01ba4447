"""The population engine against the keras engine (the reference), run for run.

For every catalog example, configurations across its grid (stable learning rates, the edge,
and non-finite ones where the example has them) are trained by both engines from the same
seeds. Keras's own float spread is measured alongside: the keras engine again with its
training step compiled by XLA (other kernels, so other rounding at every op of every step) from
initial weights moved by one unit in the last place. A run whose losses Keras itself reproduces
only to a relative spread s under such rounding-level changes cannot be held to agree more
closely with an implementation that also rounds differently at every op (a batched matmul sums
in another order than Keras's 2-D matmul). So while both are finite each epoch's loss must agree
to max(1e-4, 10 x s), s being Keras's spread up to that epoch; the first non-finite step to
within one step; and the verdicts on at least 99 % of runs, with every disagreement printed
(alongside the verdict of Keras's own other-rounding run).

Rounding-decided runs. At chaotic learning rates (Adam at lr 1 or 10 without clipping) a
run's verdict is decided by float rounding: Keras's own other-rounding run reaches another
verdict than Keras. Such a run is counted and printed as "rounding-decided"; a verdict
disagreement on it is printed but left out of the 99 % count (which is taken over the other
runs), and its losses are compared only up to the epoch where Keras's two runs part by more
than 1e-4 (or one of them stops). Every other run keeps the bar above, including the
first non-finite step. Measured (full form, population engine at LLVM O1): categorical_clipnorm
48 runs, 7 rounding-decided, 6 verdict disagreements of which 3 on rounding-decided runs (lr 0.1,
1, 10) and 3 not (lr 10 twice, lr 0.1 with global_clipnorm 1): Keras's one other-rounding run
happened to agree with Keras there, so this example still fails the bar: one perturbation
samples Keras's sensitivity, it does not bound it.
plateau_schedule 48 runs, 1 rounding-decided (lr 1, tanh, plateau: population stable, Keras
diverged, Keras's other rounding stable), no other disagreement: passes.

`--quick` (CI): 5-6 configurations per example, one seed, 3 epochs. Without it: a wider
grid, two seeds, each example's own number of epochs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sweep.engines.keras_engine as keras_engine
from sweep.catalog import EXAMPLES
from sweep.engines import Outcome, problem
from sweep.engines.keras_engine import KerasEngine, train_one
from sweep.engines.plateau import Plateau
from sweep.engines.population import PopulationEngine, initial_model, populations, population_size
from sweep.spec import config_from_dict, parse
from sweep.verdict import judge

ULP = 2.0 ** -23

# Per example: the axes that make its grid, in a small (quick) and a wider (full) form.
GRIDS = {
    "exploding_gradients": (
        {"learning_rate": [0.001, 0.1, 3.0], "clipnorm": ["none", 1.0], "activation": ["relu"]},
        {"learning_rate": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "clipnorm": ["none", 0.1, 1.0],
         "batch_size": [16, 128], "activation": ["relu", "tanh"]}),
    "log_of_zero": (
        {"learning_rate": [0.01, 1.0, 10.0], "loss": ["handwritten", "handwritten_clipped"]},
        {"learning_rate": [1e-3, 1e-2, 0.1, 1.0, 10.0], "loss": ["handwritten", "handwritten_clipped",
                                                                  "binary_crossentropy"],
         "activation": ["relu", "tanh"]}),
    "unscaled_inputs": (
        {"learning_rate": [0.001, 0.1, 10.0], "scaler": ["none", "standard"]},
        {"learning_rate": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "scaler": ["none", "standard", "minmax"],
         "activation": ["relu", "tanh"]}),
    "categorical_clipnorm": (
        {"learning_rate": [0.001, 0.1, 10.0], "global_clipnorm": ["none", 1.0]},
        {"learning_rate": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "clipnorm": ["none", 1.0],
         "global_clipnorm": ["none", 1.0], "clipvalue": ["none", 0.5]}),
    "minmax_scaling": (
        # adam only: sgd and rmsprop runs go to the keras engine (population.VERIFIED_OPTIMIZERS;
        # test_unverified_optimizers_train_on_keras_and_say_so)
        {"learning_rate": [0.001, 0.1, 10.0], "scaler": ["none", "minmax"]},
        {"learning_rate": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "scaler": ["none", "standard", "minmax"]}),
    "plateau_schedule": (
        {"learning_rate": [0.001, 0.1, 10.0], "schedule": ["constant", "plateau"]},
        {"learning_rate": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "schedule": ["constant", "plateau"],
         "activation": ["relu", "tanh"]}),
}


def study(example: str, quick: bool):
    grid = GRIDS[example][0 if quick else 1]
    lines = "\n".join(f"{axis} = {values!r}".replace("'", '"') for axis, values in grid.items())
    epochs = 3 if quick else EXAMPLES[example].epochs
    seeds = [0] if quick else [0, 1]
    return parse(f'[study]\nname="eq"\nexample="{example}"\nepochs={epochs}\nseeds={seeds}\n[grid]\n{lines}',
                 "eq.toml")


def keras_other_rounding(study_, runs, monkeypatch):
    """Keras's own float spread: the keras engine again, its training step compiled by XLA
    (other kernels, so other rounding at every op of every step, as the population engine's
    batched ops have) and every initial weight moved by one unit in the last place."""
    import tensorflow as tf

    original, real_function = keras_engine.problem, tf.function

    def nudged(s, config, seed):
        p = original(s, config, seed)
        p.model.set_weights([w * np.float32(1 + ULP) for w in p.model.get_weights()])
        return p

    def xla_function(*args, **kwargs):
        kwargs.setdefault("jit_compile", True)
        return real_function(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(keras_engine, "problem", nudged)
        m.setattr(tf, "function", xla_function)
        return KerasEngine().train(study_, runs)


def keras_plateau_rates(losses: list[float], lr: float) -> list[float]:
    """The learning rate of every epoch that Keras's ReduceLROnPlateau gives for these losses."""
    import keras

    from sweep.catalog import PLATEAU

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    rates = []
    for epoch, loss in enumerate(losses):
        rates.append(float(np.asarray(model.optimizer.learning_rate)))
        if math.isfinite(loss):
            callback.on_epoch_end(epoch, {"loss": float(loss)})
    return rates


def relative(a: list[float], b: list[float]) -> np.ndarray:
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], float), np.asarray(b[:n], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(a - b) / np.maximum(np.abs(b), 1e-30)


def status(study_, o: Outcome) -> str:
    return judge(o.initial_loss, o.epoch_loss, o.first_nonfinite_step, study_.verdict)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_population_matches_keras(example, request, monkeypatch):
    quick = request.config.getoption("--quick")
    s = study(example, quick)
    runs = s.plan()
    ref = KerasEngine().train(s, runs)
    spread_runs = keras_other_rounding(s, runs, monkeypatch)
    pop = PopulationEngine().train(s, runs)

    problems, disagreements, worst = [], [], (0.0, 0.0)
    rounding_decided = 0  # runs whose verdict Keras itself changes under rounding-level changes
    counted = 0  # disagreements on the other runs: the ones held to the 99 % bar
    for run, k, kp, p in zip(runs, ref, spread_runs, pop):
        assert isinstance(p, Outcome), f"{run}: {p!r}"
        assert p.engine == "population"
        c = run.config
        label = (f"lr={c.learning_rate} clipnorm={c.clipnorm} global={c.global_clipnorm} clipvalue={c.clipvalue} "
                 f"bs={c.batch_size} act={c.activation} scaler={c.scaler} opt={c.optimizer} loss={c.loss} "
                 f"schedule={c.schedule} seed={run.seed}")
        sp, sk, skp = status(s, p), status(s, k), status(s, kp)
        decided_by_rounding = sk != skp
        rounding_decided += decided_by_rounding
        # l0 is one forward pass: no chaos, only rounding.
        if math.isfinite(k.initial_loss):
            assert p.initial_loss == pytest.approx(k.initial_loss, rel=1e-5), label
        # Epoch losses while both are finite, against Keras's own spread so far.
        own = relative(kp.epoch_loss, k.epoch_loss)
        spread = np.maximum.accumulate(np.nan_to_num(own, nan=np.inf))
        # A rounding-decided run is compared up to the epoch where Keras's two runs part beyond
        # the base tolerance (or one of them stops): past it Keras does not reproduce itself.
        parted = np.flatnonzero(~(own <= 1e-4))
        last = (int(parted[0]) if len(parted) else len(own) - 1) if decided_by_rounding else math.inf
        deviation = relative(p.epoch_loss, k.epoch_loss)
        for e, dev in enumerate(deviation):
            if e > last or not (math.isfinite(k.epoch_loss[e]) and math.isfinite(p.epoch_loss[e])):
                break
            tol = max(1e-4, 10 * spread[e]) if e < len(spread) else math.inf
            worst = max(worst, (dev, spread[e] if e < len(spread) else math.inf))
            if dev > tol:
                problems.append(f"{label}: epoch {e + 1} loss {p.epoch_loss[e]!r} vs keras {k.epoch_loss[e]!r} "
                                f"(relative {dev:.2e} > tolerance {tol:.2e}; keras's own spread {spread[e]:.2e})")
                break
        if p.first_nonfinite_step is not None and k.first_nonfinite_step is not None:
            if abs(p.first_nonfinite_step - k.first_nonfinite_step) > 1:
                problems.append(f"{label}: first non-finite step {p.first_nonfinite_step} vs keras "
                                f"{k.first_nonfinite_step}")
        if sp != sk:
            counted += not decided_by_rounding
            disagreements.append(f"{label}: population {sp} (step {p.first_nonfinite_step}), keras {sk} "
                                 f"(step {k.first_nonfinite_step}), keras with other rounding {skp} "
                                 f"(step {kp.first_nonfinite_step})"
                                 + (": rounding-decided" if decided_by_rounding else ""))
        # Telemetry defined as the keras engine defines it. A plateau decision is a threshold on
        # the epoch loss, so rounding can flip one near the threshold: the learning rates are
        # checked against Keras's own callback replayed on this run's own losses.
        if sp == sk and p.first_nonfinite_step == k.first_nonfinite_step:
            assert len(p.grad_norms) == len(k.grad_norms), label
        expected = keras_plateau_rates(p.epoch_loss, c.learning_rate) if c.schedule == "plateau" else \
            [float(np.float32(c.learning_rate))] * len(p.epoch_loss)
        assert p.epoch_learning_rate == expected, label
    statuses = [status(s, k) for k in ref]
    print(f"\n{example}: {len(runs)} runs, statuses {dict(zip(*np.unique(statuses, return_counts=True)))}; "
          f"largest loss deviation {worst[0]:.2e} (keras's own spread there {worst[1]:.2e}); "
          f"{len(disagreements)} verdict disagreements, {counted} of them on runs Keras decides the same way under "
          f"other rounding; {rounding_decided} rounding-decided runs (keras against its own other-rounding run)")
    for d in disagreements:
        print("  verdict disagreement:", d)
    assert not problems, "\n".join(problems)
    assert counted <= 0.01 * (len(runs) - rounding_decided), "\n".join(disagreements)


def test_initial_weights_are_the_keras_builders():
    """The weights the population starts from are the builder's, for every seed and activation."""
    s = study("exploding_gradients", True)
    for seed in (0, 7):
        for activation in ("relu", "tanh"):
            config = config_from_dict({**EXAMPLES["exploding_gradients"].defaults, "activation": activation})
            _, theta = initial_model(s, config, seed)
            keras_weights = [v.numpy().ravel() for v in problem(s, config, seed).model.trainable_variables]
            np.testing.assert_array_equal(theta, np.concatenate(keras_weights))


def test_a_nonfinite_run_does_not_touch_the_others():
    """The same population with one run that turns NaN (the hand-written log loss at lr 10) and
    with a stable run in its place: every other run's numbers are bit for bit the same."""
    base = ('[study]\nname="p"\nexample="log_of_zero"\nepochs=2\nseeds=[0]\n[grid]\n'
            'learning_rate=[0.001, 0.01, {}]\nloss=["handwritten"]')
    with_nan, without = parse(base.format(10.0), "p.toml"), parse(base.format(0.003), "p.toml")
    a = PopulationEngine().train(with_nan, with_nan.plan())
    b = PopulationEngine().train(without, without.plan())
    assert a[2].first_nonfinite_step is not None and b[2].first_nonfinite_step is None
    for x, y in zip(a[:2], b[:2]):
        assert x.epoch_loss == y.epoch_loss and list(x.grad_norms) == list(y.grad_norms)
        assert x.first_nonfinite_step is None


def test_user_builders_train_on_keras_and_say_so():
    s = parse('[study]\nname="u"\nexample="builders:tiny_model"\nepochs=1\nseeds=[0]', "u.toml")
    [out] = PopulationEngine().train(s, s.plan())
    assert isinstance(out, Outcome) and out.engine == "keras" and len(out.epoch_loss) == 1


def test_unverified_optimizers_train_on_keras_and_say_so():
    # sgd at lr 1.0 with the minmax scaler was measured 19 % away from Keras: such runs must
    # get Keras's numbers, from the keras engine, and the row must say which engine ran them
    s = parse('[study]\nname="o"\nexample="minmax_scaling"\nepochs=2\nseeds=[0]\n[grid]\n'
              'learning_rate=[1.0]\nscaler=["minmax"]\noptimizer=["adam", "sgd", "rmsprop"]', "o.toml")
    outs = PopulationEngine().train(s, s.plan())
    assert [o.engine for o in outs] == ["population", "keras", "keras"]
    assert outs[1].epoch_loss == train_one(s, s.plan()[1].config, 0).epoch_loss


def test_plateau_follows_keras_reduce_lr_on_plateau():
    """The host-side rules against Keras's callback on the same losses, epoch by epoch."""
    import keras

    from sweep.catalog import PLATEAU

    rng = np.random.default_rng(3)
    losses = list(np.concatenate([np.linspace(1.0, 0.5, 5), 0.5 + 1e-5 * rng.standard_normal(20),
                                  np.linspace(0.5, 0.4, 5), np.full(12, 0.4)]))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    mine, lr = Plateau(**PLATEAU), 0.01
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"loss": float(loss)})
        lr = mine.on_epoch_end(float(loss), lr)
        assert lr == float(np.asarray(model.optimizer.learning_rate)), epoch
    assert lr < 0.01 * 0.1 ** 2  # the sequence made Keras reduce more than twice


def test_a_population_that_runs_out_of_memory_is_split(monkeypatch):
    import tensorflow as tf

    import sweep.engines.population as population

    real = population.train_population
    sizes = []

    def tight(study_, runs, **kwargs):
        sizes.append(len(runs))
        if len(runs) > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "out of memory (simulated)")
        return real(study_, runs, **kwargs)

    monkeypatch.setattr(population, "train_population", tight)
    s = parse('[study]\nname="m"\nexample="exploding_gradients"\nepochs=1\nseeds=[0]\n[grid]\n'
              'learning_rate=[0.001, 0.003, 0.01, 0.03, 0.1]', "m.toml")
    out = PopulationEngine().train(s, s.plan())
    assert all(isinstance(o, Outcome) and len(o.epoch_loss) == 1 for o in out)
    assert max(sizes) > 2 and sizes.count(1) + sizes.count(2) >= 3


def test_population_size_follows_memory(monkeypatch):
    import sweep.engines.population as population

    s = study("exploding_gradients", True)
    arch, _ = initial_model(s, s.plan()[0].config, 0)
    monkeypatch.setattr(population, "available_host_memory", lambda: 64 << 30)
    assert population_size(arch, 32, 1000, "adam") == population.CPU_MAX_K
    monkeypatch.setattr(population, "available_host_memory", lambda: 8 << 20)
    assert 1 <= population_size(arch, 32, 1000, "adam") < population.CPU_MAX_K
    size, parts = populations(list(range(130)), 48)
    assert size == 44 and sum(map(len, parts)) == 130 and max(map(len, parts)) == size
