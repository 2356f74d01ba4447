"""The population engine against the keras engine (the reference), run for run.

For every catalog example, configurations across its grid (stable learning rates, the edge,
and non-finite ones where the example has them) are trained by both engines from the same
seeds. Each engine's own float spread is measured alongside: the keras engine again under
rounding-level changes (`PERTURBATIONS`: its step compiled by XLA, whose kernels round
differently at every op as the population's batched ops do; initial weights moved one unit in
the last place), and the population engine again from initial weights moved one ulp
(`POPULATION_PERTURBATIONS`). A run whose losses an engine reproduces only to a relative spread
s under such changes cannot be held to agree more closely with another implementation that
rounds differently at every op. So while both are finite each epoch's loss must agree to
max(1e-4, 10 x s), s being the largest spread of either engine's perturbed runs up to that
epoch; the first non-finite step to within one step (where rounding moves it, to within one
step of a step some perturbed run of the other engine reaches); and the verdicts on at least
99 % of runs, with every disagreement printed alongside the perturbed runs' verdicts.

Rounding-decided runs. Where training is chaotic a run's verdict is decided by float rounding:
some perturbed run of either engine reaches another verdict than that engine unperturbed. Such
a run is printed as "rounding-decided", and its losses are compared only up to the epoch where a
perturbed run parts from its engine by more than 1e-4. A verdict disagreement is excused only
where the two engines' verdicts under rounding meet: the population's verdict is one that some
perturbed Keras run reaches, or Keras's one that some perturbed population run reaches. Failing
that it gets a closer look (`CLOSER_LOOK_ULPS`) and is excused only if Keras itself, so
perturbed, reaches the population's verdict. Every disagreement not excused counts against the
99 % bar, taken over the runs that are not rounding-decided. All of this samples the engines'
sensitivity, it does not bound it: a rounding event that the perturbations and the closer look
happen to miss fails the bar.

Why the population's own spread counts. Until 2026-11-21 only Keras's was sampled, and two runs
failed that no arithmetic fault explains (started from Keras's own weights and slots, a
population step differs from Keras's next step as much as Keras's own XLA-compiled step does:
within 7e-7 over 64 steps of the categorical run, 3e-6 over 700 steps of the exploding one):
- exploding_gradients, lr 0.001, batch 16, relu, seed 0 (with and without clipnorm 1) was
  1.45e-4 from Keras at epoch 12 where Keras's sampled spread was 2.5e-8. At step 581 one
  sample's first-layer ReLU input is -7.9e-8 in Keras (-4.7e-10 in Keras's XLA run) and +2.8e-9
  along the population's path, so rounding turns the unit on there. The population from
  weights moved -1 ulp stays on Keras's side (its losses equal Keras's to the 6 digits
  printed), +1 ulp flips and parts from the population by 1.3e-4 at epoch 12.
- categorical_clipnorm, lr 0.1, global_clipnorm 1, seed 0: population stable, Keras unstable
  and so were its 13 perturbed runs but -2 ulp (stalled). The population from weights moved
  +-1 ulp ends unstable, Keras's verdict.

Measured, full form (5 Keras and 2 population perturbations; `pytest -s -m slow
tests/test_population.py -k "matches_keras and EXAMPLE"`): all six examples pass, with no
disagreement that is not excused; the counts per example are in README "The population engine
against Keras". In the 2026-11-21 run every disagreement was on a run whose verdict one engine's
own perturbed runs already move, and in each the engines' verdicts under rounding met. On the
rounding-decided runs the population moved by +-1 ulp reached the same verdict as Keras's XLA
step moved the same way in 49 of 62 cases, where Keras's plain and XLA steps so moved agreed in
39 of 62.

`--quick` (CI): 5-6 configurations per example, one seed, 3 epochs. Without it: a wider
grid, two seeds, each example's own number of epochs.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import pytest

import sweep.engines.keras_engine as keras_engine
import sweep.engines.population.engine as population_engine
import sweep.engines.population.sizing as sizing
import sweep.engines.population.train as population_train
from sweep.catalog import EXAMPLES
from sweep.engines import Outcome, example_data, problem
from sweep.engines.keras_engine import KerasEngine
from sweep.engines.population import (PopulationEngine, initial_model, population_size, populations,
                                      shared_activations, train_population)
from sweep.engines.population.plateau import Plateau
from sweep.spec import config_from_dict, parse
from sweep.verdict import judge

# Per example: the axes that make its grid, in a small (quick) and a wider (full) form.
GRIDS = {
    "exploding_gradients": (
        # relu and tanh: their runs share one program (population_engine.shared_activations)
        {"learning_rate": [0.001, 0.1, 3.0], "clipnorm": ["none", 1.0], "activation": ["relu", "tanh"]},
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
        # adam only here: sgd at lr 1.0 and rmsprop at lr 0.1 part from Keras at a rounding-decided
        # step (a ReLU input ~1e-7 from zero flips), before or after Keras's own perturbed re-runs
        # do, which a per-epoch bar cannot tell from a fault: tests/test_population_steps.py
        # checks their arithmetic step by step from Keras's own state instead
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


# Keras's own float spread, sampled by training the keras engine again under rounding-level
# changes: name -> (the training step compiled by XLA, the direction in which every nonzero initial
# weight moves by one unit in the last place: np.nextafter toward +inf or -inf, None for not at all;
# zero biases stay zero). XLA compiles other kernels than TensorFlow's (Eigen, oneDNN), so the
# rounding of every op of every step changes, as it does in the population engine's batched ops;
# the plain step keeps Keras's kernels and changes only the initial weights, whose one-ulp
# difference chaos then grows.
PERTURBATIONS = {
    "xla": (True, None),
    "xla +1ulp": (True, np.inf),
    "xla -1ulp": (True, -np.inf),
    "plain +1ulp": (False, np.inf),
    "plain -1ulp": (False, -np.inf),
}
# The CI form keeps one XLA perturbation (an XLA-compiled keras run spends most of its short
# time compiling: about 3x a plain one) and adds the cheap plain one in the other direction.
QUICK_PERTURBATIONS = ("xla +1ulp", "plain -1ulp")


# Every XLA-compiled keras run leaves its compiled program mapped for good (measured: about 230
# memory maps a run, released neither by keras.backend.clear_session nor by clearing TensorFlow's
# kernel cache). Past vm.max_map_count (65530 by default) the process dies of a segmentation
# fault, as the full form of exploding_gradients did after about 240 such runs. So XLA-compiled
# keras runs are trained in child processes, at most this many in each.
XLA_RUNS_PER_PROCESS = 100


def moved(weights: np.ndarray, toward: float, ulps: int = 1) -> np.ndarray:
    """Every nonzero entry moved `ulps` floats toward `toward` (+inf or -inf); zeros stay zero."""
    for _ in range(ulps):
        weights = np.where(weights != 0, np.nextafter(weights, np.float32(toward)), weights)
    return weights


def keras_perturbed(study_, runs, jit: bool, toward: float | None) -> list[Outcome | BaseException]:
    """The keras engine on these runs with one of the PERTURBATIONS (the XLA ones in children)."""
    if not jit:
        return keras_perturbed_here(study_, runs, jit, toward)
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(runs), XLA_RUNS_PER_PROCESS):
            job, result = os.path.join(tmp, "job.pickle"), os.path.join(tmp, "result.pickle")
            with open(job, "wb") as fh:
                pickle.dump((study_, runs[start:start + XLA_RUNS_PER_PROCESS], jit, toward), fh)
            child = subprocess.run([sys.executable, __file__, job, result], capture_output=True, text=True)
            assert child.returncode == 0, f"keras child process failed ({child.returncode}):\n{child.stderr[-3000:]}"
            with open(result, "rb") as fh:
                outcomes += pickle.load(fh)
    return outcomes


def keras_perturbed_here(study_, runs, jit: bool, toward: float | None, ulps: int = 1) -> list[Outcome | BaseException]:
    """The keras engine on these runs in this process, its step compiled by XLA if `jit`, every
    nonzero initial weight moved `ulps` times to the next float toward `toward` (None: unmoved)."""
    import tensorflow as tf

    original, real_function = keras_engine.problem, tf.function

    def nudged(s, config, seed):
        p = original(s, config, seed)
        p.model.set_weights([moved(w, toward, ulps) for w in p.model.get_weights()])
        return p

    def xla_function(*args, **kwargs):
        kwargs.setdefault("jit_compile", True)
        return real_function(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        if toward is not None:
            m.setattr(keras_engine, "problem", nudged)
        if jit:
            m.setattr(tf, "function", xla_function)
        return KerasEngine().train(study_, runs)


# The population engine's own spread, sampled the same way: the population trained again from
# initial weights moved one ulp (in both forms: a population pass costs little). Two
# implementations that round differently can agree no more closely than each agrees with itself,
# and where a run's trajectory passes near a ReLU kink the population's rounding can decide it
# where Keras's perturbed runs do not (exploding_gradients, lr 0.001, batch 16, relu, seed 0: a
# first-layer ReLU input at step 581 is -7.9e-8 in Keras and its perturbed runs, +2.8e-9 on the
# population's path; the population -1 ulp stays on Keras's side and ends within 1e-6 of Keras's
# losses, +1 ulp flips with the population and parts from it by 1.3e-4 at epoch 12: measured).
POPULATION_PERTURBATIONS = {"population +1ulp": np.inf, "population -1ulp": -np.inf}


def population_perturbed(study_, runs, toward: float) -> list[Outcome | BaseException]:
    """The population engine on these runs, every nonzero initial weight moved one ulp toward `toward`."""
    real = population_train.initial_model  # where train_population reads the initial weights

    def nudged(s, config, seed):
        arch, theta = real(s, config, seed)
        return arch, moved(theta, toward)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(population_train, "initial_model", nudged)
        return PopulationEngine().train(study_, runs)


# A verdict disagreement on a run whose verdict the PERTURBATIONS all keep gets a closer look:
# Keras's plain step from initial weights moved by these many ulps (still rounding-level), one
# after another, until Keras itself reaches the population's verdict (then the run is
# rounding-decided) or they run out (then it counts against the 99 % bar).
CLOSER_LOOK_ULPS = (2, -2, 3, -3, 4, -4, 5, -5)


def keras_moved(study_, run, ulps: int) -> Outcome:
    """The keras engine's plain step on one run, every nonzero initial weight moved by `ulps` ulps."""
    [outcome] = keras_perturbed_here(study_, [run], False, math.copysign(np.inf, ulps), abs(ulps))
    assert isinstance(outcome, Outcome), outcome
    return outcome


