"""The reliability suite's cases: each one really happens (a driver killed, an actor killed, a
node removed, a disk filled) and is then checked. The tests run them, and so does
`scripts/reliability_report.py`, which prints the figures; one place for each case.

Every case returns a `Result`: what was tried, whether every check held, how many planned
runs ended with no row (lost) or with more than one (duplicated), and what went wrong.

Crash cases kill the driver with SIGKILL at a named point (`sweep.results.faults`) and run the
same command again. Two drivers:

* `cli`: the real `sweep run STUDY --results DIR`, keras engine, private local Ray;
* `local`: the same driver code (`sweep.driver.session.run`: plan, commits, Optuna copy, maps) in a
  process of its own with a deterministic scripted engine trained in-process and a commit
  every 4 runs, so that a point's nth visit falls mid-sweep, and each case takes seconds.

Run directly, this module is the `local` driver: `python fault_cases.py drive STUDY RESULTS`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from sweep.results import faults  # noqa: E402
from sweep.driver.pool import LocalPool  # noqa: E402


class ScriptedPool(LocalPool):
    """LocalPool for the scripted engine, which needs no TensorFlow."""

    def __enter__(self) -> "ScriptedPool":
        return self

# 16 runs: stable and non-finite outcomes on both engines, so the maps have an edge to compare.
CRASH_STUDY = """[study]
name = "crash"
example = "exploding_gradients"
epochs = 1
seeds = [0, 1]
engine = "keras"
[grid]
learning_rate = [0.001, 0.1, 1.0, 10.0]
clipnorm = ["none", 1.0]
batch_size = [100]
"""
LOCAL_COMMIT_ROWS = 4        # the local driver commits every batch of 4: 4 commits
SESSION_TIMEOUT = 900        # seconds one driver session may take before the case fails
# The points whose quick form CI runs: start-up, mid-write, the Optuna append.
QUICK_POINTS = ("start.optuna", "write.tmp", "journal.append")
# Points a session reaches only once every run is recorded.
AFTER_THE_RUNS = ("maps", "done")
AFTER_THE_TRIALS_PART = ("write.trials", "journal.append", "committed")


@dataclass
class Result:
    kind: str                 # crash | worker | input | storage | corrupt
    name: str
    ok: bool = True
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, cond: bool, problem: str) -> None:
        if not cond:
            self.ok = False
            self.problems.append(problem)


def lost_and_duplicated(trials, plan) -> tuple[int, int]:
    """Planned runs without a row, and rows beyond one per planned run (or not planned)."""
    have = Counter(zip(trials["config_id"], trials["seed"].astype(int)))
    planned = {r.key for r in plan}
    lost = sum(1 for k in planned if have[k] == 0)
    duplicated = sum(n - 1 for k, n in have.items() if k in planned and n > 1)
    duplicated += sum(n for k, n in have.items() if k not in planned)
    return lost, duplicated


# --- processes --------------------------------------------------------------------------
def ray_processes_of(pid: int) -> list[int]:
    """Processes of the private Ray the driver `pid` started (its temp dir is in their command lines)."""
    mark = f"sweep-ray-{pid}-".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def reap_ray_of(pid: int, grace: float = 60) -> list[int]:
    """Wait for the Ray processes of a killed driver to go; kill those that stay. Returns them."""
    deadline = time.monotonic() + grace
    while ray_processes_of(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = ray_processes_of(pid)
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def driver_command(mode: str, study_file: Path, results: Path) -> list[str]:
    if mode == "cli":
        return [sys.executable, "-m", "sweep.cli", "run", str(study_file), "--results", str(results)]
    return [sys.executable, str(Path(__file__)), "drive", str(study_file), str(results)]


def run_session(cmd: list[str], fault: str | None = None, env_extra: dict | None = None) -> tuple[int, str]:
    """One driver session in its own process group; (exit code, output). A session that
    outlives SESSION_TIMEOUT is killed with its group (exit code None shows it)."""
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(env_extra or {})
    if fault:
        env[faults.ENV] = fault
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SESSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        reap_ray_of(proc.pid, grace=5)
        return None, out
    reap_ray_of(proc.pid, grace=60 if proc.returncode else 5)
    return proc.returncode, out


# --- the crash matrix -------------------------------------------------------------------
def journal_appends_at_start() -> int:
    """How many journal appends a driver makes before its first commit (study creation, its
    attributes): the `journal.append` visit of the first commit is the next one."""
    from sweep.driver.optuna_journal import JOURNAL
    from sweep.driver.optuna_study import OptunaRecord
    from sweep.spec import parse

    with tempfile.TemporaryDirectory() as d:
        OptunaRecord(Path(d), parse(CRASH_STUDY, "crash.toml")).reconcile({})
        return len((Path(d) / JOURNAL).read_bytes().splitlines())


def crash_fault(point: str, mode: str) -> str:
    """The SWEEP_FAULT value that kills the driver at `point`, mid-sweep where the point repeats.

    The local driver commits 4 times; its second commit is mid-sweep. The cli driver's
    commits depend on timing, so it is killed at its first."""
    commit = 2 if mode == "local" else 1
    nth = {"start.optuna": 2,                                  # between two plan attributes
           "collected": commit, "write.curves": commit, "write.trials": commit, "committed": commit,
           "write.tmp": 2 * commit - 1,                        # that commit's curves temp file
           "journal.append": journal_appends_at_start() + commit}.get(point, 1)
    return f"{point}:{nth}"


def readable_problems(study_dir: Path) -> list[str]:
    """What a reader would trip on: a Parquet file that does not load whole, a loader that fails."""
    import pyarrow.parquet as pq

    import sweep

    problems = []
    for f in sorted(study_dir.rglob("*.parquet")):
        if f.name.startswith("."):
            continue  # a temp file: never a part (the loaders skip hidden files)
        try:
            pq.read_table(f)
        except Exception as exc:
            problems.append(f"{f}: does not load: {exc}")
    if (study_dir / "trials").is_dir():
        try:
            sweep.load_trials(study_dir)
        except Exception as exc:
            problems.append(f"load_trials: {exc}")
    return problems


def optuna_keys(study_dir: Path, name: str) -> tuple[Counter, list[str], dict]:
    """(config_id, seed) of every seed of every finished Optuna trial, the states of unfinished ones, and
    the study's attributes."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from sweep.driver.optuna_journal import JOURNAL

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(study_dir / JOURNAL))))
    keys, unfinished = Counter(), []
    for t in ostudy.get_trials(deepcopy=False):
        if not t.state.is_finished():
            unfinished.append(t.state.name)
        else:  # one trial per configuration, its seeds as attributes
            keys.update((t.user_attrs["config_id"], int(seed)) for seed in t.user_attrs["seeds"])
    return keys, unfinished, ostudy.user_attrs


