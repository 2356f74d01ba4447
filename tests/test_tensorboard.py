"""`sweep tensorboard` and `sweep run --tensorboard`: the event files read back through
TensorBoard's own reader (curves, hyperparameters, metrics, the HParams experiment), the
aggregate form against map.parquet, exactly one run directory per recorded run after a crash
and a resume, bad input and a missing package; a real `tensorboard` server's HParams API."""

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fault_cases import CRASH_STUDY, driver_command, run_session
from scripted_engine import ScriptedEngine
from sweep.cli import main
from sweep.driver import session as driver
from sweep.driver.pool import LocalPool
from sweep.plots import tensorboard as tb
from sweep.results import maps, reports
from sweep.spec import AXES, parse

ROOT = Path(__file__).resolve().parents[1]

# 16 runs: stable (0.001, 0.1), error (0.5: the scripted engine raises), nan (1.0), two clippings, two seeds.
SMALL = """
[study]
name = "small"
example = "exploding_gradients"
epochs = 3
seeds = [0, 1]
engine = "keras"
[grid]
learning_rate = [0.001, 0.1, 0.5, 1.0]
clipnorm = ["none", 1.0]
"""
VARIED = ("clipnorm", "learning_rate")


class ScriptedPool(LocalPool):
    """LocalPool for the scripted engine, which needs no TensorFlow."""

    def __enter__(self):
        return self


def train(root: Path, max_trials=None, on_batch=None, batch_runs=None):
    path = root / "small.toml"
    path.write_text(SMALL)  # stored with the results: the run names show the axes it varies
    study = parse(SMALL, str(path))
    return driver.run(study, root / "results", pool=ScriptedPool(study, ScriptedEngine(raise_at=(0.5,))),
                      max_trials=max_trials, on_batch=on_batch, batch_runs=batch_runs)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    train(root)
    return root / "results" / "small"


