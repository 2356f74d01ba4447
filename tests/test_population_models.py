"""The population engine against the keras engine on Keras models of every kind (tests/model_zoo.py).

The population engine trains a user's model by Keras's own layer code (`Model.stateless_call`
under `tf.vectorized_map` over the runs, `sweep.engines.population.model.Graph`). Here a CNN, a
SimpleRNN, an LSTM and a GRU on the adding problem, a Conv1D + LayerNormalization token
classifier reading one-hot tokens and the same reading token ids through an Embedding, and an MLP with BatchNormalization and Dropout are each trained by both engines from
the same seeds, over adam, sgd and rmsprop x no clipping, clipnorm, global_clipnorm and
clipvalue x a gentle and an aggressive learning rate (`LEARNING_RATES`; the aggressive one makes
runs diverge, turn NaN or stall) x two seeds, 3 epochs at batch size 16, whose last batch is
partial (6 of 150 samples).

The tolerance is the one tests/test_population.py justifies for the Dense examples: two
implementations that round differently at every op agree no more closely than each agrees with
itself under rounding-level changes. Each engine's own spread is sampled: the keras engine again
from trainable weights moved one unit in the last place either way and, in the full form, with
its step compiled by XLA (not for a model that draws random numbers: XLA's random streams are
not TensorFlow's, so its Dropout masks would be other masks, not other roundings); the
population again from weights moved one ulp either way. While both are finite each epoch's loss
must agree to max(1e-4, 10 x s), s the largest relative spread of either engine's perturbed
runs up to that epoch. A run some perturbed run of either engine gives another verdict is
rounding-decided, compared only up to where a perturbed run parts from its engine by more than
1e-4, and a verdict disagreement is excused only where the engines' verdicts under rounding meet
(test_population's rules, whose helpers this module uses). A run is chaotic when it is
rounding-decided or some perturbed run parts from its engine by more than 1e-4; where it is not,
the clipped steps and the first non-finite step must be Keras's (the clipped steps may be one
some perturbed run of the other engine counts: a norm within rounding of the threshold).
Besides, for every run: the engine says "population", l0 is Keras's to 1e-6 relative (one
forward pass, no chaos) and the first step's gradient norm to 1e-5.

Verdicts are `sweep.verdict.judge` with the run's baseline loss, as `sweep run` judges them.
`--quick` (CI): every model once, one optimizer and one clipping kind each (`QUICK`, all three
optimizers and all three kinds covered), two runs (gentle without clipping, aggressive with
it), one seed. Without it: the whole matrix, 48 runs per model. Measured figures:
docs/equivalence.md, "Any Keras model".

An Embedding's table takes its gradient slice by slice, as Keras's optimizers do
(`test_an_embeddings_gradient_is_taken_slice_by_slice_as_keras_takes_it`). Models the engine
cannot express train on the keras engine, and `sweep run` says why
(`test_a_model_the_engine_cannot_express_trains_on_keras_and_says_why`).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest
from test_population import CLOSER_LOOK_ULPS, keras_perturbed, moved, relative

import sweep.engines.keras_engine as keras_engine
import sweep.engines.population.model as population_model
import sweep.engines.population.train as population_train
from sweep.driver.session import engine_line
from sweep.engines import Outcome
from sweep.engines.baseline import baseline_loss
from sweep.engines.keras_engine import KerasEngine
from sweep.engines.population import PopulationEngine
from sweep.spec import parse
from sweep.verdict import judge

MODELS = ("cnn", "simple_rnn", "lstm", "gru", "token_conv", "embed_conv", "mlp_bn_dropout")
RANDOM = {"mlp_bn_dropout"}  # its forward pass draws random numbers (Dropout)
# A gentle and an aggressive learning rate per optimizer (3 epochs of tests/model_zoo.py: the
# gentle ones learn, the aggressive ones make RNNs diverge or turn NaN and the others stall).
LEARNING_RATES = {"adam": (0.01, 0.3), "rmsprop": (0.01, 0.3), "sgd": (0.1, 3.0)}
# Thresholds at which clipping acts on these models (gradient norms are about 0.5-3 at the start).
CLIPPING = {"clipnorm": 0.5, "global_clipnorm": 1.0, "clipvalue": 0.1}
# The quick form: per model an optimizer, a clipping kind and whether the population's program is
# compiled by XLA. XLA takes most of the quick form's time on the unrolled LSTM and GRU (about
# 2/3 of the population's time on them), so in CI they run the same program without XLA and the
# SimpleRNN stands for the unrolled recurrent layers under XLA; the full form compiles them all.
QUICK = {"cnn": ("adam", "clipnorm", True), "simple_rnn": ("sgd", "clipvalue", True),
         "lstm": ("rmsprop", "global_clipnorm", False), "gru": ("adam", "global_clipnorm", False),
         "token_conv": ("rmsprop", "clipnorm", True), "embed_conv": ("adam", "clipvalue", True),
         "mlp_bn_dropout": ("sgd", "clipvalue", True)}
EPOCHS, BATCH_SIZE = 3, 16
L0_TOLERANCE, FIRST_NORM_TOLERANCE = 1e-6, 1e-5


def study(builder: str, optimizer: str, kinds, seeds=(0,), learning_rates=None, epochs: int = EPOCHS,
          data_seed: int = 0):
    lrs = list(learning_rates or LEARNING_RATES[optimizer])
    clipping = "".join(f'{kind} = ["none", {CLIPPING[kind]}]\n' for kind in kinds)
    return parse(f'[study]\nname="zoo"\nexample="model_zoo:{builder}"\nepochs={epochs}\nseeds={list(seeds)}\n'
                 f'data_seed={data_seed}\n[grid]\nlearning_rate={lrs}\noptimizer=["{optimizer}"]\n'
                 f'batch_size=[{BATCH_SIZE}]\n{clipping}', "zoo.toml")


def plans(model: str, quick: bool):
    """(study, runs, jit) per optimizer: the whole grid, or QUICK's two runs."""
    if not quick:
        return [(s, s.plan(), True) for s in (study(model, opt, CLIPPING, seeds=(0, 1)) for opt in LEARNING_RATES)]
    optimizer, kind, jit = QUICK[model]
    s = study(model, optimizer, [kind])
    gentle, aggressive = LEARNING_RATES[optimizer]

    def clipped(run):
        return getattr(run.config, kind) is not None

    runs = [r for r in s.plan() if (r.config.learning_rate, clipped(r)) in ((gentle, False), (aggressive, True))]
    return [(s, runs, jit)]