def snapshot(study_dir: Path) -> dict:
    """What an uninterrupted session must equal: maps and each run's verdict and loss."""
    import sweep

    t = sweep.load_trials(study_dir)
    return {"map": sweep.load_map(study_dir), "boundary": sweep.load_boundary(study_dir),
            "runs": t[["trial", "config_id", "seed", "status", "final_loss"]].reset_index(drop=True)}


def differences(got: dict, want: dict) -> list[str]:
    import pandas as pd

    out = []
    for key in want:
        try:
            pd.testing.assert_frame_equal(got[key], want[key], check_exact=True)
        except AssertionError as exc:
            out.append(f"{key} differs from the uninterrupted run: {str(exc).splitlines()[0]}")
    return out


def study_file_in(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "crash.toml"
    path.write_text(CRASH_STUDY)
    return path


def baseline(mode: str, work: Path) -> dict:
    """The uninterrupted session's snapshot, the reference of every crash case of `mode`."""
    study_file = study_file_in(work)
    code, out = run_session(driver_command(mode, study_file, work / "results"))
    if code != 0:
        raise RuntimeError(f"the uninterrupted {mode} session failed ({code}):\n{out[-3000:]}")
    return snapshot(work / "results" / "crash")


def crash_case(point: str, mode: str, work: Path, reference: dict) -> Result:
    """Kill the driver at `point`, check what readers see, resume with the same command, check all."""
    import sweep
    from sweep.spec import parse

    fault = crash_fault(point, mode)
    res = Result("crash", f"{mode}:{fault}")
    study_file = study_file_in(work)
    results = work / "results"
    study_dir = results / "crash"
    cmd = driver_command(mode, study_file, results)
    plan = parse(CRASH_STUDY, "crash.toml").plan()

    code, out = run_session(cmd, fault)
    res.check(code == -signal.SIGKILL, f"the driver was not killed at {fault} (exit {code}):\n{out[-2000:]}")
    before = len(sweep.load_trials(study_dir)) if (study_dir / "trials").is_dir() else 0
    # The cli driver's first commit may hold every run (its commits follow the clock), so
    # there a point after that commit's trials part can be the end; the local driver's second
    # commit is mid-sweep.
    if point not in AFTER_THE_RUNS and not (mode == "cli" and point in AFTER_THE_TRIALS_PART):
        res.check(before < len(plan), f"killed at {fault} after every run was recorded: not mid-sweep")
    res.problems += readable_problems(study_dir) if study_dir.is_dir() else []

    code, out = run_session(cmd)
    res.check(code == 0, f"the resumed session failed (exit {code}):\n{out[-3000:]}")
    if code != 0:
        res.lost = len(plan)
        return res
    t = sweep.load_trials(study_dir)
    res.lost, res.duplicated = lost_and_duplicated(t, plan)
    res.check(res.lost == 0 and res.duplicated == 0, f"{res.lost} runs lost, {res.duplicated} duplicated")
    res.check(sorted(t["trial"]) == list(range(len(plan))), "trial numbers are not the plan's")
    res.problems += readable_problems(study_dir)
    hidden = [str(p) for p in study_dir.rglob(".*.tmp")]
    res.check(not hidden, f"temporary files left after the resume: {hidden}")
    keys, unfinished, attrs = optuna_keys(study_dir, "crash")
    missing = {"plan_digest", "example", "sampler", "epochs", "seeds", "planned_runs"} - set(attrs)
    res.check(not missing, f"the Optuna study lacks its plan attributes {sorted(missing)}")
    res.check(set(keys) == set(zip(t["config_id"], t["seed"].astype(int))),
              "the Optuna study's (config, seed) set differs from the Parquet rows")
    res.check(all(n == 1 for n in keys.values()), f"Optuna holds {sum(keys.values()) - len(keys)} duplicate trials")
    res.check(not unfinished, f"Optuna trials left unfinished: {unfinished}")
    res.problems += differences(snapshot(study_dir), reference)
    res.ok = not res.problems
    return res


# --- worker faults (a Ray connection is up: `sweep.driver.cluster.ray_cluster` or a test Cluster) --
def scripted_study(name: str, lrs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3), seeds=(0, 1), timeout=None):
    from sweep.spec import parse

    lines = [f'[study]\nname = "{name}"\nexample = "exploding_gradients"\nepochs = 2\nseeds = {list(seeds)}',
             f"timeout = {timeout}" if timeout else "", f"[grid]\nlearning_rate = {list(lrs)}"]
    return parse("\n".join(lines), f"{name}.toml")