def own_deviation(k: Outcome, others: list[Outcome]) -> np.ndarray:
    """An engine's own spread at each of its epochs: the largest relative deviation of any of its
    perturbed runs' loss from its unperturbed run's `k` (inf where one is non-finite or has stopped)."""
    own = np.full(len(k.epoch_loss), 0.0)
    for kp in others:
        r = np.full(len(k.epoch_loss), np.inf)
        d = relative(kp.epoch_loss, k.epoch_loss)
        r[:len(d)] = np.nan_to_num(d, nan=np.inf)
        own = np.maximum(own, r)
    return own


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
def test_population_matches_keras(example, request):
    quick = request.config.getoption("--quick")
    s = study(example, quick)
    runs = s.plan()
    ref = KerasEngine().train(s, runs)
    names = QUICK_PERTURBATIONS if quick else tuple(PERTURBATIONS)
    perturbed = [keras_perturbed(s, runs, *PERTURBATIONS[name]) for name in names]
    pop = PopulationEngine().train(s, runs)
    pop_perturbed = {name: population_perturbed(s, runs, toward) for name, toward in POPULATION_PERTURBATIONS.items()}

    problems, disagreements, decided, worst = [], [], [], (0.0, 0.0)
    counted = 0  # disagreements not excused: the ones held to the 99 % bar (over the runs not rounding-decided)
    for i, (run, k, p) in enumerate(zip(runs, ref, pop)):
        assert isinstance(p, Outcome), f"{run}: {p!r}"
        assert p.engine == "population"
        others = [outcomes[i] for outcomes in perturbed]
        pop_others = [outcomes[i] for outcomes in pop_perturbed.values()]
        assert all(isinstance(o, Outcome) for o in pop_others), f"{run}: {pop_others!r}"
        c = run.config
        label = (f"lr={c.learning_rate} clipnorm={c.clipnorm} global={c.global_clipnorm} clipvalue={c.clipvalue} "
                 f"bs={c.batch_size} act={c.activation} scaler={c.scaler} opt={c.optimizer} loss={c.loss} "
                 f"schedule={c.schedule} seed={run.seed}")
        sp, sk = status(s, p), status(s, k)
        perturbed_verdicts = ", ".join(f"{name} {status(s, kp)} (step {kp.first_nonfinite_step})"
                              for name, kp in [*zip(names, others), *zip(pop_perturbed, pop_others)])
        keras_verdicts = {status(s, kp) for kp in others}
        pop_verdicts = {status(s, pp) for pp in pop_others}
        # Rounding-decided: some perturbed run of either engine reaches another verdict than that
        # engine does unperturbed.
        decided_by_rounding = keras_verdicts != {sk} or pop_verdicts != {sp}
        # A disagreement is excused only where the engines' verdicts under rounding meet: some
        # perturbed Keras run reaches the population's verdict, or some perturbed population run
        # Keras's. Failing that, the closer look: Keras itself must reach the population's verdict.
        excused = sp == sk or sp in keras_verdicts or sk in pop_verdicts
        if not excused:
            for ulps in CLOSER_LOOK_ULPS:
                kp = keras_moved(s, run, ulps)
                perturbed_verdicts += f", plain {ulps:+d}ulp {status(s, kp)} (step {kp.first_nonfinite_step})"
                if status(s, kp) == sp:
                    excused = decided_by_rounding = True
                    break
        if decided_by_rounding:
            decided.append(f"{label}: keras {sk} (step {k.first_nonfinite_step}); {perturbed_verdicts}; "
                           f"population {sp} (step {p.first_nonfinite_step})")
        # l0 is one forward pass: no chaos, only rounding.
        if math.isfinite(k.initial_loss):
            assert p.initial_loss == pytest.approx(k.initial_loss, rel=1e-5), label
        # Epoch losses while both are finite, against the largest own spread of either engine so
        # far (the population's covers the epochs both have: the only ones compared).
        own = own_deviation(k, others)
        pop_own = own_deviation(p, pop_others)
        both = min(len(own), len(pop_own))
        own[:both] = np.maximum(own[:both], pop_own[:both])
        spread = np.maximum.accumulate(own)
        # A rounding-decided run is compared up to the epoch where some perturbed run parts from its
        # engine beyond the base tolerance (or stops): past it neither engine reproduces itself.
        parted = np.flatnonzero(~(own <= 1e-4))
        last = (int(parted[0]) if len(parted) else len(own) - 1) if decided_by_rounding else math.inf
        deviation = relative(p.epoch_loss, k.epoch_loss)
        for e, dev in enumerate(deviation):
            if e > last or not (math.isfinite(k.epoch_loss[e]) and math.isfinite(p.epoch_loss[e])):
                break
            tol = max(1e-4, 10 * spread[e])
            worst = max(worst, (dev, spread[e]))
            if dev > tol:
                problems.append(f"{label}: epoch {e + 1} loss {p.epoch_loss[e]!r} vs keras {k.epoch_loss[e]!r} "
                                f"(relative {dev:.2e} > tolerance {tol:.2e}; the engines' own spread {spread[e]:.2e})")
                break
        if p.first_nonfinite_step is not None and k.first_nonfinite_step is not None:
            # Within one step of Keras's; where rounding moves the step, the verdicts' rule: the
            # engines' steps under rounding meet (the population's is one a perturbed Keras run
            # reaches, or Keras's one a perturbed population run reaches, to within one step).
            def near(step, steps):
                return any(other is not None and abs(step - other) <= 1 for other in steps)

            if not (near(p.first_nonfinite_step, [k.first_nonfinite_step] + [kp.first_nonfinite_step for kp in others])
                    or near(k.first_nonfinite_step, [pp.first_nonfinite_step for pp in pop_others])):
                problems.append(f"{label}: first non-finite step {p.first_nonfinite_step} vs keras "
                                f"{k.first_nonfinite_step} ({perturbed_verdicts})")
        if sp != sk:
            counted += not excused
            disagreements.append(f"{label}: population {sp} (step {p.first_nonfinite_step}), keras {sk} "
                                 f"(step {k.first_nonfinite_step}); {perturbed_verdicts}; the engines' own spread "
                                 f"by keras's last epoch {spread[-1]:.1e}: "
                                 + ("excused, the engines' verdicts under rounding meet" if excused else "NOT excused"))
        # Telemetry defined as the keras engine defines it. A plateau decision is a threshold on
        # the epoch loss, so rounding can flip one near the threshold: the learning rates are
        # checked against Keras's own callback replayed on this run's own losses.
        if sp == sk and p.first_nonfinite_step == k.first_nonfinite_step:
            assert len(p.grad_norms) == len(k.grad_norms), label
        expected = keras_plateau_rates(p.epoch_loss, c.learning_rate) if c.schedule == "plateau" else \
            [float(np.float32(c.learning_rate))] * len(p.epoch_loss)
        assert p.epoch_learning_rate == expected, label
    statuses = dict(sorted(Counter(status(s, k) for k in ref).items()))
    print(f"\n{example}: {len(runs)} runs, keras's statuses {statuses}; "
          f"own spread from {len(names)} perturbed keras runs each ({', '.join(names)}) and "
          f"{len(pop_perturbed)} perturbed population runs; "
          f"largest loss deviation {worst[0]:.2e} (the engines' own spread there {worst[1]:.2e}); "
          f"{len(decided)} rounding-decided runs; {len(disagreements)} verdict disagreements, {counted} of them "
          f"not excused")
    for d in decided:
        print("  rounding-decided:", d)
    for d in disagreements:
        print("  verdict disagreement:", d)
    assert not problems, "\n".join(problems)
    assert counted <= 0.01 * (len(runs) - len(decided)), "\n".join(disagreements)


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


