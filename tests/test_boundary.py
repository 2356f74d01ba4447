"""The boundary sampler: finds each setting's edge with few runs, stateless, resumable."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

import sweep
from sweep.results import maps
from sweep.driver import session as driver
from sweep.driver.samplers.boundary import BoundarySampler, bracket, next_probe
from sweep.driver.pool import LocalPool
from sweep.driver.samplers import get_sampler
from sweep.spec import SETTING_AXES, load, parse

ROOT = Path(__file__).resolve().parents[1]
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]

SYNTHETIC = parse(f"""
[study]
name = "synthetic"
example = "exploding_gradients"
seeds = [0, 1, 2]
sampler = "boundary"
[grid]
learning_rate = {LRS}
clipnorm = ["none", 0.1, 1.0]
batch_size = [16, 32, 128]
activation = ["relu", "tanh"]
""", "synthetic.toml")


def synthetic_status(config, seed: int) -> str:
    """A landscape like the measured one: stalled below 1e-3, stable up to an edge that grows
    with batch size and clipping, diverged above; seed 2 flickers right at the edge."""
    edge = 0.01 * {16: 1, 32: 3, 128: 10}[config.batch_size] * (3 if config.clipnorm == 0.1 else 1)
    if config.activation == "tanh" and config.batch_size == 16:
        return "stalled"  # a setting where nothing is stable
    if config.learning_rate < 1e-3:
        return "stalled"
    if config.learning_rate < edge:
        return "stable"
    return "stable" if seed == 2 and config.learning_rate < edge * 3.5 else "diverged"


def drive(study, done=None, take=None):
    """Propose and 'train' until the sampler is done; `take` truncates each proposal (a crash)."""
    done = {} if done is None else done
    sampler = BoundarySampler()
    while runs := sampler.propose(study, done):
        for run in runs[:take]:
            assert run.key not in done
            done[run.key] = {"trial": run.trial, "status": synthetic_status(run.config, run.seed),
                             "learning_rate": run.config.learning_rate}
    return done


def dense_edges(study) -> dict:
    edges = {}
    for config in study.configs():
        cells = edges.setdefault(config.setting(), [])
        statuses = [synthetic_status(config, s) for s in study.seeds]
        cells.append({"learning_rate": config.learning_rate, "n_seeds": len(statuses),
                      "n_stable": statuses.count("stable"), "modal_status": statuses[0]})
    return {k: maps.edge(sorted(v, key=lambda c: c["learning_rate"])) for k, v in edges.items()}


def probed_edges(study, done) -> dict:
    by_setting: dict = {}
    configs = {c.config_id: c for c in study.configs()}
    for (config_id, _), row in done.items():
        c = configs[config_id]
        by_setting.setdefault(c.setting(), {}).setdefault(c.learning_rate, []).append(row["status"])
    out = {}
    for key, per_lr in by_setting.items():
        cells = [{"learning_rate": lr, "n_seeds": len(s), "n_stable": s.count("stable"), "modal_status": s[0]}
                 for lr, s in sorted(per_lr.items())]
        out[key] = maps.edge(cells)
    return out


def test_finds_every_synthetic_edge_exactly_with_few_runs():
    done = drive(SYNTHETIC)
    dense, found = dense_edges(SYNTHETIC), probed_edges(SYNTHETIC, done)
    for key, edge in dense.items():
        assert found[key]["lr_unstable_min"] == edge["lr_unstable_min"], key
        assert found[key]["lr_stable_max"] == edge["lr_stable_max"], key
    print(f"synthetic: boundary {len(done)} runs, dense {len(SYNTHETIC.plan())}")
    assert len(done) <= 0.4 * len(SYNTHETIC.plan())
    assert sorted(r["trial"] for r in done.values()) == list(range(len(done)))


def test_is_stateless_and_resumes_to_the_same_edges():
    def edges(done):
        return {k: (e["lr_stable_max"], e["lr_unstable_min"]) for k, e in probed_edges(SYNTHETIC, done).items()}

    partial = drive(SYNTHETIC, take=2)  # every proposal cut short, as a crash would
    assert edges(partial) == edges(drive(SYNTHETIC))
    done = dict(list(drive(SYNTHETIC).items())[:40])
    assert BoundarySampler().propose(SYNTHETIC, done) == BoundarySampler().propose(SYNTHETIC, dict(done))
    assert isinstance(get_sampler("boundary"), BoundarySampler)


def test_resolution_stops_bisection_early():
    assert next_probe({2: True, 8: False}, LRS, (2, None)) is not None
    assert next_probe({2: True, 8: False}, LRS, (2, None), resolution=1000.0) is None
    assert bracket({1: False, 3: True, 4: True, 6: False}) == (4, 6)


QUICK = """
[study]
name = "eg-dense"
example = "categorical_clipnorm"
epochs = 3
seeds = [0, 1, 2]
[grid]
learning_rate = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
clipnorm = ["none", 1.0]
batch_size = [128]
"""


def _step_index(lr):
    return len(LRS) if lr is None or lr != lr else LRS.index(lr)


@pytest.mark.slow
def test_boundary_sampler_finds_the_dense_grid_edges_with_at_most_40_percent_of_its_runs(request, tmp_path):
    """On a real model (quick: categorical_clipnorm, 3 epochs, 2 settings, since exploding_gradients'
    random labels cannot be memorised below the best constant's loss in 3 epochs and leave no edge
    to find; full: studies/exploding_gradients.toml as is), every setting's first non-stable
    learning rate is within one grid step of the dense grid's."""
    if request.config.getoption("--quick"):
        dense = parse(QUICK, "quick.toml")
    else:
        dense = dataclasses.replace(load(ROOT / "studies" / "exploding_gradients.toml"), name="eg-dense")
    assert sorted(dense.grid["learning_rate"]) == LRS
    boundary = dataclasses.replace(dense, name="eg-boundary", sampler="boundary")
    driver.run(dense, tmp_path, pool=LocalPool(dense, driver.engine_for(dense, None)))
    driver.run(boundary, tmp_path, pool=LocalPool(boundary, driver.engine_for(boundary, None)))
    d, b = sweep.load_boundary(tmp_path / "eg-dense"), sweep.load_boundary(tmp_path / "eg-boundary")
    n_dense, n_boundary = int(d["n_runs"].sum()), int(b["n_runs"].sum())
    print(f"\n{dense.example} ({'quick' if request.config.getoption('--quick') else 'full'}): "
          f"dense grid {n_dense} runs, boundary sampler {n_boundary} runs ({n_boundary / n_dense:.0%})")
    for df in (d, b):  # absent clipping is null; merge on a plain label instead
        df["setting"] = [repr(tuple(None if pd.isna(r[a]) else r[a] for a in SETTING_AXES)) for _, r in df.iterrows()]
    merged = d.merge(b, on="setting", suffixes=("_dense", "_boundary"))
    assert len(merged) == len(d) == len(b)
    for _, r in merged.iterrows():
        print("  ", r["setting"],
              "dense edge", (r["lr_stable_max_dense"], r["lr_unstable_min_dense"]),
              "boundary edge", (r["lr_stable_max_boundary"], r["lr_unstable_min_boundary"]))
        off = abs(_step_index(r["lr_unstable_min_dense"]) - _step_index(r["lr_unstable_min_boundary"]))
        assert off <= 1, r
    assert n_boundary <= 0.4 * n_dense