def _sweep_result(name: str, study, study_dir: Path, want: dict[float, str]) -> Result:
    import sweep

    res = Result("worker", name)
    t = sweep.load_trials(study_dir)
    res.lost, res.duplicated = lost_and_duplicated(t, study.plan())
    res.check(res.lost == 0 and res.duplicated == 0, f"{res.lost} runs lost, {res.duplicated} duplicated")
    for lr, status in want.items():
        got = set(t.loc[t.learning_rate == lr, "status"].astype(str))
        res.check(got == {status}, f"learning rate {lr}: statuses {got}, expected {status}")
    return res


def actor_killed(results: Path) -> Result:
    """SIGKILL a busy actor mid-batch: its runs are trained again on a fresh actor."""
    from scripted_engine import ScriptedEngine

    from sweep.driver import session as driver
    from sweep.driver.raypool import RayPool

    s = scripted_study("killed")
    pool = RayPool(s, ScriptedEngine(seconds=0.3))
    killed = []

    def kill_a_busy_actor(summary, rows):
        busy = [slot for slot in pool.actors.slots if slot.gen is not None and slot.info]
        if not killed and busy:
            os.kill(busy[0].info["pid"], signal.SIGKILL)
            killed.append(busy[0].info["name"])

    driver.run(s, results, pool=pool, on_batch=kill_a_busy_actor)
    res = _sweep_result("actor killed mid-batch", s, results / "killed", {lr: "stable" for lr in s.grid["learning_rate"]})
    res.check(bool(killed), "no busy actor was found to kill")
    res.ok = not res.problems
    return res


