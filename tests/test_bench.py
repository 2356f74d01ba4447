"""`sweep bench --quick` end to end: every measurement is a row of bench.parquet, the last line
is the speedup. Structure only: a benchmark's figures are never asserted."""

import re

import pyarrow.parquet as pq
from click.testing import CliRunner

from sweep.cli import main


def test_bench_quick_writes_every_measurement(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--quick", "--results", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"speedup: \d+\.\dx", result.output.strip().splitlines()[-1])
    table = pq.read_table(tmp_path / "bench.parquet")
    assert table.schema.metadata[b"schema_version"] == b"1"
    rows = {r["measurement"]: r for r in table.to_pylist()}
    assert set(rows) == {"matmul_ceiling", "population", "plain_fit", "keras_pool"}
    assert rows["population"]["runs"] == 8 and rows["plain_fit"]["runs"] >= 2
    assert rows["matmul_ceiling"]["gflop_per_s"] > 0 and 0 < rows["population"]["ceiling_fraction"] < 1