def multiplexer(logdir: Path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    m = EventMultiplexer()
    m.AddRunsFromDirectory(str(logdir))
    m.Reload()
    return m


def scalars(m, run: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run, as TensorBoard's reader migrates them (simple values become tensors)."""
    from tensorboard.util import tensor_util

    acc = m.GetAccumulator(run)
    tags = [t for t in acc.Tags()["tensors"] if not t.startswith("_hparams_")]
    return {t: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(t)] for t in tags}


def same(a: float, b: float) -> bool:
    """Equal as float32 (TensorBoard's scalars), NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_event_files_hold_each_runs_curves_hyperparameters_and_metrics(small, tmp_path):
    from tensorboard.plugins.hparams import metadata

    logdir = tmp_path / "logs"
    result = CliRunner().invoke(main, ["tensorboard", str(small), "--logdir", str(logdir)])
    assert result.exit_code == 0, result.output
    assert f"{logdir}: wrote 16 runs, 0 already there" in result.output
    trials = reports.load_trials(small)
    curves = reports.load_curves(small)
    m = multiplexer(logdir)
    names = {tb.run_name(r, VARIED): r for r in trials.to_dict("records")}
    assert set(m.Runs()) == {".", *names}  # one run per (configuration, seed) and the experiment

    content = m.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content["."][metadata.EXPERIMENT_TAG])
    hparams = {h.name: h for h in experiment.hparam_infos}
    assert list(hparams) == [*AXES, "seed"]
    assert [v.number_value for v in hparams["learning_rate"].domain_discrete.values] == [0.001, 0.1, 0.5, 1.0]
    assert [v.string_value for v in hparams["clipnorm"].domain_discrete.values] == ["1", "none"]
    assert [v.string_value for v in hparams["clipvalue"].domain_discrete.values] == ["none"]
    assert {n for n, h in hparams.items() if h.differs} == {*VARIED, "seed"}
    assert [i.name.tag for i in experiment.metric_infos] == [
        "stable", "final_loss_ratio", "max_loss_ratio", "first_nonfinite_step", "final_baseline_ratio",
        "final_loss"]

    statuses = set()
    for name, row in names.items():
        start = metadata.parse_session_start_info_plugin_data(content[name][metadata.SESSION_START_INFO_TAG])
        values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert values == {**{a: tb.hparam_value(a, row[a]) for a in AXES}, "seed": row["seed"]}
        assert values["clipnorm"] == ("none" if math.isnan(row["clipnorm"]) else "1")
        end = metadata.parse_session_end_info_plugin_data(content[name][metadata.SESSION_END_INFO_TAG])
        assert end.status == (2 if row["status"] == "error" else 1)  # STATUS_FAILURE, STATUS_SUCCESS

        got = scalars(m, name)
        mine = curves[curves.trial == row["trial"]]
        for tag in ("loss", "accuracy", "learning_rate", "grad_norm_max"):
            expected = [(int(e), float(v)) for e, v in zip(mine.epoch, mine[tag]) if v == v or tag == "loss"]
            assert [s for s, _ in got.get(tag, [])] == [s for s, _ in expected], (name, tag)
            assert all(same(a, b) for (_, a), (_, b) in zip(got.get(tag, []), expected)), (name, tag)
        statuses.add(row["status"])
        if row["status"] == "error":  # no outcome: only `stable`, 0, and no curves
            assert set(got) == {"stable"} and got["stable"][0][1] == 0.0
            continue
        last = int(mine.epoch.max())
        assert got["stable"] == [(last, float(row["status"] == "stable"))]
        step = row["first_nonfinite_step"]
        assert got["first_nonfinite_step"] == [(last, -1.0 if pd.isna(step) else float(step))]
        for tag in ("final_loss_ratio", "max_loss_ratio", "final_baseline_ratio", "final_loss"):
            assert same(got[tag][0][1], row[tag]), (name, tag)
    assert statuses == {"stable", "error", "nan"}


def test_sharpness_is_written_on_the_epochs_it_was_measured(tmp_path):
    """The reference results of the exploding-gradients sweep measure the sharpness every 5
    epochs ([telemetry]): those epochs, and only those, carry `sharpness` and `precond_sharpness`."""
    study_dir = ROOT / "results" / "reproduce-exploding_gradients"
    board = tb.write(study_dir, tmp_path / "logs")
    curves = reports.load_curves(study_dir)
    first = reports.load_trials(study_dir).iloc[0]
    got = scalars(multiplexer(tmp_path / "logs"), tb.run_name(first, board.name_axes))
    mine = curves[curves.trial == first["trial"]]
    for tag in ("sharpness", "precond_sharpness"):
        measured = mine[mine[tag].notna()]
        assert len(measured) >= 2 and len(measured) < len(mine)
        assert [s for s, _ in got[tag]] == list(measured.epoch)
        assert all(same(a, b) for (_, a), b in zip(got[tag], measured[tag]))


def test_a_second_write_adds_nothing_and_half_written_runs_are_written_again(small, tmp_path):
    logdir = tmp_path / "logs"
    assert tb.write(small, logdir).written == 16
    again = tb.write(small, logdir)
    assert (again.written, again.present) == (0, 16)
    runs = sorted(p for p in logdir.iterdir() if p.is_dir())
    # What a writer killed mid-run leaves: a partial file and no event file; a power cut: an empty file.
    (runs[0] / tb.EVENTS).rename(runs[0] / tb.PARTIAL)
    (runs[1] / tb.EVENTS).write_bytes(b"")
    repaired = tb.write(small, logdir)
    assert (repaired.written, repaired.present) == (2, 14)
    assert all((r / tb.EVENTS).stat().st_size > 0 and not (r / tb.PARTIAL).exists() for r in runs)
    assert len(multiplexer(logdir).Runs()) == 17


def test_aggregate_form_is_one_run_per_configuration_with_the_maps_p_stable(small, tmp_path):
    logdir = tmp_path / "aggregate"
    result = CliRunner().invoke(main, ["tensorboard", str(small), "--logdir", str(logdir), "--aggregate"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 configurations" in result.output
    map_df = maps.load_map(small)
    m = multiplexer(logdir)
    assert len(m.Runs()) == 8 + 1
    for _, row in map_df.iterrows():
        name = tb.config_name(row.to_dict(), VARIED)
        got = scalars(m, name)
        assert got["n_seeds"][0][1] == row["n_seeds"]
        if row["n_seeds"]:  # the error configurations have no verdict, so no P(stable)
            assert got["p_stable"][0][1] == pytest.approx(row["p_stable"])
            assert same(got["median_final_loss_ratio"][0][1], row["median_final_loss_ratio"])
        else:
            assert "p_stable" not in got
    # Both seeds of a stable configuration learn alike: the median curve is theirs; a NaN run's
    # loss counts as +inf in the median, as map.parquet's medians count it.
    stable = scalars(m, "clipnorm=none,lr=0.001")["loss"]
    assert [s for s, _ in stable] == [0, 1, 2, 3] and stable[-1][1] == pytest.approx(0.69 / 8)
    assert math.isinf(scalars(m, "clipnorm=none,lr=1")["loss"][-1][1])
    wrong_form = CliRunner().invoke(main, ["tensorboard", str(small), "--logdir", str(logdir)])
    assert wrong_form.exit_code == 2 and "aggregate form" in wrong_form.output and str(logdir) in wrong_form.output


def test_without_its_study_file_names_are_trials_and_configuration_ids(small, tmp_path):
    """A results directory copied without study.json: no plan to name the varied axes or count
    the seeds, so run names carry the trial and seed only (never what happens to be recorded)
    and a configuration is complete with as many seeds as the most-seeded one has."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(small / "trials", bare / "trials")
    shutil.copytree(small / "curves", bare / "curves")
    runs = tb.write(bare, tmp_path / "runs")
    assert runs.written == 16 and (tmp_path / "runs" / "trial=0000000,seed=0").is_dir()
    configurations = tb.write(bare, tmp_path / "configurations", aggregate=True)
    ids = set(reports.load_trials(bare)["config_id"])
    assert configurations.written == 8
    assert {p.name for p in (tmp_path / "configurations").iterdir() if p.is_dir()} == {f"config={i}" for i in ids}


def test_live_writing_survives_a_crash_between_commit_and_write(tmp_path, monkeypatch):
    """A first session records 6 runs and dies before writing any to TensorBoard (no follower
    here: what a driver killed after its commit leaves); the resumed session with a follower
    writes those first, then every commit's runs as they come: one directory per recorded run."""
    monkeypatch.setattr(driver, "COMMIT_ROWS", 4)  # several commits in one session
    train(tmp_path, max_trials=6)
    study_dir = tmp_path / "results" / "small"
    logdir = tmp_path / "live"
    seen = []
    follower = tb.Follower(tb.Board(study_dir, logdir), on_batch=lambda s, rows: seen.append(len(rows)),
                           interval=0.0)
    assert follower.caught_up == 6
    train(tmp_path, on_batch=follower, batch_runs=2)
    follower.close()
    assert sum(seen) == 10 and not follower.failed
    trials = reports.load_trials(study_dir)
    dirs = sorted(p.name for p in logdir.iterdir() if p.is_dir())
    assert dirs == sorted(tb.run_name(r, VARIED) for r in trials.to_dict("records"))
    assert len(dirs) == 16 and all((logdir / d / tb.EVENTS).stat().st_size > 0 for d in dirs)


def test_a_full_log_directory_stops_the_writing_not_the_sweep(tmp_path, monkeypatch):
    """A write that fails mid-sweep (a full disk) is reported once; the sweep records every run;
    `sweep tensorboard` catches up afterwards."""
    import errno

    monkeypatch.setattr(driver, "COMMIT_ROWS", 4)
    train(tmp_path, max_trials=4)
    study_dir, logdir = tmp_path / "results" / "small", tmp_path / "live"
    warnings = []
    follower = tb.Follower(tb.Board(study_dir, logdir), warn=warnings.append, interval=0.0)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tb, "_replace", full)
    train(tmp_path, on_batch=follower, batch_runs=2)
    follower.close()
    assert follower.failed and len(warnings) == 1
    assert "No space left on device" in warnings[0]
    assert f"sweep tensorboard {study_dir} --logdir {logdir}" in warnings[0]
    assert len(reports.load_trials(study_dir)) == 16
    monkeypatch.undo()
    caught_up = tb.write(study_dir, logdir)
    assert (caught_up.present, caught_up.written) == (4, 12)


