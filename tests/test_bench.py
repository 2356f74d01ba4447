"""`sweep bench --quick` end to end: every measurement is a row of bench.parquet, the last line
is the speedup. Structure only: a benchmark's figures are never asserted."""

import re

import pyarrow as pa
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
    assert table.schema.metadata[b"schema_version"] == b"3"
    rows = {r["measurement"]: r for r in table.to_pylist()}
    assert set(rows) == {"matmul_ceiling", "population", "plain_fit", "population_cached", "keras_pool"}
    assert table.num_rows == 5 and {r["repetition"] for r in table.to_pylist()} == {0}  # --quick: one pair
    assert {r["set"] for r in table.to_pylist()} == {"mlp"}  # the default set
    assert rows["population"]["engine"] == rows["population_cached"]["engine"] == "population"
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


def v2_file(path):
    """A bench.parquet as schema_version 2 wrote it, before there were sets: the mlp set's rows."""
    rows = [{"measurement": m, "repetition": 0, "runs": n, "seconds": 10.0, "quick": False}
            for m, n in (("population", 792), ("plain_fit", 12))]
    table = pa.Table.from_pylist(rows).replace_schema_metadata({"schema_version": "2"})
    pq.write_table(table, path)


def test_bench_quick_cnn_set_runs_the_user_builder_on_the_population_engine(tmp_path):
    """One user-builder set end to end (the smallest: 2 runs, 2 epochs); the rows of a file
    written before there were sets are kept, as the mlp set's."""
    v2_file(tmp_path / "bench.parquet")
    result = CliRunner().invoke(main, ["bench", "--quick", "--set", "cnn", "--results", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "--set cnn: sweep.probes.bench_models:cnn" in result.output
    assert re.fullmatch(r"speedup: \d+\.\dx", result.output.strip().splitlines()[-1])
    table = pq.read_table(tmp_path / "bench.parquet")
    assert table.schema.metadata[b"schema_version"] == b"3"
    old = [r for r in table.to_pylist() if r["set"] == "mlp"]
    assert sorted(r["measurement"] for r in old) == ["plain_fit", "population"] and old[0]["engine"] is None
    rows = {r["measurement"]: r for r in table.to_pylist() if r["set"] == "cnn"}
    assert set(rows) == {"matmul_ceiling", "population", "plain_fit", "population_cached"}  # no pool but for mlp
    assert table.num_rows == 2 + 4
    assert rows["population"]["engine"] == rows["population_cached"]["engine"] == "population"
    assert rows["plain_fit"]["engine"] == "model.fit"
    assert rows["population"]["runs"] == rows["population_cached"]["runs"] == rows["plain_fit"]["runs"] == 2
    assert rows["population"]["epochs"] == 2 and rows["population"]["quick"]
    assert 0 < rows["population"]["ceiling_fraction"] < 1  # the convolution's FLOPs are counted


def test_bench_refuses_a_file_it_cannot_extend_before_measuring(tmp_path):
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({"schema_version": "9"}), tmp_path / "bench.parquet")
    result = CliRunner().invoke(main, ["bench", "--quick", "--set", "rnn", "--results", str(tmp_path)])
    assert result.exit_code == 2
    assert "schema_version 9, this sweep reads 2 and 3" in result.output
    assert pq.read_table(tmp_path / "bench.parquet").num_rows == 1  # left as it was


def test_bench_sets_and_lines_of_several():
    from dataclasses import replace

    from sweep.probes.bench import SETS, Measurement, bench_study, speedup_lines

    for quick in (False, True):  # the same runs, by the catalog and by a user builder (whose loss is its own)
        mlp, user = bench_study(quick, "mlp"), bench_study(quick, "user_mlp")
        assert [(replace(r.config, loss="compiled"), r.seed) for r in mlp.plan()] == \
            [(r.config, r.seed) for r in user.plan()]
        assert mlp.epochs == user.epochs
    assert bench_study(False, "user_mlp").example == SETS["user_mlp"].example
    ms = []
    for s, pop in (("mlp", 20.0), ("user_mlp", 25.0)):
        ms += [Measurement("population", 8, pop, set=s), Measurement("plain_fit", 2, 100.0, set=s),
               Measurement("population_cached", 8, pop / 2, set=s)]
    lines = speedup_lines(ms)
    assert "mlp: speedup: 20.0x" in lines and "user_mlp: speedup: 16.0x" in lines
    assert lines[-2:] == ["user_mlp / mlp seconds, population: 1.25x; median 1.25x",
                          "user_mlp / mlp seconds, population_cached: 1.25x; median 1.25x"]
