"""Crash anywhere and resume: the driver is SIGKILLed at every named point of `sweep.results.faults`
and the same command is run again. Each time: one row per planned run, the Optuna copy
agreeing with the Parquet rows (no trial left RUNNING), every file loadable, and maps equal
to those of an uninterrupted session (`fault_cases.crash_case` holds the checks).

Quick form (CI): three points on the in-process scripted driver. Full form: every point
on that driver and on the real `sweep run` (keras engine, private local Ray)."""

import pytest

import fault_cases
from sweep.results import faults


def points_for(config, mode):
    quick = config.getoption("--quick")
    if mode == "cli" and quick:
        return []
    return list(fault_cases.QUICK_POINTS if quick else faults.POINTS)


def pytest_generate_tests(metafunc):
    if "point" in metafunc.fixturenames:
        mode = metafunc.function.__name__.rsplit("_", 1)[-1]
        metafunc.parametrize("point", points_for(metafunc.config, mode))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = fault_cases.baseline(mode, tmp_path_factory.mktemp(f"uninterrupted-{mode}"))
        return cache[mode]

    return get


def check(result):
    assert result.ok, "\n".join(result.problems)
    assert (result.lost, result.duplicated) == (0, 0)


@pytest.mark.slow
def test_killed_and_resumed_local(point, reference, tmp_path):
    check(fault_cases.crash_case(point, "local", tmp_path, reference("local")))


@pytest.mark.slow
def test_killed_and_resumed_cli(point, reference, tmp_path):
    check(fault_cases.crash_case(point, "cli", tmp_path, reference("cli")))


def test_every_point_is_in_the_driver():
    """A point named in `faults.POINTS` but called nowhere would be a crash case that tests nothing."""
    from pathlib import Path

    package = Path(faults.__file__).parents[1]  # sweep/, every stage
    source = "".join(p.read_text() for p in package.rglob("*.py") if p.name != "faults.py")
    for name in faults.POINTS:
        assert f'faults.point("{name}")' in source, name


def test_fault_spec_is_checked():
    assert faults.parse(None) is None
    assert faults.parse("maps") == ("maps", 1, "kill")
    for bad in ("nowhere", "maps:x", "maps:1:explode"):
        with pytest.raises(ValueError, match="SWEEP_FAULT"):
            faults.parse(bad)
