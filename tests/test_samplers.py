"""Samplers under the driver: grid exactly once however many runs are in flight; tpe through Optuna."""

import random
from collections import Counter

import sweep
from sweep.driver import session as driver
from sweep.driver.optuna_study import OptunaRecord
from sweep.driver.raypool import RayPool
from sweep.driver.samplers import GridSampler
from sweep.spec import parse
from sweep.driver.workers import execute

from scripted_engine import ScriptedEngine, ship_to_workers

GRID = '''[study]
name = "{name}"
example = "exploding_gradients"
epochs = 2
seeds = [0, 1, 2]
sampler = "{sampler}"
{extra}
[grid]
learning_rate = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
clipnorm = ["none", 1.0]
'''


def make_study(name, sampler="grid", extra=""):
    return parse(GRID.format(name=name, sampler=sampler, extra=extra), f"{name}.toml")


class ShuffledPool:
    """Holds up to `slots` batches and finishes a random one per `wait()`: many runs in flight,
    finishing out of order, while the driver keeps asking the sampler."""

    def __init__(self, study, slots=4, seed=0):
        self.study, self.slots, self.held, self.rng = study, slots, [], random.Random(seed)
        self.engine = ScriptedEngine()
        self.submitted = Counter()

    def idle(self):
        return self.slots - len(self.held)

    def capacity(self):
        return 0

    def submit(self, runs):
        self.submitted.update(r.key for r in runs)
        self.held.append(list(runs))

    def wait(self):
        if not self.held:
            return []
        batch = self.held.pop(self.rng.randrange(len(self.held)))
        return list(execute(self.study, batch, self.engine, versions=("tf", "keras")))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class GreedyGrid(GridSampler):
    """Proposes everything not done, in flight or not, and counts its calls."""

    calls = 0

    def propose(self, study, done):
        GreedyGrid.calls += 1
        return super().propose(study, done)


def test_grid_is_exactly_once_with_many_runs_in_flight(tmp_path, monkeypatch):
    s = make_study("inflight")
    pool = ShuffledPool(s, slots=5)
    monkeypatch.setattr(driver, "get_sampler", lambda name, ostudy=None: GreedyGrid())
    driver.run(s, tmp_path, pool=pool, batch_runs=2)
    t = sweep.load_trials(tmp_path / "inflight")
    plan = s.plan()
    assert max(pool.submitted.values()) == 1 and len(pool.submitted) == len(plan)
    assert sorted(zip(t.config_id, t.seed)) == sorted(r.key for r in plan)
    assert sorted(t.trial) == list(range(len(plan)))


def test_grid_is_exactly_once_on_ray_workers(tmp_path):
    from sweep.driver.cluster import ray_cluster

    ship_to_workers()
    s = make_study("rayonce")
    with ray_cluster(None, num_cpus=3):
        driver.run(s, tmp_path, pool=RayPool(s, ScriptedEngine(seconds=0.02, jitter=0.1)), batch_runs=1)
    t = sweep.load_trials(tmp_path / "rayonce")
    assert sorted(zip(t.config_id, t.seed)) == sorted(r.key for r in s.plan())
    # Optuna's copy: one finished trial per configuration, holding the same plan indices.
    record = OptunaRecord(tmp_path / "rayonce", s)
    numbers = sorted(i for tr in record.ostudy.get_trials() for i in tr.user_attrs["trials"])
    assert numbers == sorted(t.trial)


def test_tpe_asks_configurations_and_marks_unstable_ones_infeasible(tmp_path):
    from optuna.trial import TrialState

    s = make_study("tpe", sampler="tpe", extra="n_trials = 6")
    pool = ShuffledPool(s, slots=2)
    summary = driver.run(s, tmp_path, pool=pool)
    t = sweep.load_trials(tmp_path / "tpe")
    assert summary.planned == 6 * 3
    # Every asked configuration ran on every seed, once.
    assert all(sorted(seeds) == [0, 1, 2] for seeds in t.groupby("config_id").seed.apply(list))
    assert max(pool.submitted.values()) == 1
    ostudy = OptunaRecord(tmp_path / "tpe", s).ostudy
    configs = [tr for tr in ostudy.get_trials() if "config_id" in tr.user_attrs]
    assert {tr.user_attrs["config_id"] for tr in configs} == set(t.config_id)
    # n_trials counts distinct configurations; a re-suggested one is told from its rows.
    assert t.config_id.nunique() == 6 and all(tr.state == TrialState.COMPLETE for tr in configs)
    for tr in configs:
        unstable = tr.params["learning_rate"] >= 1.0          # the scripted engine's NaN region
        assert tr.constraints == {"0": 1.0 if unstable else 0.0}
        assert (tr.value == float("inf")) == unstable
    feasible = [tr for tr in configs if tr.constraints["0"] <= 0]
    assert ostudy.best_trial in feasible


def test_tpe_resumes_a_configuration_left_running(tmp_path):
    s = make_study("tperesume", sampler="tpe", extra="n_trials = 3")
    driver.run(s, tmp_path, pool=ShuffledPool(s), max_trials=4)   # stops inside the 2nd configuration
    t = sweep.load_trials(tmp_path / "tperesume")
    assert len(t) == 4
    driver.run(s, tmp_path, pool=ShuffledPool(s))
    t = sweep.load_trials(tmp_path / "tperesume")
    assert len(t) == 9 and t.groupby("config_id").size().eq(3).all()
    ostudy = OptunaRecord(tmp_path / "tperesume", s).ostudy
    finished = {tr.user_attrs["config_id"] for tr in ostudy.get_trials() if tr.state.is_finished()
                and "config_id" in tr.user_attrs}
    assert finished == set(t.config_id)