def keras_moved(study_, runs, toward: float, ulps: int = 1) -> list[Outcome | BaseException]:
    """The keras engine with every nonzero trainable initial weight moved `ulps` ulps toward
    `toward` (BatchNormalization's statistics and the seed generators' state are left as they are)."""
    original = keras_engine.problem

    def nudged(s, config, seed):
        p = original(s, config, seed)
        for v in p.model.trainable_variables:
            v.assign(moved(v.numpy(), toward, ulps))
        return p

    with pytest.MonkeyPatch.context() as m:
        m.setattr(keras_engine, "problem", nudged)
        return KerasEngine().train(study_, runs)


def population_moved(study_, runs, toward: float, jit: bool = True) -> list[Outcome | BaseException]:
    """The population engine with every nonzero trainable initial weight moved one ulp toward `toward`."""
    real = population_train.initial_model  # where train_population reads the initial weights

    def nudged(s, config, seed):
        graph, values = real(s, config, seed)
        n = len(graph.variable_shapes)
        return graph, tuple(moved(v, toward) for v in values[:n]) + tuple(values[n:])

    with pytest.MonkeyPatch.context() as m:
        m.setattr(population_train, "initial_model", nudged)
        return PopulationEngine(jit=jit).train(study_, runs)


def keras_perturbations(model: str, quick: bool) -> dict:
    """name -> how to train the keras engine so perturbed."""
    named = {"plain -1ulp": lambda s, runs: keras_moved(s, runs, -np.inf)}
    if not quick:
        named["plain +1ulp"] = lambda s, runs: keras_moved(s, runs, np.inf)
        if model not in RANDOM:
            named["xla"] = lambda s, runs: keras_perturbed(s, runs, True, None)
    return named


POPULATION_PERTURBATIONS = {"population +1ulp": np.inf, "population -1ulp": -np.inf}


