"""Study files: every bad input named (file, field, what is allowed), exit 2, nothing written."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweep.catalog import EXAMPLES
from sweep.spec import AXES, SpecError, load, parse

GOOD = """
[study]
name = "ok"
example = "exploding_gradients"
epochs = 2
seeds = [0, 1]
[grid]
learning_rate = [0.001, 0.1]
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse(textwrap.dedent(text), "bad.toml")
    return info.value.problems


def fields_of(text: str) -> list[str]:
    return [f for f, _ in problems(text)]


def study(**study_fields) -> str:
    base = {"name": '"x"', "example": '"exploding_gradients"'}
    base.update(study_fields)
    return "[study]\n" + "\n".join(f"{k} = {v}" for k, v in base.items() if v is not None) + "\n"


def test_good_file_parses_and_plans():
    s = parse(GOOD, "ok.toml")
    assert len(s.plan()) == 4
    assert {r.trial for r in s.plan()} == {0, 1, 2, 3}
    assert len({r.key for r in s.plan()}) == 4


BAD = {
    "unknown section": ("[study]\nname='x'\nexample='exploding_gradients'\n[grdi]\nx=1\n", "grdi", "unknown section"),
    "unknown study key": (study(epoch="3"), "study.epoch", "unknown key"),
    "unknown axis": (study() + "[grid]\nlearningrate=[0.1]\n", "grid.learningrate", "unknown axis"),
    "unknown verdict key": (study() + "[verdict]\nstall=0.9\n", "verdict.stall", "unknown key"),
    "epochs wrong type": (study(epochs='"ten"'), "study.epochs", "integer"),
    "epochs zero": (study(epochs="0"), "study.epochs", "integer"),
    "seeds not a list": (study(seeds="3"), "study.seeds", "list"),
    "seeds empty": (study(seeds="[]"), "study.seeds", "list"),
    "seeds duplicate": (study(seeds="[1, 1]"), "study.seeds", "duplicate"),
    "empty axis": (study() + "[grid]\nlearning_rate=[]\n", "grid.learning_rate", "empty"),
    "duplicate values": (study() + "[grid]\nclipnorm=[1.0, 1.0]\n", "grid.clipnorm", "duplicate"),
    "lr nan": (study() + "[grid]\nlearning_rate=[nan]\n", "grid.learning_rate", "finite"),
    "lr inf": (study() + "[grid]\nlearning_rate=[inf]\n", "grid.learning_rate", "finite"),
    "lr negative": (study() + "[grid]\nlearning_rate=[-0.1]\n", "grid.learning_rate", "> 0"),
    "lr zero": (study() + "[grid]\nlearning_rate=[0]\n", "grid.learning_rate", "> 0"),
    "lr string": (study() + "[grid]\nlearning_rate=['fast']\n", "grid.learning_rate", "not a number"),
    "clipnorm zero": (study() + "[grid]\nclipnorm=[0.0]\n", "grid.clipnorm", "> 0"),
    "clipvalue negative": (study() + "[grid]\nclipvalue=[-1]\n", "grid.clipvalue", "> 0"),
    "global clip inf": (study() + "[grid]\nglobal_clipnorm=[inf]\n", "grid.global_clipnorm", "finite"),
    "batch size zero": (study() + "[grid]\nbatch_size=[0]\n", "grid.batch_size", "integers >= 1"),
    "batch size float": (study() + "[grid]\nbatch_size=[1.5]\n", "grid.batch_size", "integers >= 1"),
    "batch size string": (study() + "[grid]\nbatch_size=['32']\n", "grid.batch_size", "integers >= 1"),
    "unknown example": (study(example='"exploding"'), "study.example", "exploding_gradients"),
    "unknown activation": (study() + "[grid]\nactivation=['relu6']\n", "grid.activation", "tanh"),
    "unknown scaler": (study() + "[grid]\nscaler=['robust']\n", "grid.scaler", "minmax"),
    "unknown optimizer": (study() + "[grid]\noptimizer=['adamw']\n", "grid.optimizer", "rmsprop"),
    "loss not offered": (study() + "[grid]\nloss=['handwritten']\n", "grid.loss", "binary_crossentropy"),
    "unknown sampler": (study(sampler='"random"'), "study.sampler", "grid | boundary | tpe"),
    "unknown engine": (study(engine='"jax"'), "study.engine", "population | keras"),
    "builder module missing": (study(example='"no_such_module_xyz:build"'), "study.example", "cannot import"),
    "builder attribute missing": (study(example='"json:no_such_function"'), "study.example", "no attribute"),
    "builder not callable": (study(example='"math:pi"'), "study.example", "not callable"),
    "builder malformed": (study(example='"json:"'), "study.example", "module:function"),
    "name with slash": (study(name='"../escape"'), "study.name", "plain file name"),
    "name with separator": (study(name='"a/b"'), "study.name", "plain file name"),
    "name empty": (study(name='""'), "study.name", "plain file name"),
    "name dotdot": (study(name='".."'), "study.name", "plain file name"),
    "name missing": (study(name=None), "study.name", "missing"),
    "stall ratio above 1": (study() + "[verdict]\nstall_ratio=1.5\n", "verdict.stall_ratio", "(0, 1]"),
    "diverge factor below 1": (study() + "[verdict]\ndiverge_factor=0.5\n", "verdict.diverge_factor", "> 1"),
    "spike factor nan": (study() + "[verdict]\nspike_factor=nan\n", "verdict.spike_factor", "> 1"),
    "timeout negative": (study(timeout="-5"), "study.timeout", "> 0"),
    "missing study": ("[grid]\nlearning_rate=[0.1]\n", "study", "missing"),
    "batch larger than the data": (study() + "[grid]\nbatch_size=[32, 5000]\n", "grid.batch_size", "from 1 to 1000"),
    "enormous grid": (study(seeds=str(list(range(60)))) + "[grid]\nlearning_rate=[" +
                      ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(200)) + "]\nclipnorm=[" +
                      ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(200)) + "]\n", "grid", "--max-runs"),
    "name not a string": (study(name="3"), "study.name", "plain file name"),
    "example not a string": (study(example="[1]"), "study.example", "catalog id"),
    "grid not a table": ("grid = 3\n" + study(), "grid", "must be a table"),
    "data_seed negative": (study(data_seed="-1"), "study.data_seed", "from 0 to 4294967295"),
    "telemetry unknown key": (study() + "[telemetry]\nsharpnes={}\n", "telemetry.sharpnes", "unknown key"),
    "telemetry not a table": ("telemetry = 3\n" + study(), "telemetry", "must be a table"),
    "sharpness not a table": (study() + "[telemetry]\nsharpness=5\n", "telemetry.sharpness", "every_epochs = N"),
    "sharpness every_epochs zero": (study() + "[telemetry]\nsharpness={every_epochs=0}\n", "telemetry.sharpness",
                                    "every_epochs: 0 is not allowed; allowed: an integer from 1 to 10000"),
    "sharpness iterations float": (study() + "[telemetry]\nsharpness={iterations=2.5}\n", "telemetry.sharpness",
                                   "iterations: 2.5 is not allowed; allowed: an integer from 1 to 1000"),
    "sharpness unknown key": (study() + "[telemetry]\nsharpness={iters=3}\n", "telemetry.sharpness",
                              "iters: unknown key; allowed: every_epochs, iterations, samples"),
    "sharpness samples zero": (study() + "[telemetry]\nsharpness={samples=0}\n", "telemetry.sharpness",
                               "samples: 0 is not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_field_and_allowed(case):
    text, field, allowed = BAD[case]
    found = problems(text)
    messages = [m for f, m in found if f == field]
    assert messages, f"{case}: expected a problem on {field}, got {found}"
    assert any(allowed in m for m in messages), f"{case}: {messages} should say {allowed!r}"


def test_guard_counts_before_expanding_and_can_be_raised():
    text = study(seeds="[0, 1]") + "[grid]\nlearning_rate=[0.1, 0.2, 0.3]\n"
    with pytest.raises(SpecError, match="up to 6 runs"):
        parse(text, "g.toml", max_runs=5)
    assert len(parse(text, "g.toml", max_runs=6).plan()) == 6


def test_syntax_error_gives_line():
    found = problems('[study]\nname = "x"\nepochs = = 3\n')
    assert "line 3" in found[0][1]


def test_all_problems_in_one_report():
    text = study(epochs="0", sampler='"nope"') + "[grid]\nlearning_rate=[-1]\nbatch_size=[0]\n"
    assert {"study.epochs", "study.sampler", "grid.learning_rate", "grid.batch_size"} <= set(fields_of(text))


def test_two_clipping_kinds_at_once_are_left_out_of_the_plan():
    s = parse(study() + "[grid]\nclipnorm=['none', 1.0]\nclipvalue=['none', 0.5]\n", "c.toml")
    kinds = [(c.clipnorm, c.clipvalue) for c in s.configs()]
    assert (1.0, 0.5) not in kinds and len(kinds) == 3


def test_only_conflicting_clipping_is_refused():
    assert "grid" in fields_of(study() + "[grid]\nclipnorm=[1.0]\nclipvalue=[0.5]\n")


def test_every_example_study_contains_failure_and_fix():
    for ex in EXAMPLES.values():
        s = load(Path("studies") / f"{ex.id}.toml")
        configs = s.configs()
        for name, overrides in (("failure", ex.failure), ("fix", ex.fix)):
            want = ex.config(overrides)
            assert any(all(getattr(c, a) == want[a] for a in AXES) for c in configs), (ex.id, name)


def test_all_committed_studies_validate():
    for path in Path("studies").glob("*.toml"):
        load(path)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sweep.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_telemetry_is_off_by_default_and_parsed_when_given():
    assert parse(GOOD, "ok.toml").sharpness is None
    s = parse(GOOD + "[telemetry]\nsharpness = {every_epochs = 2, iterations = 7}\n", "ok.toml")
    assert (s.sharpness.every_epochs, s.sharpness.iterations, s.sharpness.samples) == (2, 7, None)
    assert parse(GOOD + "[telemetry]\nsharpness = {}\n", "ok.toml").sharpness.every_epochs == 5


def test_telemetry_is_part_of_the_plan_only_when_on():
    """It fills the rows' curvature columns, so a resumed study must agree on it (as on the
    verdict); a study without it keeps the digest stored by studies written before it existed."""
    plain = parse(GOOD, "ok.toml")
    on = parse(GOOD + "[telemetry]\nsharpness = {every_epochs = 2}\n", "ok.toml")
    other = parse(GOOD + "[telemetry]\nsharpness = {every_epochs = 3}\n", "ok.toml")
    assert len({plain.plan_digest(), on.plan_digest(), other.plan_digest()}) == 3
    import json

    committed = Path("results/reproduce-categorical_clipnorm")
    stored = json.loads((committed / "study.json").read_text())["plan_digest"]
    assert load(committed / "study.toml").plan_digest() == stored


@pytest.mark.parametrize("case", ["lr negative", "name with slash", "unknown example", "builder not callable",
                                  "sharpness every_epochs zero"])
def test_cli_refuses_with_exit_2_and_writes_nothing(tmp_path, case):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD[case][0])
    results = tmp_path / "results"
    for command in (["validate", str(bad)], ["run", str(bad), "--results", str(results)]):
        proc = run_cli(*command, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert str(bad) in proc.stderr and BAD[case][1] in proc.stderr
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_cli_missing_file_is_bad_input(tmp_path):
    proc = run_cli("validate", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_cli_validate_prints_plan():
    proc = run_cli("validate", "studies/quickstart.toml", cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr
    assert "8 configurations x 2 seeds = 16 runs" in proc.stdout