def run_raises(results: Path) -> Result:
    """A run that raises is an `error` row with its message; the others are trained."""
    import sweep
    from scripted_engine import ScriptedEngine

    from sweep.driver import session as driver
    from sweep.driver.raypool import RayPool

    s = scripted_study("raises", lrs=(0.001, 0.01, 0.1))
    driver.run(s, results, pool=RayPool(s, ScriptedEngine(seconds=0.05, raise_at={0.01})))
    res = _sweep_result("run raises", s, results / "raises", {0.001: "stable", 0.01: "error", 0.1: "stable"})
    t = sweep.load_trials(results / "raises")
    res.check(t.loc[t.learning_rate == 0.01, "message"].str.contains("scripted failure").all(),
              "the error rows do not carry the run's message")
    res.ok = not res.problems
    return res


def run_hangs(results: Path) -> Result:
    """A run past the study's timeout is a `timeout` row; its actor is replaced, the rest trained."""
    from scripted_engine import ScriptedEngine

    from sweep.driver import session as driver
    from sweep.driver.raypool import RayPool

    s = scripted_study("hangs", lrs=(0.001, 0.1, 0.3), seeds=(0,), timeout=3)
    driver.run(s, results, pool=RayPool(s, ScriptedEngine(seconds=0.05, hang_at={0.1})), batch_runs=3)
    res = _sweep_result("run hangs past the timeout", s, results / "hangs",
                        {0.001: "stable", 0.1: "timeout", 0.3: "stable"})
    res.ok = not res.problems
    return res


def node_removed(results: Path) -> Result:
    """A two-node `ray.cluster_utils.Cluster`; the node holding a busy actor is removed mid-sweep.
    Its runs are trained on the node that is left; the sweep finishes. Connects and
    disconnects Ray itself, so no other Ray connection may be up."""
    import secrets
    import shutil

    import ray
    from ray.cluster_utils import Cluster
    from scripted_engine import ScriptedEngine, ship_to_workers

    from sweep.driver import session as driver
    from sweep.driver.cluster import _reread_ray_settings
    from sweep.driver.raypool import RayPool

    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # A short temp dir of its own (unix socket paths are limited); RAY_TMPDIR also moves the
    # address file Cluster writes.
    temp_root = tempfile.mkdtemp(prefix="sweep-test-ray-", dir="/tmp")
    env["RAY_TMPDIR"] = temp_root
    temp_dir = os.path.join(temp_root, "ray")
    os.mkdir(temp_dir)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reread_ray_settings()
    ship_to_workers()
    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    removed = []
    try:
        worker_node = cluster.add_node(**node_args)
        ray.init(address=cluster.address)
        s = scripted_study("node")
        # A second a run: the worker node's actor must be busy at some batch even when a loaded
        # machine starts it late.
        pool = RayPool(s, ScriptedEngine(seconds=1.0))

        def remove_a_busy_node(summary, rows):
            busy = [slot for slot in pool.actors.slots if slot.gen is not None and slot.info.get("node_id") == worker_node.node_id]
            if not removed and busy:
                cluster.remove_node(worker_node)
                removed.append(worker_node.node_id)

        summary = driver.run(s, results, pool=pool, on_batch=remove_a_busy_node)
        res = _sweep_result("node removed mid-sweep", s, results / "node",
                            {lr: "stable" for lr in s.grid["learning_rate"]})
        res.check(bool(removed), "no actor was busy on the worker node to remove it under")
        res.check(summary.workers == 2, f"{summary.workers} workers at the start, expected 2 (one per node)")
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reread_ray_settings()
        for _ in range(20):  # Ray's processes may still be writing as they exit
            shutil.rmtree(temp_root, ignore_errors=True)
            if not os.path.exists(temp_root):
                break
            time.sleep(0.5)
    res.ok = not res.problems
    return res


