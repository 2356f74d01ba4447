"""Hostile and malformed study files through the command: `sweep validate` and `sweep run` both
exit 2 with a message naming the file and the field and saying what is allowed, print no
traceback, and write nothing (`fault_cases.hostile_case`). The inputs: every one-field mistake
of test_spec.BAD and whole-file hostilities (not UTF-8, a FIFO, /dev/zero, 2 MiB, nesting
100000 deep, builders that return no Keras model, a plan beyond --max-runs, ...)."""

import pytest

import fault_cases

CASES = sorted(fault_cases.hostile_inputs())


def test_there_are_at_least_thirty():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_refused_cleanly(name, tmp_path):
    result = fault_cases.hostile_case(name, tmp_path)
    assert result.ok, "\n".join(result.problems)


def test_max_runs_guard_can_be_raised_from_the_command(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(fault_cases.GOOD_STUDY + "[grid]\nlearning_rate = [0.1, 0.2, 0.3]\n")
    r = fault_cases.cli(["validate", str(study), "--max-runs", "3"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "= 3 runs" in r.output