def own_spread(base: Outcome, others) -> np.ndarray:
    """An engine's own spread at each of its epochs: the largest relative deviation of any of its
    perturbed runs' loss from its unperturbed run's. An epoch non-finite in both counts as no
    deviation, non-finite in one only (or missing: the perturbed run stopped earlier) as inf,
    and so does a perturbed run that turns non-finite at another step (at the last epoch)."""
    own = np.zeros(len(base.epoch_loss))
    for o in others:
        for e, b in enumerate(base.epoch_loss):
            a = o.epoch_loss[e] if e < len(o.epoch_loss) else math.nan
            if e >= len(o.epoch_loss) or math.isfinite(a) != math.isfinite(b):
                d = math.inf
            elif not math.isfinite(b):
                d = 0.0
            else:
                d = abs(a - b) / max(abs(b), 1e-30)
            own[e] = max(own[e], d)
        if o.first_nonfinite_step != base.first_nonfinite_step and len(own):
            own[-1] = math.inf
    return own


def status(study_, run, o: Outcome) -> str:
    return judge(o.initial_loss, o.epoch_loss, o.first_nonfinite_step, study_.verdict,
                 baseline_loss(study_, run.config))


class Tally:
    """What the matrix of one model measured, and what it found wrong."""

    def __init__(self):
        self.problems: list[str] = []
        self.disagreements: list[str] = []
        self.decided: list[str] = []
        self.excused_counts: list[str] = []
        self.runs = self.chaotic = self.counted = 0
        self.statuses: Counter = Counter()
        self.worst = (0.0, 0.0)  # the largest relative epoch-loss difference compared, the spread there
        self.worst_calm = 0.0  # the same over the runs that are not chaotic
        self.worst_l0 = self.worst_norm = 0.0

    def compare(self, s, run, k: Outcome, p: Outcome, others: dict, pop_others: dict) -> None:
        self.runs += 1
        c = run.config
        label = (f"lr={c.learning_rate} {c.optimizer} clipnorm={c.clipnorm} global={c.global_clipnorm} "
                 f"clipvalue={c.clipvalue} seed={run.seed}")
        if not (isinstance(p, Outcome) and p.engine == "population"):
            self.problems.append(f"{label}: the population engine did not train it: {p!r}")
            return
        assert isinstance(k, Outcome), f"{label}: {k!r}"
        sp, sk = status(s, run, p), status(s, run, k)
        self.statuses[sk] += 1
        keras_verdicts = {status(s, run, o) for o in others.values()}
        pop_verdicts = {status(s, run, o) for o in pop_others.values()}
        seen = ", ".join(f"{name} {status(s, run, o)} (step {o.first_nonfinite_step})"
                         for name, o in [*others.items(), *pop_others.items()])
        decided = keras_verdicts != {sk} or pop_verdicts != {sp}
        excused = sp == sk or sp in keras_verdicts or sk in pop_verdicts
        if not excused:
            for ulps in CLOSER_LOOK_ULPS:
                [kp] = keras_moved(s, [run], math.copysign(np.inf, ulps), abs(ulps))
                seen += f", plain {ulps:+d}ulp {status(s, run, kp)} (step {kp.first_nonfinite_step})"
                if status(s, run, kp) == sp:
                    excused = decided = True
                    break
        if decided:
            self.decided.append(f"{label}: keras {sk} (step {k.first_nonfinite_step}); {seen}; "
                                f"population {sp} (step {p.first_nonfinite_step})")
        if sp != sk:
            self.counted += not excused
            self.disagreements.append(f"{label}: population {sp}, keras {sk}; {seen}: "
                                      + ("excused, the verdicts under rounding meet" if excused else "NOT excused"))

        # l0 and the first step's gradient norm: one forward and backward pass, no chaos.
        if math.isfinite(k.initial_loss):
            d = abs(p.initial_loss - k.initial_loss) / abs(k.initial_loss)
            self.worst_l0 = max(self.worst_l0, d)
            if d > L0_TOLERANCE:
                self.problems.append(f"{label}: l0 {p.initial_loss!r} vs keras {k.initial_loss!r} ({d:.1e})")
        if len(p.grad_norms) and len(k.grad_norms) and math.isfinite(k.grad_norms[0]):
            d = abs(p.grad_norms[0] - k.grad_norms[0]) / k.grad_norms[0]
            self.worst_norm = max(self.worst_norm, d)
            if d > FIRST_NORM_TOLERANCE:
                self.problems.append(f"{label}: first gradient norm {p.grad_norms[0]!r} vs keras "
                                     f"{k.grad_norms[0]!r} ({d:.1e})")

        # Epoch losses against the engines' own spread (test_population's rule).
        own = own_spread(k, others.values())
        pop_own = own_spread(p, pop_others.values())
        both = min(len(own), len(pop_own))
        own[:both] = np.maximum(own[:both], pop_own[:both])
        chaotic = decided or not bool(np.all(own <= 1e-4)) or not bool(np.all(pop_own <= 1e-4))
        self.chaotic += chaotic
        spread = np.maximum.accumulate(own)
        parted = np.flatnonzero(~(own <= 1e-4))
        last = (int(parted[0]) if len(parted) else len(own) - 1) if decided else math.inf
        for e, dev in enumerate(relative(p.epoch_loss, k.epoch_loss)):
            if e > last or not (math.isfinite(k.epoch_loss[e]) and math.isfinite(p.epoch_loss[e])):
                break
            tol = max(1e-4, 10 * spread[e])
            self.worst = max(self.worst, (dev, spread[e]))
            if not chaotic:
                self.worst_calm = max(self.worst_calm, dev)
            if dev > tol:
                self.problems.append(f"{label}: epoch {e + 1} loss {p.epoch_loss[e]!r} vs keras {k.epoch_loss[e]!r} "
                                     f"(relative {dev:.2e} > tolerance {tol:.2e}; own spread {spread[e]:.2e})")
                break

        if not chaotic:
            if p.first_nonfinite_step != k.first_nonfinite_step:
                self.problems.append(f"{label}: first non-finite step {p.first_nonfinite_step} vs keras "
                                     f"{k.first_nonfinite_step} on a run that is not chaotic")
            if p.clipped_steps != k.clipped_steps:
                if (p.clipped_steps in {o.clipped_steps for o in others.values()}
                        or k.clipped_steps in {o.clipped_steps for o in pop_others.values()}):
                    self.excused_counts.append(f"{label}: clipped steps {p.clipped_steps} vs keras {k.clipped_steps}")
                else:
                    self.problems.append(f"{label}: clipped steps {p.clipped_steps} vs keras {k.clipped_steps} "
                                         f"(perturbed keras {[o.clipped_steps for o in others.values()]}, "
                                         f"population {[o.clipped_steps for o in pop_others.values()]})")
            if len(p.grad_norms) != len(k.grad_norms):
                self.problems.append(f"{label}: {len(p.grad_norms)} steps vs keras {len(k.grad_norms)}")
        elif p.first_nonfinite_step is not None and k.first_nonfinite_step is not None:
            def near(step, steps):
                return any(other is not None and abs(step - other) <= 1 for other in steps)

            if not (near(p.first_nonfinite_step, [k.first_nonfinite_step, *(o.first_nonfinite_step for o in others.values())])
                    or near(k.first_nonfinite_step, [o.first_nonfinite_step for o in pop_others.values()])):
                self.problems.append(f"{label}: first non-finite step {p.first_nonfinite_step} vs keras "
                                     f"{k.first_nonfinite_step} ({seen})")

    def report(self, model: str, names, seconds: float) -> str:
        lines = [f"\n{model}: {self.runs} runs in {seconds:.0f} s, keras's verdicts {dict(sorted(self.statuses.items()))}; "
                 f"own spread from {', '.join(names)}; largest epoch-loss difference {self.worst[0]:.2e} (own spread "
                 f"there {self.worst[1]:.2e}), {self.worst_calm:.2e} on the {self.runs - self.chaotic} runs that are not "
                 f"chaotic; l0 within {self.worst_l0:.1e}, first gradient norm within {self.worst_norm:.1e}; "
                 f"{len(self.decided)} rounding-decided; verdicts agree on {self.runs - len(self.disagreements)} of "
                 f"{self.runs}, {self.counted} disagreements not excused; {len(self.excused_counts)} clipped-step counts "
                 f"met under rounding"]
        lines += [f"  rounding-decided: {d}" for d in self.decided]
        lines += [f"  verdict disagreement: {d}" for d in self.disagreements]
        lines += [f"  clipped steps: {d}" for d in self.excused_counts]
        return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_population_matches_keras_on_any_model(model, request):
    quick = request.config.getoption("--quick")
    started = time.perf_counter()
    tally = Tally()
    names = []
    for s, runs, jit in plans(model, quick):
        ref = KerasEngine().train(s, runs)
        pop = PopulationEngine(jit=jit).train(s, runs)
        perturbations = keras_perturbations(model, quick)
        names = [*perturbations, *POPULATION_PERTURBATIONS]
        others = {name: train(s, runs) for name, train in perturbations.items()}
        pop_others = {name: population_moved(s, runs, toward, jit) for name, toward in POPULATION_PERTURBATIONS.items()}
        for i, run in enumerate(runs):
            mine = {name: outcomes[i] for name, outcomes in others.items()}
            pop_mine = {name: outcomes[i] for name, outcomes in pop_others.items()}
            assert all(isinstance(o, Outcome) for o in [*mine.values(), *pop_mine.values()]), run
            tally.compare(s, run, ref[i], pop[i], mine, pop_mine)
    print(tally.report(model, names, time.perf_counter() - started))
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.counted <= 0.01 * (tally.runs - len(tally.decided)), "\n".join(tally.disagreements)


