"""The Ray worker pool: one actor per GPU, faults end as rows, a killed actor loses nothing."""

import logging
import os
import secrets
import shutil
import signal
import tempfile
import time

import pytest

import sweep
from sweep.driver import session as driver
from sweep.driver.pool import LocalPool, batch_size
from sweep.driver.raypool import RayPool
from sweep.spec import parse
from sweep.driver.workers import Placement, WorkerStartError, execute, place

from scripted_engine import ScriptedEngine, act_as_gpu_worker, gpu_sized_engine, population_sizes, ship_to_workers


def make_study(name, lrs=(0.001, 0.01, 0.1, 1.0), seeds=(0, 1), clip=("none", 1.0), timeout=None):
    lines = [f'[study]\nname = "{name}"\nexample = "exploding_gradients"\nepochs = 2\nseeds = {list(seeds)}',
             f"timeout = {timeout}" if timeout else "",
             f"[grid]\nlearning_rate = {list(lrs)}\nclipnorm = {list(clip)}".replace("'", '"')]
    return parse("\n".join(lines), f"{name}.toml")


def keys(trials):
    return sorted(zip(trials.config_id, trials.seed))


GPU_STUDY = ('[study]\nname = "{name}"\nexample = "exploding_gradients"\nepochs = 2\nseeds = ' + str(list(range(10)))
             + '\nengine = "population"\n[grid]\nbatch_size = [32, 128]\nclipnorm = ["none", 0.1, 1.0, 10.0]\n'
             + f"learning_rate = {[round(0.001 * (i + 1), 3) for i in range(30)]}\n")


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray with three CPU slots (the scripted engine mostly sleeps)."""
    import ray

    from sweep.driver.cluster import ray_cluster

    ship_to_workers()
    with ray_cluster(None, num_cpus=3):
        yield ray
    assert not ray.is_initialized()


def test_one_actor_per_declared_gpu_each_with_its_own_device(tmp_path, monkeypatch):
    """Two nodes with two logical GPUs each: four actors, each node's two see devices 0 and 1."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")   # Ray would otherwise write ~/.ray/auth_token
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from sweep.driver.cluster import _reread_ray_settings

    _reread_ray_settings()
    ship_to_workers()
    # A short temp dir of its own (unix socket paths are limited to ~107 bytes); RAY_TMPDIR
    # also moves the address file Cluster writes to <temp>/ray.
    temp_root = tempfile.mkdtemp(prefix="sweep-test-ray-", dir="/tmp")
    temp_dir = os.path.join(temp_root, "ray")
    os.mkdir(temp_dir)
    monkeypatch.setenv("RAY_TMPDIR", temp_root)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2,
                                                            "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False,
                                                            "temp_dir": temp_dir})
    try:
        cluster.add_node(num_cpus=2, num_gpus=2, node_ip_address="127.0.0.1", temp_dir=temp_dir)
        ray.init(address=cluster.address)
        s = make_study("gpus", lrs=(0.001, 0.01), clip=("none",))
        pool = RayPool(s, ScriptedEngine(seconds=0.05))
        summary = driver.run(s, tmp_path, pool=pool)
        infos = [ray.get(slot.actor.describe.remote()) for slot in pool.actors.slots] if pool.actors.slots else []
        assert summary.workers == 4
        # The pool closed its actors; the rows say who trained what.
        t = sweep.load_trials(tmp_path / "gpus")
        assert keys(t) == sorted(r.key for r in s.plan())
        assert all(":gpu" in w for w in t.worker)
        assert infos == []
        # Fresh actors, to look at what each one was given.
        with RayPool(s, ScriptedEngine()) as pool:
            infos = [ray.get(slot.starting) for slot in pool.actors.slots]
        by_node = {}
        for info in infos:
            by_node.setdefault(info["node_id"], []).append(info["cuda_visible_devices"])
            assert info["cuda_visible_devices"] == ",".join(info["gpu_ids"])
        assert len(infos) == 4
        assert sorted(sorted(v) for v in by_node.values()) == [["0", "1"], ["0", "1"]]
    finally:
        ray.shutdown()
        cluster.shutdown()
        monkeypatch.undo()
        _reread_ray_settings()
        for _ in range(20):  # Ray's processes may still be writing as they exit
            shutil.rmtree(temp_root, ignore_errors=True)
            if not os.path.exists(temp_root):
                break
            time.sleep(0.5)


def test_a_ray_worker_on_a_logical_gpu_reports_its_capacity_and_gets_it(tmp_path):
    """The same on Ray: an actor on a logical GPU (the memory query stubbed in the actor's
    process) reports K = 8192 and is sent batches that make each group one population."""
    from sweep.driver.cluster import ray_cluster
    from sweep.engines.population import GPU_MAX_K

    ship_to_workers()
    s = parse(GPU_STUDY.format(name="raygpu"), "raygpu.toml")
    sizes_file = tmp_path / "populations.log"
    with ray_cluster(None, num_cpus=2, num_gpus=1):
        pool = RayPool(s, gpu_sized_engine(str(sizes_file)))
        summary = driver.run(s, tmp_path, pool=pool)
        with RayPool(s, gpu_sized_engine(str(tmp_path / "unused.log"))) as fresh:
            assert fresh.capacity() == GPU_MAX_K
    assert summary.workers == 1 and summary.ran == 2400
    assert population_sizes(sizes_file.read_text().splitlines()) == [1200, 1200]


