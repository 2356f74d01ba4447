"""XLA's compile cache across processes (`sweep.engines.xla`): a second process loads what the first
compiled, a damaged entry is compiled again and changes no outcome, and the cache can be off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweep.engines import xla

# Trains the quick bench set (8 runs, 3 epochs) on the population engine in a fresh process and
# prints every run's epoch losses: the programs compiled are those of a real sweep.
TRAIN = """
import json
from sweep.engines.runtime import import_tensorflow
import_tensorflow()
from sweep.engines import xla
from sweep.probes.bench import bench_study
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


def test_an_entry_unchanged_since_its_seal_is_not_read_again(tmp_path, monkeypatch):
    """A start checks a full cache by its files' identities; hashing every entry again would cost
    about a second per 300 MB in the driver and in every worker. A change is still caught."""
    import time

    monkeypatch.setattr(xla, "SETTLED_SECONDS", 0.02)
    hashed = []
    digest = xla._digest
    monkeypatch.setattr(xla, "_digest", lambda path: hashed.append(path.name) or digest(path))
    entries = [tmp_path / f"xla_compile_cache__{i}__XLA_CPU_JIT.pb" for i in range(3)]
    for i, entry in enumerate(entries):
        entry.write_bytes(b"executable %d" % i)
    # A seal of the first format, the digest only: hashed once, then brought up to date.
    entries[2].with_name(entries[2].name + xla.SEAL).write_text(digest(entries[2])[0])
    time.sleep(0.1)  # past SETTLED_SECONDS: later writes get a later change time
    assert xla.seal(tmp_path) == 2 and xla.check(tmp_path) == 0
    assert sorted(hashed) == sorted(e.name for e in entries)  # two sealed, the old seal verified
    hashed.clear()
    assert xla.check(tmp_path) == 0 and hashed == []  # nothing read: every identity is the same

    time.sleep(0.1)
    data = bytearray(entries[0].read_bytes())
    data[3] ^= 0xFF
    entries[0].write_bytes(bytes(data))  # same inode, same size, flipped in place
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"executable X")
    os.replace(replacement, entries[1])  # same size, renamed over it
    assert xla.check(tmp_path) == 2 and sorted(hashed) == sorted(e.name for e in entries[:2])
    assert [e.exists() for e in entries] == [False, False, True]


def test_a_seal_written_as_its_entry_changes_does_not_vouch_for_it(tmp_path):
    """An entry sealed within SETTLED_SECONDS of its last change is hashed at every check: a
    write in the same tick of the kernel's clock would leave its change time as it was."""
    entry = tmp_path / "xla_compile_cache__0__XLA_CPU_JIT.pb"
    entry.write_bytes(b"executable")
    assert xla.seal(tmp_path) == 1
    assert " " not in entry.with_name(entry.name + xla.SEAL).read_text()  # the digest alone
    entry.write_bytes(b"executab1e")
    assert xla.check(tmp_path) == 1 and not entry.exists()


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
