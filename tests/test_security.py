"""Security defaults: a private local Ray listens on 127.0.0.1 only; nothing in a study file runs
except an explicit `module:function` builder; nothing is unpickled, and nothing from a stored
study file is imported, when results are read; study names cannot leave the results directory."""

import dataclasses
import os
import pickle
import socket
import struct
import sys
from pathlib import Path

import pytest

import fault_cases
import sweep
from sweep.driver import session as driver
from sweep.spec import SpecError, parse


# --- the private Ray binds to the loopback interface ------------------------------------
def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def listening_addresses(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, address) of every listening TCP socket (IPv4 and IPv6) the processes hold."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_ip = local.split(":")[0]
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
            found.append((inodes[inode], socket.inet_ntop(family, raw)))
    return found


def test_local_ray_listens_on_loopback_only():
    import ray

    from sweep.driver.cluster import ray_cluster

    with ray_cluster(None, num_cpus=1) as info:
        assert info.private and info.address.startswith("127.0.0.1:")
        ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
        addresses = listening_addresses(descendants(os.getpid()) | {os.getpid()})
    assert addresses, "no listening socket found: the check would prove nothing"
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    assert {a for _, a in addresses} <= loopback, addresses


# --- nothing in a study file runs but an explicit builder --------------------------------
@pytest.fixture
def booby_trapped_module(tmp_path, monkeypatch):
    """A module that leaves a mark when imported, importable from sys.path."""
    mark = tmp_path / "imported"
    (tmp_path / "trap_module.py").write_text(
        f"open({str(mark)!r}, 'w').write('imported')\ndef build(activation, seed):\n    raise SystemExit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mark
    sys.modules.pop("trap_module", None)


@pytest.mark.parametrize("text", [
    '[study]\nname = "trap_module:build"\nexample = "exploding_gradients"\n',
    '[study]\nname = "x"\nexample = "exploding_gradients"\nsampler = "trap_module:build"\n',
    '[study]\nname = "x"\nexample = "exploding_gradients"\nengine = "trap_module:build"\n',
    '[study]\nname = "x"\nexample = "exploding_gradients"\n[grid]\nactivation = ["trap_module:build"]\n',
    '[study]\nname = "x"\nexample = "exploding_gradients"\n[grid]\nloss = ["trap_module:build"]\n',
    '[study]\nname = "x"\nexample = "__import__(\'trap_module\')"\n',
    '[study]\nname = "x"\nexample = "exploding_gradients"\n[verdict]\nstall_ratio = "__import__(\'trap_module\')"\n',
])
def test_only_the_example_field_imports_code(text, booby_trapped_module):
    with pytest.raises(SpecError):
        parse(text, "trap.toml")
    assert not booby_trapped_module.exists()


def test_an_explicit_builder_is_imported(booby_trapped_module):
    """The documented exception: `example = "module:function"` runs the user's module."""
    parse('[study]\nname = "x"\nexample = "trap_module:build"\n', "trap.toml")
    assert booby_trapped_module.exists()


def test_reading_results_imports_nothing_the_stored_study_names(booby_trapped_module, tmp_path):
    """`sweep map`, `sweep show` and `sweep repro` read a stored study file; a builder it names
    is not imported (results may come from someone else)."""
    import json

    fault_cases.recorded_study(tmp_path)
    study_dir = tmp_path / "crash"
    meta = json.loads((study_dir / "study.json").read_text())
    meta["study_toml"] = meta["study_toml"].replace('"exploding_gradients"', '"trap_module:build"')
    (study_dir / "study.json").write_text(json.dumps(meta))
    for args in (["map", str(study_dir)], ["show", str(study_dir)], ["repro", str(study_dir), "0"]):
        r = fault_cases.cli(args, tmp_path)
        assert r.exit_code == 0, (args, r.output, r.exception)
    assert not booby_trapped_module.exists()


# --- nothing is unpickled from the results directory -------------------------------------
class Trap:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sweep-unpickled-marker",))


def test_results_are_read_without_unpickling(tmp_path):
    """A whole session and every reader, watched by an audit hook: no unpickler resolves a
    global (every malicious pickle must), and every file opened under the results directory
    is Parquet, JSON, the journal, the lock or a temp/probe file. A planted pickle stays inert."""
    watching = {"on": False}
    seen: dict[str, list] = {"find_class": [], "open": []}

    def hook(event, args):
        if not watching["on"]:
            return
        if event == "pickle.find_class":
            seen["find_class"].append(args)
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.startswith(str(tmp_path)):
                seen["open"].append(path)

    sys.addaudithook(hook)  # hooks cannot be removed; this one is idle outside the test
    marker = Path("/tmp/sweep-unpickled-marker")
    marker.unlink(missing_ok=True)
    fault_cases.recorded_study(tmp_path)
    study_dir = tmp_path / "crash"
    for name in ("study.pkl", "state.pickle", "cache.joblib"):
        (study_dir / name).write_bytes(pickle.dumps(Trap()))
    watching["on"] = True
    try:
        fault_cases.recorded_study(tmp_path)  # a resumed session reads everything it reads at start
        sweep.load_trials(study_dir), sweep.load_curves(study_dir)
        sweep.load_map(study_dir), sweep.load_boundary(study_dir)
        for args in (["map", str(study_dir)], ["show", str(study_dir)], ["repro", str(study_dir), "0"]):
            assert fault_cases.cli(args, tmp_path).exit_code == 0
    finally:
        watching["on"] = False
    assert not marker.exists()
    assert seen["find_class"] == []
    kinds = (".parquet", ".json", ".journal", ".lock", ".tmp", ".toml")
    odd = [p for p in seen["open"] if not p.endswith(kinds) and ".write-probe-" not in p and not os.path.isdir(p)]
    assert not odd, odd
    # The hook did watch the reads (Parquet files are opened by Arrow's C++, which raises no
    # Python audit event and has no unpickler; the journal and study.json are opened by Python).
    assert any(p.endswith(".journal") for p in seen["open"]) and any(p.endswith(".json") for p in seen["open"])


# --- study names stay inside results/ ----------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", "..", ".", "", "a\\b", "~root", "a\u2215b",
                                  "\u2024\u2024", "nul\x00", " lead", "x" * 101, "-rf"])
def test_names_that_leave_results_are_refused(name):
    import json

    with pytest.raises(SpecError) as info:
        parse(f'[study]\nname = {json.dumps(name)}\nexample = "exploding_gradients"\n', "n.toml")
    assert [f for f, _ in info.value.problems] == ["study.name"]


def test_a_study_made_in_code_cannot_leave_results(tmp_path):
    good = parse('[study]\nname = "ok"\nexample = "exploding_gradients"\n', "n.toml")
    results = tmp_path / "results"
    for name in ("../escape", "/tmp/elsewhere", "a/../../b", ".."):
        with pytest.raises(ValueError, match="not a plain file name"):
            driver.prepare_dir(dataclasses.replace(good, name=name), results)
    assert not (tmp_path / "escape").exists() and not results.exists()
    assert driver.prepare_dir(good, results) == results / "ok"