def test_bad_logdirs_and_study_dirs_exit_2_naming_the_path(small, tmp_path):
    run = CliRunner().invoke
    missing = run(main, ["tensorboard", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope: not a study results directory" in missing.output
    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_dir = run(main, ["tensorboard", str(small), "--logdir", str(a_file)])
    assert not_dir.exit_code == 2 and f"{a_file}: not a directory" in not_dir.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = run(main, ["tensorboard", str(small), "--logdir", str(foreign)])
    assert refused.exit_code == 2 and f"{foreign}: not empty" in refused.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / tb.MARKER).write_text(json.dumps({"study": "quickstart", "form": "runs", "plan_digest": "x"}))
    taken = run(main, ["tensorboard", str(small), "--logdir", str(other)])
    assert taken.exit_code == 2 and "study 'quickstart'" in taken.output
    alone = run(main, ["run", "small.toml", "--tensorboard-aggregate"])
    assert alone.exit_code == 2 and "--tensorboard-aggregate needs --tensorboard DIR" in alone.output


def test_more_runs_than_open_files_is_said_with_the_fix(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert tb.open_files_note(500) is None
    assert tb.open_files_note(2112).endswith("run `ulimit -n 2368` in the shell that starts it")
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    note = tb.open_files_note(2112)
    assert "may open 1024 files" in note and "allows 1024 at most: write the aggregate form" in note


def without_tensorboard(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `sweep` command in a Python where `import tensorboard` fails, as it does without the extra."""
    code = "import sys; sys.modules['tensorboard'] = None; from sweep.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_without_the_package_both_commands_exit_1_naming_the_extra(small, tmp_path):
    shown = without_tensorboard("tensorboard", str(small), "--logdir", str(tmp_path / "logs"), cwd=tmp_path)
    assert shown.returncode == 1, shown.stderr
    assert shown.stderr.strip().splitlines()[-1] == (
        "Error: the tensorboard package is not installed: pip install 'stability-sweep[tensorboard]'")
    assert not (tmp_path / "logs").exists()
    (tmp_path / "small.toml").write_text(SMALL)
    live = without_tensorboard("run", "small.toml", "--results", "results", "--tensorboard", "logs", cwd=tmp_path)
    assert live.returncode == 1 and "stability-sweep[tensorboard]" in live.stderr
    assert not (tmp_path / "results").exists()  # refused before anything was written


@pytest.mark.slow
def test_killed_and_resumed_run_leaves_one_run_directory_per_run(request, tmp_path):
    """`sweep run --tensorboard` (the real command: private Ray, keras engine), killed after a
    commit, then run again; then `tensorboard --logdir` serves every run once. Quick: the crash
    study (16 runs, 1 epoch), killed as its first trials part lands, before anything reaches
    TensorBoard; full: the quickstart, killed after its second commit, while the live writer
    follows."""
    if request.config.getoption("--quick"):
        study_file, fault = tmp_path / "crash.toml", "write.trials:1"
        study_file.write_text(CRASH_STUDY)
    else:
        study_file, fault = ROOT / "studies" / "quickstart.toml", "committed:2"
    results, logdir = tmp_path / "results", tmp_path / "logs"
    cmd = driver_command("cli", study_file, results) + ["--tensorboard", str(logdir)]
    code, out = run_session(cmd, fault=fault)
    assert code == -9, out
    code, out = run_session(cmd)
    assert code == 0, out
    study_dir = results / parse(study_file.read_text(), str(study_file)).name
    trials = reports.load_trials(study_dir)
    board = tb.Board(study_dir, logdir)
    expected = sorted(tb.run_name(r, board.name_axes) for r in trials.to_dict("records"))
    dirs = sorted(p.name for p in logdir.iterdir() if p.is_dir())
    assert dirs == expected and len(dirs) == len(parse(study_file.read_text(), "s").plan())
    assert all((logdir / d / tb.EVENTS).stat().st_size > 0 and not (logdir / d / tb.PARTIAL).exists() for d in dirs)
    # What `tensorboard --logdir` then serves: every axis, and every run once.
    experiment, groups = served(logdir, len(dirs), tmp_path / "tensorboard.log")
    assert {h["name"] for h in experiment["hparamInfos"]} == {*AXES, "seed"}
    assert sorted(g["name"] for g in groups["sessionGroups"]) == dirs


# --- a real TensorBoard --------------------------------------------------------------------

def post(port: int, route: str, body: dict) -> dict:
    """What the HParams dashboard asks: a JSON body, sent as text/plain like the frontend's."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/{route}",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def session_groups_request(metrics: list[str]) -> dict:
    """The legacy HParams dashboard's ListSessionGroups request (tf-hparams-query-pane)."""
    return {"experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": a, "includeInResult": True} for a in (*AXES, "seed")]
            + [{"metric": {"tag": m, "group": ""}, "includeInResult": True} for m in metrics],
            "startIndex": 0, "sliceSize": 1000}


def served(logdir: Path, runs: int, log: Path) -> tuple[dict, dict]:
    """`tensorboard --logdir` on 127.0.0.1 (a free port it picks), asked until its HParams API
    lists `runs` sessions (it reads the log directory in the background), then stopped:
    (the experiment, the session groups), as the dashboard receives them."""
    with open(log, "w") as err:
        server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir),
                                   "--host", "127.0.0.1", "--port", "0"], stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 180
        port = groups = None
        while time.monotonic() < deadline and server.poll() is None:
            time.sleep(1)
            if port is None:
                found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
                port = found and int(found.group(1))
                continue
            groups = post(port, "session_groups", session_groups_request(["stable", "final_loss_ratio"]))
            if groups.get("totalSize") == runs:
                break
        assert port and groups and groups["totalSize"] == runs, log.read_text()[-2000:]
        return post(port, "experiment", {"experimentName": "", "hparamsLimit": 1000}), groups
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_a_tensorboard_server_serves_the_hparams_experiment(small, tmp_path):
    """`tensorboard --logdir` on the written runs: its HParams API lists every axis with its
    domain, every metric, and every run with its hyperparameters and metric values (the fast
    data loader TensorBoard uses by default reads the same files; the quick form is this)."""
    logdir = tmp_path / "logs"
    tb.write(small, logdir)
    trials = {tb.run_name(r, VARIED): r for r in reports.load_trials(small).to_dict("records")}
    experiment, groups = served(logdir, len(trials), tmp_path / "tensorboard.log")
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert set(hparams) == {*AXES, "seed"}
    assert hparams["learning_rate"]["domainDiscrete"] == [0.001, 0.1, 0.5, 1.0]
    assert hparams["clipnorm"]["domainDiscrete"] == ["1", "none"]
    assert [h["name"] for h in experiment["hparamInfos"]][:3] == ["clipnorm", "learning_rate", "seed"]  # varied first
    assert [m["name"]["tag"] for m in experiment["metricInfos"]][:3] == ["stable", "final_loss_ratio", "max_loss_ratio"]
    assert {g["name"] for g in groups["sessionGroups"]} == set(trials)
    for group in groups["sessionGroups"]:
        row = trials[group["name"]]
        assert group["hparams"]["learning_rate"] == row["learning_rate"]
        assert group["hparams"]["clipnorm"] == tb.hparam_value("clipnorm", row["clipnorm"])
        assert group["hparams"]["seed"] == row["seed"]
        metrics = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
        assert metrics["stable"] == float(row["status"] == "stable")
        if row["status"] == "nan":
            assert metrics["final_loss_ratio"] == "NaN"  # protobuf's JSON for a NaN double
        elif row["status"] == "stable":
            assert metrics["final_loss_ratio"] == pytest.approx(row["final_loss_ratio"], rel=1e-6)
        assert group["sessions"][0]["status"] == ("STATUS_FAILURE" if row["status"] == "error" else "STATUS_SUCCESS")
