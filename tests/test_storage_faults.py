"""Storage faults: a results directory that cannot be written is refused before any training
(exit 2, the message says why); a disk that fills mid-sweep stops the driver cleanly (a clear
message, exit 1, no traceback) with what was committed intact, and the same command resumes."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

import fault_cases
from sweep.driver import session as driver
from sweep.spec import parse


def refused_before_training(tmp_path, results, says):
    study = tmp_path / "s.toml"
    study.write_text(fault_cases.GOOD_STUDY)
    r = fault_cases.cli(["run", str(study), "--results", str(results)], tmp_path)
    assert r.exit_code == 2, r.output
    assert "results directory is not writable" in r.output and says in r.output, r.output
    assert "training on" not in r.output and "Traceback" not in r.output


def test_results_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    refused_before_training(tmp_path, tmp_path / "file" / "results", "Not a directory")


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere), unmounted after the test."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_filesystem(tiny_fs, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    refused_before_training(tmp_path, tiny_fs / "results", "Read-only file system")


def test_full_filesystem_at_start(tiny_fs, tmp_path):
    (tiny_fs / "results").mkdir()
    with open(tiny_fs / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * (2 << 20))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    refused_before_training(tmp_path, tiny_fs / "results", "No space left on device")


def test_full_filesystem_mid_session_stops_cleanly_and_resumes(tiny_fs, tmp_path):
    """A real full disk under the driver code (scripted engine in-process): the first commits fit,
    a later one does not; ResultsWriteError says so, what was committed loads, and once there
    is room the same call finishes the study with one row per run."""
    import sweep
    from scripted_engine import ScriptedEngine

    s = parse(fault_cases.CRASH_STUDY.replace("[0.001, 0.1, 1.0, 10.0]", str([0.001 * 2 ** i for i in range(16)])),
              "big.toml")
    filler = tiny_fs / "filler"

    class FillingPool(fault_cases.ScriptedPool):
        def wait(self):  # the disk fills up while the fourth batch trains
            self.batches = getattr(self, "batches", 0) + 1
            if self.batches == 4:
                with open(filler, "wb") as fh:
                    try:
                        fh.write(b"\0" * (2 << 20))
                    except OSError:
                        pass
            return super().wait()

    results = tiny_fs / "results"
    old = driver.COMMIT_ROWS
    driver.COMMIT_ROWS = 8
    try:
        with pytest.raises(driver.ResultsWriteError, match="No space left on device.*run the same command"):
            driver.run(s, results, pool=FillingPool(s, ScriptedEngine()), batch_runs=8)
        kept = sweep.load_trials(results / "crash")
        assert 0 < len(kept) < len(s.plan())
        assert fault_cases.readable_problems(results / "crash") == []
        filler.unlink()
        driver.run(s, results, pool=fault_cases.ScriptedPool(s, ScriptedEngine()), batch_runs=8)
    finally:
        driver.COMMIT_ROWS = old
    t = sweep.load_trials(results / "crash")
    assert fault_cases.lost_and_duplicated(t, s.plan()) == (0, 0)
    assert t.set_index("trial").loc[kept.trial, "config_id"].tolist() == kept.config_id.tolist()


@pytest.mark.slow
def test_disk_full_through_the_command(tmp_path):
    result = fault_cases.disk_full_case(tmp_path)
    assert result.ok, "\n".join(result.problems)
