"""End to end through the `sweep` command: run the quickstart, list it, reproduce a run in plain Keras."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sweep
from sweep.spec import load
from sweep.verdict import TRAINING_STATUSES
from test_reports import DESIGN_TRIAL_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def sweep_cli(*args, env_extra=None, cwd=ROOT):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sweep.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = sweep_cli("run", "studies/quickstart.toml", "--results", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results / "quickstart", proc


def test_quickstart_writes_one_row_per_planned_run(quickstart):
    study_dir, _ = quickstart
    plan = load(ROOT / "studies/quickstart.toml").plan()
    t = sweep.load_trials(study_dir)
    assert sorted(zip(t.config_id, t.seed)) == sorted(r.key for r in plan)
    assert set(t.status) <= set(TRAINING_STATUSES)
    assert "stable" in set(t.status) and set(t.status) - {"stable"}  # both kinds of outcome
    for col in (c.strip() for c in DESIGN_TRIAL_COLUMNS.split(",")):
        assert col in t.columns
    must_be_set = ["initial_loss", "final_loss", "grad_norm_p50", "grad_norm_max", "wall_seconds",
                   "tf_version", "keras_version", "sweep_version", "worker", "node", "started_at"]
    assert t[must_be_set].notna().all().all()
    c = sweep.load_curves(study_dir)
    assert len(c) == sum(1 + (int(s) if s == s else 0) for s in [5] * len(t))  # epoch 0..5 each


def test_rerun_adds_nothing(quickstart):
    study_dir, _ = quickstart
    before = sweep.load_trials(study_dir)
    proc = sweep_cli("run", "studies/quickstart.toml", "--results", str(study_dir.parent))
    assert proc.returncode == 0, proc.stderr
    assert "16 already recorded" in proc.stdout
    after = sweep.load_trials(study_dir)
    assert len(after) == len(before) == 16


def test_changed_plan_under_the_same_name_is_refused(quickstart, tmp_path):
    study_dir, _ = quickstart
    text = (ROOT / "studies/quickstart.toml").read_text().replace("epochs = 5", "epochs = 6")
    (tmp_path / "q.toml").write_text(text)
    proc = sweep_cli("run", str(tmp_path / "q.toml"), "--results", str(study_dir.parent))
    assert proc.returncode == 2 and "different plan" in proc.stderr


def test_show_lists_runs(quickstart):
    study_dir, _ = quickstart
    proc = sweep_cli("show", str(study_dir), "--status", "stable", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert "stable" in proc.stdout and "diverged" not in proc.stdout


def final_loss_of(script: str, tmp_path: Path, env_extra=None) -> float:
    path = tmp_path / "repro.py"
    path.write_text(script)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return float(re.search(r"final loss: (\S+)", proc.stdout).group(1))


def test_repro_script_reproduces_final_loss(quickstart, tmp_path):
    study_dir, _ = quickstart
    t = sweep.load_trials(study_dir)
    for status in ("stable", "diverged"):
        row = t[t.status == status].iloc[0]
        proc = sweep_cli("repro", str(study_dir), str(int(row.trial)))
        assert proc.returncode == 0, proc.stderr
        assert "import sweep" not in proc.stdout  # standalone: numpy, TensorFlow, Keras only
        assert final_loss_of(proc.stdout, tmp_path) == pytest.approx(row.final_loss, rel=1e-5)


def test_repro_of_a_population_run_agrees_with_plain_keras(tmp_path):
    # a stable run trained by the population engine, replayed by plain model.fit
    study = tmp_path / "pop.toml"
    study.write_text('[study]\nname="pop"\nexample="exploding_gradients"\nepochs=5\nseeds=[0]\n'
                     'engine="population"\n[grid]\nlearning_rate=[0.001, 0.01]\nclipnorm=[1.0]\n')
    proc = sweep_cli("run", str(study), "--results", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    t = sweep.load_trials(tmp_path / "r" / "pop")
    row = t[t.status == "stable"].iloc[0]
    assert row.engine == "population"
    script = sweep_cli("repro", str(tmp_path / "r" / "pop"), str(int(row.trial))).stdout
    assert "trained by the population engine" in script
    assert final_loss_of(script, tmp_path) == pytest.approx(row.final_loss, rel=1e-4)


def test_repro_with_plateau_schedule_and_user_builder(tmp_path):
    # model.fit with Keras's own ReduceLROnPlateau must give what the engine recorded
    study = tmp_path / "p.toml"
    study.write_text('[study]\nname="p"\nexample="builders:dead_model"\nepochs=12\nseeds=[0]\n'
                     'engine="keras"\n[grid]\nlearning_rate=[0.1]\nschedule=["plateau"]\n')
    env = {"PYTHONPATH": str(ROOT / "tests")}
    proc = sweep_cli("run", str(study), "--results", str(tmp_path / "r"), env_extra=env)
    assert proc.returncode == 0, proc.stderr
    row = sweep.load_trials(tmp_path / "r" / "p").iloc[0]
    curves = sweep.load_curves(tmp_path / "r" / "p")
    assert curves.learning_rate.min() < 0.1  # the schedule acted
    script = sweep_cli("repro", str(tmp_path / "r" / "p"), "0", env_extra=env).stdout
    assert final_loss_of(script, tmp_path, env) == pytest.approx(row.final_loss, rel=1e-5)


def test_repro_unknown_trial_is_bad_input(quickstart):
    study_dir, _ = quickstart
    proc = sweep_cli("repro", str(study_dir), "999")
    assert proc.returncode == 2 and "no run with trial 999" in proc.stderr


def test_a_users_module_beside_the_study_file_imports_from_where_they_stand(tmp_path):
    """README's worked example, from a directory holding only the module and the study file,
    through the installed `sweep` command (which, unlike `python -m`, puts no directory on the path)."""
    import shutil

    here = tmp_path / "mine"
    shutil.copytree(ROOT / "studies" / "user_model", here, ignore=shutil.ignore_patterns("__pycache__"))
    command = str(Path(sys.executable).parent / "sweep")
    validate = subprocess.run([command, "validate", "mine/user_mlp.toml"], cwd=tmp_path,  # the file's directory
                              capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    run = subprocess.run([command, "run", "user_mlp.toml", "--results", str(tmp_path / "results")], cwd=here,
                         capture_output=True, text=True, timeout=900)  # the current directory
    assert run.returncode == 0, run.stdout + run.stderr
    assert "engine: population" in run.stdout
    trials = sweep.load_trials(tmp_path / "results" / "user_mlp")
    assert len(trials) == 20 and set(trials["engine"]) == {"population"}
    assert "error" not in set(trials["status"])


@pytest.mark.parametrize("name", ["cnn", "rnn"])
def test_a_users_cnn_and_rnn_train_on_the_population_engine(tmp_path, name):
    """The worked example's other two models, from a directory holding only the module and the
    study file (its grid cut to 8 runs of 2 epochs): every run on the population engine."""
    import shutil

    here = tmp_path / "mine"
    here.mkdir()
    shutil.copy(ROOT / "studies" / "user_model" / "usermodels.py", here)
    text = (ROOT / "studies" / "user_model" / f"user_{name}.toml").read_text()
    text = text.replace("epochs = 5", "epochs = 2").replace("[0.001, 0.01, 0.1, 1.0, 10.0]", "[0.01, 10.0]")
    (here / f"user_{name}.toml").write_text(text.replace('["relu", "tanh"]', '["tanh"]'))
    command = str(Path(sys.executable).parent / "sweep")
    run = subprocess.run([command, "run", f"user_{name}.toml", "--results", str(tmp_path / "results")], cwd=here,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "engine: population" in run.stdout
    trials = sweep.load_trials(tmp_path / "results" / f"user_{name}")
    assert len(trials) == 8 and set(trials["engine"]) == {"population"}
    assert "error" not in set(trials["status"])
    assert set(trials.loc[trials["learning_rate"] == 10.0, "status"]) <= {"diverged", "nan", "unstable"}
