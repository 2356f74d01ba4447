"""XLA's compile cache across processes (`sweep.xla`): a second process loads what the first
compiled, a damaged entry is compiled again and changes no outcome, and the cache can be off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweep import xla

# Trains the quick bench set (8 runs, 3 epochs) on the population engine in a fresh process and
# prints every run's epoch losses: the programs compiled are those of a real sweep.
TRAIN = """
import json
from sweep.cluster import import_tensorflow
import_tensorflow()
from sweep import xla
from sweep.bench import bench_study
from sweep.engines.population import PopulationEngine
study = bench_study(quick=True)
outcomes = PopulationEngine().train(study, study.plan())
print(json.dumps({"losses": [o.epoch_loss for o in outcomes], "cache": str(xla.active())}))
"""


def train(cache: str) -> dict:
    return xla.in_fresh_process(TRAIN, cache, timeout=600)


def entries(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob(xla.ENTRY_GLOB)}


def test_a_second_process_loads_what_the_first_compiled_and_damage_is_rebuilt(tmp_path):
    root = tmp_path / "cache"
    first = train(str(root))
    compiled = entries(root)
    assert compiled and Path(first["cache"]).parent == root
    assert all(p.with_name(p.name + xla.SEAL).exists() for p in compiled)  # every entry sealed

    second = train(str(root))
    assert entries(root) == compiled  # nothing compiled again: every program was loaded
    assert second["losses"] == first["losses"]

    # One entry's machine code damaged after it was sealed, another cut short with no seal:
    # neither may be loaded; both are compiled again, and the outcomes are the same.
    damaged, *rest = sorted(compiled)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    if rest:
        cut = rest[0]
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        cut.with_name(cut.name + xla.SEAL).unlink()
    third = train(str(root))
    rebuilt = entries(root)
    assert rebuilt.keys() == compiled.keys()
    assert rebuilt[damaged] != compiled[damaged] and (not rest or rebuilt[rest[0]] != compiled[rest[0]])
    assert third["losses"] == first["losses"]
    assert xla.check(Path(first["cache"])) == 0  # what was rebuilt is sealed again


def test_off_writes_nothing_and_sets_no_flag(tmp_path, monkeypatch):
    monkeypatch.setenv(xla.ENV, "off")
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    assert xla.directory() is None and xla._enable_cache() is None
    assert "TF_XLA_FLAGS" not in os.environ


def test_the_default_directory_is_per_user_and_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(xla.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = xla.directory()
    assert d.parent == tmp_path / "stability-sweep"
    # Another TensorFlow, other XLA flags or another CPU: another directory, never its entries.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=true")
    assert xla.directory() != d


def test_the_cli_switch_turns_it_off(monkeypatch):
    from click.testing import CliRunner

    from sweep.cli import main

    monkeypatch.delenv(xla.ENV, raising=False)
    result = CliRunner().invoke(main, ["--no-compile-cache", "validate", "studies/quickstart.toml"])
    assert result.exit_code == 0, result.output
    assert os.environ[xla.ENV] == "off"


@pytest.mark.parametrize("key", ["a", "b"])
def test_stable_names_number_a_trace_from_its_key(key):
    import tensorflow as tf

    def names(k: str) -> list[str]:
        fn = tf.function(lambda x: tf.while_loop(lambda i: i < x, lambda i: i + 1, [tf.constant(0)]),
                         input_signature=[tf.TensorSpec([], tf.int32)])
        with xla.stable_names(k):
            concrete = fn.get_concrete_function()
        return [concrete.name.decode()] + sorted(f.name.decode() if isinstance(f.name, bytes) else f.name
                                                 for f in concrete.graph._functions.values())

    first, again = names(f"test-{key}"), names(f"test-{key}")
    assert first == again  # the same names however many functions were traced before
    assert names(f"test-other-{key}") != first