# What the engine cannot express, and the words `sweep run` names it with.
CANNOT = {
    "variable_length": "of unknown size",
    "sum_loss": "reduces with 'sum'",
}


@pytest.mark.parametrize("builder", sorted(CANNOT))
def test_a_model_the_engine_cannot_express_trains_on_keras_and_says_why(builder):
    s = study(builder, "adam", [], learning_rates=[0.01], epochs=1)
    line = engine_line(s, None)
    assert line.startswith("engine: keras, run by run") and CANNOT[builder] in line, line
    [p] = PopulationEngine().train(s, s.plan())
    [k] = KerasEngine().train(s, s.plan())
    assert isinstance(p, Outcome) and p.engine == "keras"
    assert p.epoch_loss == pytest.approx(k.epoch_loss, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_an_embeddings_gradient_is_taken_slice_by_slice_as_keras_takes_it(optimizer, monkeypatch):
    """An Embedding's table gets its gradient as tf.IndexedSlices, one slice per token looked up
    (each of the 12 tokens comes about 13 times in a batch of 16 x 10 here). Keras's TensorFlow
    arithmetic squares the slices before adding them up: the norms clipnorm and global_clipnorm
    compare, clipnorm's and clipvalue's clipping, Adam's and RMSprop's second moment (unless
    global_clipnorm made the gradient dense). The population keeps the slices (`model.Lookup`,
    `step.Slices`) and agrees with Keras to rounding in every clipping kind, clipped steps
    included; read as a dense gradient (the table's, the sum of its slices), Adam and RMSprop part
    from Keras within the first epoch. Without XLA: this is about arithmetic, not compilation."""
    s = study("embed_conv", optimizer, list(CLIPPING), learning_rates=[0.01], epochs=1, data_seed=1)
    runs = [r for r in s.plan() if sum(getattr(r.config, kind) is not None for kind in CLIPPING) <= 1]
    assert len(runs) == 4  # no clipping, and each kind alone
    pop, ref = PopulationEngine(jit=False).train(s, runs), KerasEngine().train(s, runs)
    for run, p, k in zip(runs, pop, ref):
        assert p.engine == "population", run
        assert relative(p.epoch_loss, k.epoch_loss)[0] < 1e-5, (run, p.epoch_loss, k.epoch_loss)
        assert p.clipped_steps == k.clipped_steps, run
    monkeypatch.setattr(population_model, "sparse_gradients", lambda *args: [])
    population_model.built_model.cache_clear()
    try:
        [dense] = PopulationEngine(jit=False).train(s, runs[:1])
        assert relative(dense.epoch_loss, ref[0].epoch_loss)[0] > 1e-2
    finally:
        population_model.built_model.cache_clear()


def test_programs_of_an_embedding_model_trace_side_by_side_with_curvature():
    """Two groups (sgd, adam) of one model trace their programs on the engine's two threads at
    once, each tapping the same Embedding layer (`model.tapped`): they take turns, and each run
    is Keras's, its sharpness too (the probe differentiates the table's dense gradient)."""
    s = parse('[study]\nname="c"\nexample="model_zoo:embed_conv"\nepochs=2\nseeds=[0]\n[grid]\n'
              'learning_rate=[0.01]\noptimizer=["sgd", "adam"]\nbatch_size=[16]\n[telemetry]\n'
              'sharpness = {every_epochs = 1, iterations = 10, samples = 50}\n', "c.toml")
    pop, ref = PopulationEngine().train(s, s.plan()), KerasEngine().train(s, s.plan())
    for p, k in zip(pop, ref):
        assert isinstance(p, Outcome) and p.engine == "population", p
        np.testing.assert_allclose(p.epoch_loss, k.epoch_loss, rtol=1e-5)
        assert p.sharpness.keys() == k.sharpness.keys()
        np.testing.assert_allclose(list(p.sharpness.values()), list(k.sharpness.values()), rtol=1e-4)


def test_a_lone_run_of_a_convolutional_model_trains_on_the_population_engine():
    """A population of one run (and l0's evaluation, which takes each seed once): pfor squeezed
    the run axis away with Keras's bias and failed, until `Graph.evaluate` mapped at least two."""
    s = study("cnn", "adam", [], learning_rates=[0.01], epochs=1)
    [p], [k] = PopulationEngine().train(s, s.plan()), KerasEngine().train(s, s.plan())
    assert isinstance(p, Outcome) and p.engine == "population"
    np.testing.assert_allclose(p.epoch_loss, k.epoch_loss, rtol=1e-5)


def test_an_unrolled_recurrent_layer_computes_keras_forward_pass_bit_for_bit():
    """The population unrolls recurrent layers (`model.UNROLL_MAX_STEPS`) so that XLA compiles
    them; the keras engine runs Keras's loop. Each time step's matmuls sum in the same order, so
    the outputs are the same bit for bit; the gradient adds the steps' contributions to the
    weights' gradients in another order (measured: half the entries differ, by at most 1.2e-7
    where the largest is 1.6-1.8, one unit in the last place)."""
    import keras
    import tensorflow as tf

    import model_zoo

    for name in ("simple_rnn", "lstm", "gru"):
        built = []
        for unroll in (False, True):
            keras.utils.set_random_seed(0)
            model, x, y = getattr(model_zoo, name)("relu", 0)
            model.layers[0].unroll = unroll
            model.layers[0].use_cudnn = False
            built.append(model)

        def forward_and_gradient(model):
            @tf.function
            def f(x, y):
                with tf.GradientTape() as tape:
                    pred = model(x, training=True)
                    loss = tf.reduce_mean(tf.square(pred - y))
                return pred, tape.gradient(loss, model.trainable_variables)
            return f(tf.constant(x), tf.constant(y))

        (looped, looped_grads), (unrolled, unrolled_grads) = map(forward_and_gradient, built)
        largest = max(float(tf.reduce_max(tf.abs(g))) for g in looped_grads)
        apart = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(looped_grads, unrolled_grads))
        print(f"{name}: outputs equal bit for bit: {bool(tf.reduce_all(looped == unrolled))}; gradients apart by "
              f"at most {apart:.2e}, the largest entry {largest:.2f}")
        np.testing.assert_array_equal(looped.numpy(), unrolled.numpy())
        assert apart <= 1e-6 * largest


