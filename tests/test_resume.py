"""Resume: a driver killed with SIGKILL, run again with the same command, gives one row per
planned run; Optuna's copy is brought level with the Parquet record."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import sweep
from sweep.driver import session as driver
from sweep.driver.optuna_journal import JOURNAL
from sweep.driver.optuna_study import OptunaRecord
from sweep.driver.pool import LocalPool
from sweep.spec import load, parse

from fault_cases import ray_processes_of
from scripted_engine import ScriptedEngine

ROOT = Path(__file__).resolve().parents[1]

# The sweep must outlast the driver's first commit (COMMIT_SECONDS after the first row) by a
# wide margin, or on a fast machine one commit holds every run and the kill cannot land
# midway: 8 epochs x 16 runs did, on CI. 40 epochs x 32 runs stream rows for 38 s on this
# 2-core machine (`sweep run` of the quick study, rows' ends from started_at + wall_seconds), so
# a machine 2x faster still has most of its runs left at the first commit.
STUDY = '''[study]
name = "resume"
example = "exploding_gradients"
epochs = 40
seeds = {seeds}
engine = "keras"
[grid]
learning_rate = [0.001, 0.01, 0.1, 1.0]
clipnorm = ["none", 1.0]
'''


def sweep_run(study_file, results, **popen):
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", str(study_file), "--results", str(results)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_driver_killed_midway_resumes_with_exactly_one_row_per_run(tmp_path, request):
    seeds = [0, 1, 2, 3] if request.config.getoption("--quick") else [0, 1, 2, 3, 4, 5]
    study_file = tmp_path / "resume.toml"
    study_file.write_text(STUDY.format(seeds=seeds))
    plan = load(study_file).plan()
    results = tmp_path / "results"
    trials_dir = results / "resume" / "trials"

    proc = sweep_run(study_file, results, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(trials_dir.glob("part-*.parquet")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no rows committed in 10 minutes"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        recorded = len(sweep.load_trials(results / "resume"))
        assert 0 < recorded < len(plan), f"the kill did not land midway: {recorded} of {len(plan)} runs recorded"
        # The private Ray goes with its driver.
        deadline = time.monotonic() + 60
        while ray_processes_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = ray_processes_of(proc.pid)
        assert not left, f"Ray processes left behind by the killed driver: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in ray_processes_of(proc.pid):
            os.kill(pid, signal.SIGKILL)

    again = sweep_run(study_file, results)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out
    assert f"{recorded} already recorded" in out
    t = sweep.load_trials(results / "resume")
    assert sorted(zip(t.config_id, t.seed)) == sorted(r.key for r in plan)    # none lost, none twice
    assert sorted(t.trial) == list(range(len(plan)))
    ostudy = OptunaRecord(results / "resume", load(study_file)).ostudy
    assert sorted(i for tr in ostudy.get_trials() for i in tr.user_attrs["trials"]) == list(range(len(plan)))


def test_optuna_copy_is_reconciled_with_parquet(tmp_path):
    """Rows the journal lost (a torn last append) are added back; a stale RUNNING trial is failed."""
    s = parse(STUDY.format(seeds=[0, 1]).replace('engine = "keras"', ""), "r.toml")
    driver.run(s, tmp_path, pool=LocalPool(s, ScriptedEngine()))
    journal = tmp_path / "resume" / JOURNAL
    text = journal.read_bytes()
    lines = text.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-6]) + lines[-6][:20])    # lose the last trials, tear a line
    record = OptunaRecord(tmp_path / "resume", s)
    record.ostudy.ask()                                            # a driver killed after an ask
    del record

    summary = driver.run(s, tmp_path, pool=LocalPool(s, ScriptedEngine()))
    assert summary.ran == 0
    assert summary.reconciled["added"] > 0 and summary.reconciled["failed"] == 1
    t = sweep.load_trials(tmp_path / "resume")
    ostudy = OptunaRecord(tmp_path / "resume", s).ostudy
    finished = [tr for tr in ostudy.get_trials() if tr.state.is_finished() and "trials" in tr.user_attrs]
    assert sorted(i for tr in finished for i in tr.user_attrs["trials"]) == sorted(t.trial)
    assert not [tr for tr in ostudy.get_trials() if not tr.state.is_finished()]


def test_a_second_driver_on_the_same_study_is_refused(tmp_path):
    s = parse(STUDY.format(seeds=[0]), "r.toml")
    out = driver.prepare_dir(s, tmp_path)
    with driver.driver_lock(out):
        with pytest.raises(driver.StudyBusy, match="another `sweep run` is running this study"):
            driver.run(s, tmp_path, pool=LocalPool(s, ScriptedEngine()))


BENCH = ROOT / "scripts" / "bench_driver.py"
# A kill mid-commit (curves part written, its trials part not), mid-way through the Optuna
# journal append (a torn line), and between two commits.
KILLS = ("write.curves", "journal.append", "committed")


def bench_driver():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_driver", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_large_null_engine_study_killed_three_times_resumes_with_nothing_lost_or_twice(tmp_path, request):
    """The driver benchmark's study (an engine that trains nothing; 1,000,000 runs, 20,000 with
    --quick) killed with SIGKILL at three fault points, each session going further, then the
    same command once more: every planned run is one Parquet row, and in one Optuna trial."""
    runs = 20_000 if request.config.getoption("--quick") else 1_000_000
    results = tmp_path / "results"
    command = [sys.executable, str(BENCH), "--runs", str(runs), "--results", str(results), "--session"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    nth = max(1, runs // 100_000)   # each session commits a few parts of a batch each, then dies
    recorded = [0]
    for point in KILLS:
        killed = subprocess.run(command, cwd=ROOT, env={**env, "SWEEP_FAULT": f"{point}:{nth}"},
                                capture_output=True, text=True, timeout=7200)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        recorded.append(len(sweep.load_trials(results / "bench-driver")))
    assert recorded == sorted(recorded) and 0 < recorded[-1] < runs, recorded   # each kill landed midway
    last = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
    assert last.returncode == 0, last.stdout + last.stderr

    plan = bench_driver().grid_study(runs).plan()
    t = sweep.load_trials(results / "bench-driver")
    assert len(t) == len(plan) and sorted(t.trial) == list(range(len(plan)))          # none lost, none twice
    assert set(zip(t.config_id, t.seed)) == {r.key for r in plan}
    copied = Counter()
    with open(results / "bench-driver" / JOURNAL) as fh:      # read as lines: 1,000,000 trials
        for line in fh:
            copied.update(json.loads(line).get("user_attrs", {}).get("trials", []))
    assert sorted(copied) == list(range(len(plan))) and set(copied.values()) == {1}