WORKER_FAULTS = {"actor killed mid-batch": actor_killed, "run raises": run_raises,
                 "run hangs past the timeout": run_hangs}


# --- hostile and malformed study files -------------------------------------------------
GOOD_STUDY = '[study]\nname = "ok"\nexample = "exploding_gradients"\nepochs = 1\nseeds = [0]\n'


def _builder(ref: str) -> str:
    return GOOD_STUDY.replace('"exploding_gradients"', f'"{ref}"')


def _fifo(path: Path) -> None:
    os.mkfifo(path)


# Whole files the parser never sees as text, or that pass the parser and fail later checks:
# name -> (write the input at `path`, the field the message must name ("" for the file itself),
# what the message must say, extra arguments of both commands). With tests/test_spec.py's BAD
# (one field wrong each) they are the suite's hostile inputs.
HOSTILE_FILES = {
    "not UTF-8": (lambda p: p.write_bytes(b'[study]\nname = "caf\xe9"\n'), "", "not UTF-8"),
    "a directory": (lambda p: p.mkdir(), "", "directory"),
    "a FIFO (would block a reader)": (_fifo, "", "not a regular file"),
    "a link to /dev/zero (endless)": (lambda p: p.symlink_to("/dev/zero"), "", "not a regular file"),
    "a link loop": (lambda p: p.symlink_to(p), "", "cannot read"),
    "huge (2 MiB)": (lambda p: p.write_text(GOOD_STUDY + "# padding\n" * 200_000), "", "at most"),
    "empty": (lambda p: p.write_text(""), "study", "missing"),
    "NUL bytes": (lambda p: p.write_bytes(b"\x00\x01\x02garbage"), "", "TOML syntax error"),
    "UTF-8 byte order mark": (lambda p: p.write_bytes(b"\xef\xbb\xbf" + GOOD_STUDY.encode()), "", "TOML syntax error"),
    "duplicate key": (lambda p: p.write_text(GOOD_STUDY + "epochs = 2\n"), "", "TOML syntax error"),
    "arrays nested 100000 deep": (lambda p: p.write_text(GOOD_STUDY + "[grid]\nlearning_rate = " + "[" * 100_000
                                                         + "]" * 100_000 + "\n"), "", "nested too deeply"),
    "seed beyond 32 bits": (lambda p: p.write_text(GOOD_STUDY.replace("[0]", "[1099511627776]")), "study.seeds",
                            "4294967295"),
    "data_seed beyond 32 bits": (lambda p: p.write_text(GOOD_STUDY + "data_seed = 99999999999999999999\n"),
                                 "study.data_seed", "4294967295"),
    "epochs enormous": (lambda p: p.write_text(GOOD_STUDY.replace("epochs = 1", "epochs = 1000000000000")),
                        "study.epochs", "10000"),
    "timeout a boolean": (lambda p: p.write_text(GOOD_STUDY + "timeout = true\n"), "study.timeout", "> 0"),
    "learning rate a table": (lambda p: p.write_text(GOOD_STUDY + "[grid]\nlearning_rate = {a = 1}\n"),
                              "grid.learning_rate", "not a number"),
    "name absolute path": (lambda p: p.write_text(GOOD_STUDY.replace('"ok"', '"/etc/passwd"')), "study.name",
                           "plain file name"),
    "name with a unicode slash": (lambda p: p.write_text(GOOD_STUDY.replace('"ok"', '"a\u2215b"')), "study.name",
                                  "plain file name"),
    "name too long": (lambda p: p.write_text(GOOD_STUDY.replace('"ok"', '"' + "n" * 101 + '"')), "study.name",
                      "at most 100"),
    "name with a control character": (lambda p: p.write_text(GOOD_STUDY.replace('"ok"', '"a\\nb"')), "study.name",
                                      "plain file name"),
    "builder returns a string": (lambda p: p.write_text(_builder("builders:not_a_model")), "study.example",
                                 "keras.Model"),
    "builder raises": (lambda p: p.write_text(_builder("builders:raising_model")), "study.example",
                       "the user's builder failed"),
    "builder takes no arguments": (lambda p: p.write_text(_builder("builders:no_arguments")), "study.example",
                                   "TypeError"),
    "builder model without a loss": (lambda p: p.write_text(_builder("builders:uncompiled_model")), "study.example",
                                     "loss"),
    "plan beyond --max-runs": (lambda p: p.write_text(GOOD_STUDY + "[grid]\nlearning_rate = [0.1, 0.2, 0.3]\n"),
                               "grid", "--max-runs", ["--max-runs", "2"]),
}


