"""Mixed precision as an axis: the Keras dtype policy a run's model is built under, mixed_float16's
dynamic loss scaling (on by default, as `model.compile` does it; `loss_scaling = false` turns it
off) and its telemetry (skipped updates, the final scale), on the keras engine; the population
engine, float32 only, hands such runs to it."""

import textwrap

import pytest

import sweep
from sweep.driver import session
from sweep.driver.pool import LocalPool
from sweep.engines import make_optimizer, problem
from sweep.engines.keras_engine import KerasEngine
from sweep.engines.population import PopulationEngine, Unsupported
from sweep.spec import SpecError, load, parse

STUDY = '[study]\nname = "p"\nexample = "exploding_gradients"\nepochs = 3\nseeds = [0]\nengine = "keras"\n'


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse(text, "bad.toml")
    return info.value.problems


@pytest.mark.parametrize("text, field, words", [
    (STUDY + "[grid]\nprecision = ['float16']\n", "grid.precision", "mixed_float16, mixed_bfloat16"),
    (STUDY + "[grid]\nloss_scaling = ['off']\n", "grid.loss_scaling", "true or false"),
    (STUDY + "[grid]\nprecision = ['mixed_bfloat16']\nloss_scaling = [false]\n", "grid.loss_scaling",
     'add "mixed_float16"'),
    (STUDY + "[grid]\nprecision = ['mixed_float16']\n[telemetry]\nsharpness = {}\n", "telemetry.sharpness",
     "float32 only"),
])
def test_a_bad_precision_is_named(text, field, words):
    found = problems(text)
    assert [f for f, _ in found] == [field], found
    assert words in found[0][1]


def test_loss_scaling_is_mixed_float16s_alone():
    s = parse(STUDY + "[grid]\nprecision = ['float32', 'mixed_float16', 'mixed_bfloat16']\n"
              "loss_scaling = [true, false]\n", "p.toml")
    points = [(c.precision, c.loss_scaling) for c in s.configs()]
    assert points == [("float32", True), ("mixed_float16", True), ("mixed_float16", False),
                      ("mixed_bfloat16", True)]
    wrapped = [type(make_optimizer(c)).__name__ for c in s.configs()]
    assert wrapped == ["Adam", "LossScaleOptimizer", "Adam", "Adam"]


def test_the_model_is_built_under_the_runs_policy_and_the_default_comes_back():
    import keras

    s = parse(STUDY + "[grid]\nprecision = ['mixed_bfloat16']\n", "p.toml")
    model = problem(s, s.configs()[0], 0).model
    assert {layer.dtype_policy.name for layer in model.layers} == {"mixed_bfloat16"}
    assert {v.dtype for v in model.trainable_variables} == {"float32"}  # Keras keeps variables float32
    assert keras.config.dtype_policy().name == "float32"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """float32 and mixed_float16 with and without loss scaling, at a learning rate that trains
    and at one whose gradients overflow float16."""
    text = STUDY + textwrap.dedent("""
        [grid]
        learning_rate = [0.01, 10.0]
        precision = ["float32", "mixed_float16"]
        loss_scaling = [true, false]
        """)
    results = tmp_path_factory.mktemp("results")
    (results / "p.toml").write_text(text)  # kept with the results (`sweep repro` reads it)
    s = load(results / "p.toml")
    session.run(s, results, pool=LocalPool(s, "keras"))
    return results / "p"


def test_loss_scaling_telemetry_is_recorded_per_run(trained):
    t = sweep.load_trials(trained).set_index(["precision", "loss_scaling", "learning_rate"], drop=False).sort_index()
    scaled = t.loc[("mixed_float16", True)]
    assert scaled.skipped_steps.notna().all() and scaled.final_loss_scale.notna().all()
    # at 0.01 nothing overflows: the scale stays at Keras's initial 2**15 (it grows after 2000 steps)
    assert scaled.loc[0.01, "skipped_steps"] == 0 and scaled.loc[0.01, "final_loss_scale"] == 2.0 ** 15
    # at 10 the scaled gradients overflow: updates skipped, the scale halved each time
    big = scaled.loc[10.0]
    assert big.skipped_steps > 0 and big.final_loss_scale < 2.0 ** 15
    assert big.final_loss_scale == pytest.approx(2.0 ** 15 * 0.5 ** big.skipped_steps)
    for unscaled in (t.loc[("float32", True)], t.loc[("mixed_float16", False)]):
        assert unscaled.skipped_steps.isna().all() and unscaled.final_loss_scale.isna().all()
    assert t.precision.dtype == "category" and set(t.engine) == {"keras"}
    boundary = sweep.load_boundary(trained)
    assert len(boundary) == 3 and set(boundary.precision.astype(str)) == {"float32", "mixed_float16"}


def test_a_mixed_precision_run_reproduces_under_its_policy(trained):
    from sweep.results.repro import script

    t = sweep.load_trials(trained)
    row = t[(t.precision == "mixed_float16") & ~t.loss_scaling].iloc[0]
    text = script(trained, int(row.trial))
    assert "keras.config.set_dtype_policy('mixed_float16')" in text and "auto_scale_loss=False" in text
    plain = script(trained, int(t[t.precision == "float32"].iloc[0].trial))
    assert "set_dtype_policy" not in plain and "auto_scale_loss" not in plain


def test_population_hands_mixed_precision_to_keras():
    s = parse(STUDY.replace('engine = "keras"', 'engine = "population"').replace("epochs = 3", "epochs = 1")
              + "[grid]\nprecision = ['float32', 'mixed_bfloat16']\n", "p.toml")
    with pytest.raises(Unsupported, match="mixed precision"):
        PopulationEngine.check(s, s.plan()[1])
    outcomes = PopulationEngine().train(s, s.plan())
    assert [o.engine for o in outcomes] == ["population", "keras"]
    assert "runs in mixed precision train on the keras engine" in session.engine_line(s, None)
    assert KerasEngine().train(s, s.plan()[1:])[0].skipped_steps is None  # bfloat16 needs no scaling