def test_xla_draws_other_dropout_masks_so_a_model_with_dropout_trains_without_xla():
    """XLA's random-number kernels draw other numbers than TensorFlow's for the same seed
    (measured: 1844 of 4800 entries of a rate-0.25 mask differ, as for independent masks, which
    differ in 2 x 0.25 x 0.75 = 37.5 % of entries). The keras engine draws TensorFlow's, so the
    population engine runs a model that draws random numbers without XLA, and its steps depend on
    the whole batch (the mask's shape is the batch's): the partial last batch is a step of its own."""
    import keras
    import tensorflow as tf

    from sweep.engines.population import initial_model

    keras.utils.set_random_seed(0)
    layer = keras.layers.Dropout(0.25, seed=1)
    ones = tf.ones([150, 32])
    state = [v.value for v in layer.non_trainable_variables]
    masks = [tf.function(lambda s: layer.stateless_call([], s, ones, training=True)[0], jit_compile=jit)(state) == 0
             for jit in (False, True)]
    differ = int(tf.reduce_sum(tf.cast(masks[0] != masks[1], tf.int32)))
    print(f"Dropout(0.25) on 150 x 32: {differ} of 4800 mask entries differ between TensorFlow's kernels and XLA's")
    assert differ > 0.2 * 4800
    s = study("mlp_bn_dropout", "adam", [])
    graph, _ = initial_model(s, s.plan()[0].config, 0)
    assert not graph.jit and graph.exact_batches
