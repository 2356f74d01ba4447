"""The benchmark scripts in scripts/ run on their quick sets and do their arithmetic right.
Their timings are never asserted: a timing depends on the machine."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.probes.bench import Measurement, write

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def bench_rows(quick: bool) -> list[dict]:
    """A bench.parquet's rows: one repetition of the mlp set, population 20 s cold and 16 s cached
    against a plain loop of 2 runs in 100 s (speedups 20x and 25x), and the cnn set's, twice as fast."""
    rows = []
    for bench_set, scale in (("mlp", 1.0), ("cnn", 0.5)):
        for m in (Measurement("population", 8, 20.0 * scale, ceiling_fraction=0.10),
                  Measurement("plain_fit", 2, 100.0),
                  Measurement("population_cached", 8, 16.0 * scale, ceiling_fraction=0.125)):
            rows.append({"set": bench_set, "measurement": m.measurement, "repetition": 0, "runs": m.runs,
                         "seconds": m.seconds, "runs_per_s": m.runs_per_s, "ceiling_fraction": m.ceiling_fraction,
                         "quick": quick})
    return rows


def test_step_floor_applies_its_headroom_to_the_bench_figures(tmp_path):
    write(bench_rows(quick=True), tmp_path / "bench.parquet")
    out = script("step_floor.py", "--quick", "--bench", str(tmp_path / "bench.parquet"))
    assert re.search(r"^\s+32\s+8\s+32 \|", out, re.M), out  # the quick set: batch 32, K 8, 32 steps an epoch
    headrooms = [float(h) for h in re.findall(r"(\d+\.\d+)x \(dots \+", out)]
    bounds = re.findall(r"speedup_cached <= (\d+)x, speedup \(cold, compiling as now\) <= (\d+)x, "
                        r"share of the ceiling <= (\d+)%.*; cold compiling nothing <= (\d+)x", out)
    # Three floors: dots + adam, dots + optimizer, and the latter with the activations on top.
    assert len(headrooms) == len(bounds) == 3, out
    assert headrooms[1] > headrooms[2], out
    for h, (cached, cold, share, cold_free) in zip(headrooms, bounds):
        assert int(cached) == pytest.approx(25 * h, abs=0.5 + 25 * 0.005)
        # Cold: the 4 s of compiling stay, the 16 s of training shrink by the headroom.
        assert int(cold) == pytest.approx(20 * 20 / (4 + 16 / h), abs=0.5 + 20 * 0.005)
        assert int(cold_free) == pytest.approx(20 * 20 / (16 / h), abs=0.5 + 20 * 0.005)
        assert int(share) == pytest.approx(12.5 * h, abs=0.5 + 12.5 * 0.005)


def test_step_floor_reads_only_the_figures_of_its_own_set(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_floor", ROOT / "scripts" / "step_floor.py")
    step_floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_floor)
    write(bench_rows(quick=False), tmp_path / "bench.parquet")  # the full set's figures only
    assert step_floor.bench_figures(str(tmp_path / "bench.parquet"), quick=True) is None
    assert step_floor.bench_figures(str(tmp_path / "missing.parquet"), quick=False) is None
    full = step_floor.bench_figures(str(tmp_path / "bench.parquet"), quick=False)
    assert full["population_cached"]["speedup"] == pytest.approx(25.0)
    assert full["population"]["speedup"] == pytest.approx(20.0)  # the mlp set's, not the cnn set's 40x
    # A file of schema_version 2, from before there were sets, holds the mlp set's rows.
    import pandas as pd

    pd.DataFrame([r for r in bench_rows(quick=False) if r.pop("set") == "mlp"]).to_parquet(tmp_path / "v2.parquet")
    assert step_floor.bench_figures(str(tmp_path / "v2.parquet"), quick=False)["population"]["speedup"] == \
        pytest.approx(20.0)


def test_bench_sharpness_runs_a_pair():
    out = script("bench_sharpness.py", "--quick", "--pairs", "1")
    assert re.search(r"^pair 0: off [\d.]+ s .* on [\d.]+ s", out, re.M), out
    assert re.search(r"extra time per run with the telemetry: \+-?\d+ % \(median of 1 pairs\)", out), out