def test_activations_sharing_a_program_train_as_they_would_apart():
    """relu and tanh runs in one program (each run selecting its activation) end where the same
    runs end in a program of their own activation, to rounding; a run given the other
    activation, or the other's gradient, would be off by far more (relu and tanh runs differ by
    more than 1e-3 here)."""
    s = parse('[study]\nname="a"\nexample="exploding_gradients"\nepochs=2\nseeds=[0]\n[grid]\n'
              'learning_rate=[0.001, 0.01]\nactivation=["relu", "tanh"]', "a.toml")
    runs = s.plan()
    n = len(example_data(s.example, s.data_seed, "none")[0])
    assert shared_activations([r.config.activation for r in runs], len(runs) * s.epochs * n) == \
        [("relu", "tanh")]
    together = train_population(s, runs, activations=("relu", "tanh"))
    apart = {}
    for activation in ("relu", "tanh"):
        mine = [r for r in runs if r.config.activation == activation]
        for run, alone in zip(mine, train_population(s, mine, activations=(activation,))):
            shared = together[runs.index(run)]
            np.testing.assert_allclose(shared.epoch_loss, alone.epoch_loss, rtol=1e-5)
            np.testing.assert_allclose(shared.grad_norms, alone.grad_norms, rtol=1e-4)
            apart[(activation, run.config.learning_rate)] = alone.epoch_loss[-1]
    assert all(abs(apart[("relu", lr)] - apart[("tanh", lr)]) > 1e-3 for lr in (0.001, 0.01))