def hostile_inputs() -> dict[str, tuple]:
    """Every hostile input: test_spec.BAD's texts and HOSTILE_FILES, as (write, field, says, args)."""
    from test_spec import BAD

    cases = {f"field: {name}": ((lambda p, text=text: p.write_text(text)), field, says)
             for name, (text, field, says) in BAD.items()}
    cases.update({f"file: {name}": case for name, case in HOSTILE_FILES.items()})
    return cases


def cli(args: list[str], cwd: Path):
    """`sweep ARGS` in this process (click's runner): exit code, output, and any exception."""
    from click.testing import CliRunner

    from sweep.cli import main

    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        os.chdir(here)


def hostile_case(name: str, work: Path) -> Result:
    """`sweep validate` and `sweep run` on one hostile input: exit 2, the message names the
    file and the field and says what is allowed, no traceback, nothing written."""
    write, field, says, *extra = hostile_inputs()[name]
    args = extra[0] if extra else []
    res = Result("input", name)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "study.toml"
    write(path)
    before = sorted(p.name for p in work.iterdir())
    for command in (["validate", str(path)], ["run", str(path), "--results", str(work / "results")]):
        r = cli(command + args, work)
        text = r.output
        res.check(r.exit_code == 2, f"{command[0]}: exit {r.exit_code}, expected 2: {text[-500:]} {r.exception!r}")
        res.check("Traceback" not in text, f"{command[0]}: a traceback instead of a message")
        res.check(str(path) in text, f"{command[0]}: the message does not name the file: {text[-300:]}")
        res.check(f"{field}:" in text if field else True, f"{command[0]}: the message does not name {field}: {text[-300:]}")
        res.check(says in text, f"{command[0]}: the message does not say {says!r}: {text[-300:]}")
    res.check(sorted(p.name for p in work.iterdir()) == before, "something was written")
    return res


# --- corrupted results ------------------------------------------------------------------
def _truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _other_schema(part: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(part).replace_schema_metadata({"schema_version": "0"}), part)


def _foreign(part: Path) -> Path:
    intruder = part.parent / "notes.csv"
    intruder.write_text("a,b\n1,2\n")
    return intruder


CORRUPTIONS = {  # name -> (dataset, damage one part: returns the file the message must name)
    "truncated trials part": ("trials", lambda part: _truncate(part) or part),
    "trials part of another schema version": ("trials", lambda part: _other_schema(part) or part),
    "foreign file in trials/": ("trials", _foreign),
    "truncated curves part": ("curves", lambda part: _truncate(part) or part),
    "curves part of another schema version": ("curves", lambda part: _other_schema(part) or part),
    "foreign file in curves/": ("curves", _foreign),
}


def recorded_study(results: Path):
    """A finished study of the crash plan, trained in-process by the scripted engine."""
    from scripted_engine import ScriptedEngine

    from sweep.driver import session as driver
    from sweep.spec import parse

    s = parse(CRASH_STUDY, str(results / "crash.toml"))
    (results / "crash.toml").parent.mkdir(parents=True, exist_ok=True)
    (results / "crash.toml").write_text(CRASH_STUDY)
    driver.run(s, results, pool=ScriptedPool(s, ScriptedEngine()))
    return s