def test_an_actor_killed_mid_batch_loses_no_run(local_ray, tmp_path):
    s = make_study("killed", lrs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3))
    pool = RayPool(s, ScriptedEngine(seconds=0.3))
    killed = []

    def kill_a_busy_actor(summary, rows):
        if killed:
            return
        busy = [slot for slot in pool.actors.slots if slot.gen is not None and slot.info]
        if busy:
            os.kill(busy[0].info["pid"], signal.SIGKILL)
            killed.extend(slot.info.get("name") for slot in pool.actors.slots)

    driver.run(s, tmp_path, pool=pool, on_batch=kill_a_busy_actor)
    t = sweep.load_trials(tmp_path / "killed")
    assert killed
    assert keys(t) == sorted(r.key for r in s.plan())          # every run once: none lost, none twice
    assert set(t.status) == {"stable"}                          # re-run, not recorded as failures
    assert set(t.worker) - set(killed)                          # a replacement actor did some of them


def test_error_and_timeout_are_rows_and_the_sweep_goes_on(local_ray, tmp_path):
    s = make_study("faults", lrs=(0.001, 0.01, 0.1), seeds=(0,), clip=("none",), timeout=3)
    engine = ScriptedEngine(seconds=0.1, raise_at={0.01}, hang_at={0.1})
    summary = driver.run(s, tmp_path, pool=RayPool(s, engine), batch_runs=3)
    t = sweep.load_trials(tmp_path / "faults").set_index("learning_rate")
    assert keys(t) == sorted(r.key for r in s.plan())
    assert t.loc[0.001, "status"] == "stable"
    assert t.loc[0.01, "status"] == "error"
    assert "scripted failure at learning rate 0.01" in t.loc[0.01, "message"]
    assert t.loc[0.1, "status"] == "timeout"
    assert "timeout of 3 s" in t.loc[0.1, "message"]
    assert summary.counts == {"stable": 1, "error": 1, "timeout": 1}


class FailingEngine:
    name = "failing"

    def train(self, study, runs):
        raise MemoryError("the whole batch failed")


def test_a_batch_that_raises_becomes_error_rows():
    s = make_study("batch", lrs=(0.001, 0.01), seeds=(0,), clip=("none",))
    rows = list(execute(s, s.plan(), FailingEngine(), versions=("tf", "keras")))
    assert [r["status"] for r, _ in rows] == ["error", "error"]
    assert all(r["message"] == "MemoryError: the whole batch failed" for r, _ in rows)


def test_local_pool_trains_in_process(tmp_path):
    s = make_study("local", lrs=(0.01, 1.0), seeds=(0,), clip=("none",))
    summary = driver.run(s, tmp_path, pool=LocalPool(s, ScriptedEngine()))
    assert summary.counts == {"stable": 1, "nan": 1}


def test_workers_are_placed_one_per_gpu_else_one_per_cpu_slot():
    assert place([{"CPU": 4.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}], cpus_per_worker=2) == \
        Placement(3, {"num_gpus": 1, "num_cpus": 1}, None)
    assert place([{"CPU": 8.0}, {"CPU": 3.0}], cpus_per_worker=2) == Placement(5, {"num_cpus": 2, "num_gpus": 0}, 2)
    with pytest.raises(WorkerStartError, match=r"--cpus-per-worker 16: .*\[8.0\]"):
        place([{"CPU": 8.0}], cpus_per_worker=16)


def test_a_batch_shares_the_waiting_runs_among_idle_workers_up_to_the_limit():
    assert [batch_size(n, idle=4, limit=8) for n in (0, 1, 4, 5, 32, 33, 100)] == [1, 1, 1, 2, 8, 8, 8]
    assert batch_size(7, idle=0, limit=8) == 7



def test_a_gpu_sized_worker_trains_each_program_group_as_one_population(tmp_path, monkeypatch):
    """K = 8192 on this worker: the driver's batches fill it, grouped by program key, so each of
    the two 1,200-run groups (batch sizes 32 and 128) is one population, not pieces of 512."""
    from sweep.engines.population import GPU_MAX_K, PopulationEngine, engine as population

    s = parse(GPU_STUDY.format(name="gpu"), "gpu.toml")
    sizes_file = tmp_path / "populations.log"
    act_as_gpu_worker(monkeypatch.setattr)
    handler = logging.FileHandler(sizes_file)
    population.log.addHandler(handler)
    try:
        assert PopulationEngine().capacity(s) == GPU_MAX_K
        summary = driver.run(s, tmp_path, pool=LocalPool(s, "population"))
    finally:
        population.log.removeHandler(handler)
        handler.close()
    assert summary.ran == 2400
    assert population_sizes(sizes_file.read_text().splitlines()) == [1200, 1200]