def test_user_builders_train_on_the_population_engine():
    s = parse('[study]\nname="u"\nexample="builders:tiny_model"\nepochs=1\nseeds=[0]', "u.toml")
    [out] = PopulationEngine().train(s, s.plan())
    assert isinstance(out, Outcome) and out.engine == "population" and len(out.epoch_loss) == 1


@pytest.mark.parametrize("builder, dense_path", [("tiny_model", True), ("smoothed_model", False),
                                                 ("normalized_model", False)])
def test_a_users_plain_dense_stack_with_a_named_loss_takes_the_dense_path(builder, dense_path):
    """The catalog's hand-written Dense path serves a user's plain Dense stack compiled with a
    Keras loss by name at its defaults (`model.named_loss`); another loss or layer reads as a
    graph. Either way the runs are Keras's."""
    from sweep.engines.keras_engine import KerasEngine
    from sweep.engines.population import Architecture, initial_model

    s = parse(f'[study]\nname="u"\nexample="builders:{builder}"\nepochs=3\nseeds=[0, 1]\n'
              '[grid]\nlearning_rate=[0.01, 0.1]\nactivation=["relu", "tanh"]', "u.toml")
    arch, _ = initial_model(s, s.plan()[0].config, 0)
    assert isinstance(arch, Architecture) == dense_path
    if dense_path:
        assert arch.loss == "binary_crossentropy"
    pop, ref = PopulationEngine().train(s, s.plan()), KerasEngine().train(s, s.plan())
    for p, k in zip(pop, ref):
        assert p.engine == "population"
        np.testing.assert_allclose(p.epoch_loss, k.epoch_loss, rtol=1e-5)


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

    real = population_engine.train_population
    sizes = []

    def tight(study_, runs, **kwargs):
        sizes.append(len(runs))
        if len(runs) > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "out of memory (simulated)")
        return real(study_, runs, **kwargs)

    monkeypatch.setattr(population_engine, "train_population", tight)
    s = parse('[study]\nname="m"\nexample="exploding_gradients"\nepochs=1\nseeds=[0]\n[grid]\n'
              'learning_rate=[0.001, 0.003, 0.01, 0.03, 0.1]', "m.toml")
    out = PopulationEngine().train(s, s.plan())
    assert all(isinstance(o, Outcome) and len(o.epoch_loss) == 1 for o in out)
    assert max(sizes) > 2 and sizes.count(1) + sizes.count(2) >= 3


def test_population_size_follows_memory(monkeypatch):
    s = study("exploding_gradients", True)
    arch, _ = initial_model(s, s.plan()[0].config, 0)
    monkeypatch.setattr(sizing, "available_host_memory", lambda: 64 << 30)
    assert population_size(arch, 32, 1000, "adam") == sizing.CPU_MAX_K
    monkeypatch.setattr(sizing, "available_host_memory", lambda: 8 << 20)
    assert 1 <= population_size(arch, 32, 1000, "adam") < sizing.CPU_MAX_K
    size, parts = populations(list(range(130)), 48)
    assert size == 44 and sum(map(len, parts)) == 130 and max(map(len, parts)) == size


if __name__ == "__main__":  # a child process of keras_perturbed: job pickle in, outcomes pickle out
    with open(sys.argv[1], "rb") as fh:
        results = keras_perturbed_here(*pickle.load(fh))
    with open(sys.argv[2], "wb") as fh:
        pickle.dump([r if isinstance(r, Outcome) else RuntimeError(repr(r)) for r in results], fh)