def corrupted_case(name: str, work: Path) -> Result:
    """Damage one part file of a finished study: the loaders, `sweep run`, `sweep map` and
    `sweep show` refuse with exit 2 naming the file; nothing is rewritten or dropped."""
    import sweep
    from sweep.results.reports import ResultsError

    res = Result("corrupt", name)
    recorded_study(work)
    study_dir = work / "crash"
    dataset, damage = CORRUPTIONS[name]
    named = damage(sorted((study_dir / dataset).glob("part-*.parquet"))[0])
    files = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file() and p.name != ".driver.lock"}
    loader = sweep.load_trials if dataset == "trials" else sweep.load_curves
    try:
        loader(study_dir)
        res.check(False, f"{loader.__name__} read a damaged {dataset} directory")
    except ResultsError as exc:
        res.check(named.name in str(exc), f"{loader.__name__} did not name {named.name}: {exc}")
    commands = [["run", str(work / "crash.toml"), "--results", str(work)]]
    if dataset == "trials":  # map and show read the trials only
        commands += [["map", str(study_dir)], ["show", str(study_dir)]]
    for command in commands:
        r = cli(command, work)
        res.check(r.exit_code == 2, f"{command[0]}: exit {r.exit_code}, expected 2: {r.output[-500:]} {r.exception!r}")
        res.check(named.name in r.output, f"{command[0]}: the message does not name {named.name}: {r.output[-300:]}")
        res.check("Traceback" not in r.output, f"{command[0]}: a traceback instead of a message")
    after = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file() and p.name != ".driver.lock"}
    res.check(after == files, "the refused commands changed the study directory")
    return res


# --- storage faults ---------------------------------------------------------------------
def disk_full_case(work: Path) -> Result:
    """The disk fills mid-sweep (ENOSPC at the first commit's trials part): the driver stops
    with a clear message and a non-zero exit, no traceback; what was committed loads; the same
    command resumes once there is room and finishes with one row per run."""
    import sweep
    from sweep.spec import parse

    res = Result("storage", "disk full mid-sweep (ENOSPC injected at a commit's trials part)")
    study_file = study_file_in(work)
    results = work / "results"
    study_dir = results / "crash"
    cmd = driver_command("cli", study_file, results)   # the command's own handling is under test
    plan = parse(CRASH_STUDY, "crash.toml").plan()
    code, out = run_session(cmd, "write.tmp:2:enospc")
    res.check(code not in (0, None, -signal.SIGKILL), f"the driver did not stop with an error (exit {code})")
    res.check("No space left on device" in out and "run the same command to resume" in out,
              f"no clear message about the full disk:\n{out[-2000:]}")
    res.check("Traceback" not in out, f"a traceback instead of a message:\n{out[-3000:]}")
    res.problems += readable_problems(study_dir)
    before = len(sweep.load_trials(study_dir)) if (study_dir / "trials").is_dir() else 0
    res.check(before < len(plan), "the disk filled after every run was recorded: not mid-sweep")
    code, out = run_session(cmd)
    res.check(code == 0, f"the resumed session failed (exit {code}):\n{out[-3000:]}")
    if code == 0:
        res.lost, res.duplicated = lost_and_duplicated(sweep.load_trials(study_dir), plan)
        res.check(res.lost == 0 and res.duplicated == 0, f"{res.lost} runs lost, {res.duplicated} duplicated")
    else:
        res.lost = len(plan)
    res.ok = not res.problems
    return res


def drive(study_file: str, results: str) -> None:
    """The `local` crash driver: `sweep.driver.session.run` with the scripted engine trained in-process."""
    from scripted_engine import ScriptedEngine

    from sweep import spec
    from sweep.driver import session as driver

    driver.COMMIT_ROWS = LOCAL_COMMIT_ROWS
    s = spec.load(study_file)
    driver.run(s, results, pool=ScriptedPool(s, ScriptedEngine()), batch_runs=LOCAL_COMMIT_ROWS)


if __name__ == "__main__":
    if sys.argv[1:2] == ["drive"] and len(sys.argv) == 4:
        drive(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: fault_cases.py drive STUDY RESULTS")
