"""`sweep bench --quick` end to end: every measurement is a row of bench.parquet, the last line
is the speedup. Structure only: a benchmark's figures are never asserted."""

import re

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sweep.cli import main


def test_bench_quick_writes_every_measurement(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--quick", "--results", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    *_, cached_line, last = result.output.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\dx", last)
    assert re.fullmatch(r"speedup_cached: \d+\.\dx", cached_line)
    table = pq.read_table(tmp_path / "bench.parquet")
    assert table.schema.metadata[b"schema_version"] == b"2"
    rows = {r["measurement"]: r for r in table.to_pylist()}
    assert set(rows) == {"matmul_ceiling", "population", "plain_fit", "population_cached", "keras_pool"}
    assert table.num_rows == 5 and {r["repetition"] for r in table.to_pylist()} == {0}  # --quick: one pair
    assert rows["population"]["runs"] == rows["population_cached"]["runs"] == 8 and rows["plain_fit"]["runs"] >= 2
    assert "empty compile cache" in rows["population"]["detail"]
    assert "filled by the pass before" in rows["population_cached"]["detail"]
    assert rows["matmul_ceiling"]["gflop_per_s"] > 0 and 0 < rows["population"]["ceiling_fraction"] < 1


def test_speedup_is_the_median_of_back_to_back_pairs():
    from sweep.probes.bench import Measurement, pair_speedups, speedup

    # Pair 2's plain loop ran in a slow phase of the machine: its own population pass shares it.
    pop = [Measurement("population", 792, s, repetition=r) for r, s in enumerate([20.0, 30.0, 18.0])]
    fit = [Measurement("plain_fit", 12, s, repetition=r) for r, s in enumerate([30.0, 45.0, 30.0])]
    interleaved = [m for pair in zip(pop, fit) for m in pair]
    assert pair_speedups(interleaved) == pytest.approx([99.0, 99.0, 110.0])
    assert speedup(interleaved) == pytest.approx(99.0)
    assert speedup(fit + pop[::-1]) == pytest.approx(99.0)  # paired by repetition, not by position
