"""`sweep bench`: the engines and the plain Keras loop timed on the same configurations, in one run.

The configurations are `exploding_gradients`' grid (tf-optimizer-error.md,
example 1: learning rate x clipnorm x batch size x activation) with seeds 0-2,
20 epochs: the plan of studies/exploding_gradients.toml when this benchmark
was written, fixed here (`GRID`) so that figures stay comparable. Measured in
this order, in this process unless said otherwise:

1. `matmul_ceiling`: the best GFLOP/s of a 2048 x 2048 float32 matmul.
2. `population`: the population engine over the whole set, cold: in a fresh
   process with an empty compile cache, so that every Keras build and every
   XLA compilation is in it (TensorFlow's import is not: the plain loop does
   not pay for it either).
3. `plain_fit`: a fixed sample of the set trained the way the documents train,
   `model.compile(...)` and `model.fit(x, y, epochs, batch_size, verbose=0)`,
   one after the other (one warm-up fit before the first repetition, untimed,
   so that TensorFlow's one-time start is not charged to the first run).
4. `population_cached`: step 2 again in another fresh process, with the
   compile cache step 2 filled (`sweep.engines.xla`): the Keras builds and the tracing
   again, the XLA programs loaded instead of compiled. What a second sweep,
   a resume or a test run of the same examples pays.
5. Steps 2-4 again, REPEATS times in all (once with --quick), each time with
   a new empty cache. The speed of a virtual machine drifts by tens of
   percent over minutes, so one timing of each side, a minute apart, gives a
   ratio that moves with the drift; passes measured back to back share it.
   `speedup` is the median over the repetitions of population runs/s over
   plain-fit runs/s, `speedup_cached` the same of population_cached.
6. `keras_pool`: the same sample on the keras engine through the worker pool
   (`sweep.driver.raypool.RayPool` on a private local Ray, one actor per CPU); one run
   per actor first, untimed, so that actor start-up is not charged.

Every measurement is a row of `results/bench.parquet` (written atomically,
with `schema_version` in its metadata; `repetition` numbers the pairs). The
last two lines printed are `speedup_cached: N.Nx` and `speedup: N.Nx`::

    sweep bench --quick                                   # doctest: +SKIP
"""

from __future__ import annotations

import resource
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
from rich.table import Table

from .._version import __version__
from ..catalog import EXAMPLES
from ..spec import Run, Study, parse

EXAMPLE = "exploding_gradients"
GRID = {
    "learning_rate": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    "clipnorm": ["none", 0.1, 1.0, 10.0],
    "batch_size": [16, 32, 128],
    "activation": ["relu", "tanh"],
}
QUICK_GRID = {"learning_rate": [0.001, 0.01, 0.1, 1.0], "clipnorm": ["none", 1.0], "batch_size": [32],
              "activation": ["relu"]}
SCHEMA_VERSION = "2"
REPEATS = 3
# The measurements taken back to back in each repetition; population and population_cached
# over plain_fit are the two speedups.
PAIRED = ("population", "plain_fit", "population_cached")

COLUMNS = pa.schema([
    ("measurement", pa.string()),
    ("repetition", pa.int64()),
    ("runs", pa.int64()),
    ("seconds", pa.float64()),
    ("runs_per_s", pa.float64()),
    ("gflop_per_s", pa.float64()),
    ("ceiling_fraction", pa.float64()),
    ("peak_rss_mib", pa.float64()),
    ("epochs", pa.int64()),
    ("quick", pa.bool_()),
    ("detail", pa.string()),
    ("cpus", pa.int64()),
    ("gpus", pa.int64()),
    ("host", pa.string()),
    ("tf_version", pa.string()),
    ("keras_version", pa.string()),
    ("sweep_version", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class Measurement:
    measurement: str
    runs: int
    seconds: float
    gflop_per_s: float | None = None
    ceiling_fraction: float | None = None
    peak_rss_mib: float | None = None
    detail: str = ""
    repetition: int = 0

    @property
    def runs_per_s(self) -> float | None:
        return self.runs / self.seconds if self.runs and self.seconds > 0 else None


def bench_study(quick: bool) -> Study:
    """The set of configurations: the example's grid x seeds 0-2, 20 epochs; --quick: 8 of them,
    3 epochs."""
    grid = QUICK_GRID if quick else GRID
    lines = [f"{axis} = {values!r}".replace("'", '"') for axis, values in grid.items()]
    text = (f'[study]\nname = "bench"\nexample = "{EXAMPLE}"\nepochs = {3 if quick else 20}\n'
            f'seeds = {[0] if quick else [0, 1, 2]}\n[grid]\n' + "\n".join(lines))
    return parse(text, "<bench>")


def sample(runs: list[Run], k: int) -> list[Run]:
    """k runs spread evenly over the plan (so every batch size and activation is in it)."""
    idx = np.linspace(0, len(runs) - 1, k).round().astype(int)
    return [runs[i] for i in sorted(set(idx))]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_ceiling(size: int = 2048, repeats: int = 5) -> Measurement:
    import tensorflow as tf

    a = tf.random.stateless_normal([size, size], seed=[0, 0])
    mm = tf.function(lambda a: tf.matmul(a, a))
    mm(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            out = mm(a)
        out.numpy()
        best = min(best, (time.perf_counter() - t0) / 5)
    return Measurement("matmul_ceiling", 0, best, gflop_per_s=2 * size ** 3 / best / 1e9,
                       detail=f"{size}x{size} float32 tf.matmul, best of {repeats}x5")


def training_flops(study: Study, outcomes) -> float:
    """Useful floating-point work: every trained sample's forward and backward matmuls, and l0."""
    from ..engines.population import initial_model

    total = 0.0
    for run, o in outcomes:
        arch, _ = initial_model(study, run.config, run.seed)
        n, b = 1000, run.config.batch_size
        per_epoch = -(-n // b)
        steps = len(o.grad_norms)
        samples = (steps // per_epoch) * n + (steps % per_epoch) * b
        total += samples * arch.flops_per_sample() + n * sum(2 * i * j for i, j in arch.shapes)
    return total


def population(study: Study, runs: list[Run], ceiling: float, name: str = "population") -> Measurement:
    """One pass of the population engine over `runs`, in this process as it is."""
    from ..engines.population import CPU_MAX_K, PopulationEngine, concurrent_populations
    from ..engines.xla import active

    engine = PopulationEngine()
    t0 = time.perf_counter()
    outcomes = engine.train(study, runs)
    seconds = time.perf_counter() - t0
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"population engine: {len(failed)} runs failed, first: {failed[0]!r}")
    gflops = training_flops(study, list(zip(runs, outcomes))) / seconds / 1e9
    cache = "compile cache filled by the pass before" if name.endswith("cached") else "empty compile cache"
    return Measurement(name, len(runs), seconds, gflop_per_s=gflops, ceiling_fraction=gflops / ceiling,
                       peak_rss_mib=peak_rss_mib(),
                       detail=f"whole set in a fresh process, {cache if active() else 'compile cache off'}; "
                              f"K <= {CPU_MAX_K}, {concurrent_populations()} populations at a time")


def population_process(quick: bool, ceiling: float, cache: str, name: str) -> Measurement:
    """`population` in a fresh Python process whose compile cache is `cache`."""
    from ..engines.xla import in_fresh_process

    code = ("import json, sys; from sweep.probes.bench import _child; "
            f"print(json.dumps(_child({quick!r}, {ceiling!r}, {name!r})))")
    try:
        return Measurement(**in_fresh_process(code, cache))
    except RuntimeError as exc:
        raise RuntimeError(f"{name} pass failed: {exc}") from None


def _child(quick: bool, ceiling: float, name: str) -> dict:
    from dataclasses import asdict

    from ..engines.runtime import import_tensorflow

    import_tensorflow()
    study = bench_study(quick)
    return asdict(population(study, study.plan(), ceiling, name))


def plain_fit(study: Study, runs: list[Run], warm_up: bool = True) -> Measurement:
    """The documents' way: build, compile, fit, one run after another."""
    import keras

    from ..engines import example_data, make_optimizer

    ex = EXAMPLES[EXAMPLE]
    x, y = example_data(EXAMPLE, study.data_seed, "none")

    def fit(run: Run, epochs: int) -> None:
        keras.utils.set_random_seed(run.seed)
        model = ex.build(run.config.activation, x.shape[1])
        model.compile(optimizer=make_optimizer(run.config), loss="binary_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=run.config.batch_size, verbose=0)

    if warm_up:
        fit(runs[0], 1)  # untimed
    t0 = time.perf_counter()
    for run in runs:
        fit(run, study.epochs)
    seconds = time.perf_counter() - t0
    return Measurement("plain_fit", len(runs), seconds, peak_rss_mib=peak_rss_mib(),
                       detail="model.compile + model.fit(verbose=0), one after another")


def keras_pool(study: Study, runs: list[Run]) -> Measurement:
    """The keras engine on RayPool actors: one untimed run per actor, then the sample."""
    from ..driver.cluster import ray_cluster
    from ..driver.raypool import RayPool

    def drain(pool: RayPool, todo: list[Run]) -> None:
        queue, got = deque(todo), 0
        while got < len(todo):
            while queue and pool.idle():
                pool.submit([queue.popleft()])
            got += len(pool.wait())

    with ray_cluster(None), RayPool(study, "keras") as pool:
        drain(pool, runs[:pool.slots])  # actor start-up and first tracing, untimed
        t0 = time.perf_counter()
        drain(pool, runs)
        seconds = time.perf_counter() - t0
        slots = pool.slots
    return Measurement("keras_pool", len(runs), seconds,
                       detail=f"sweep.driver.raypool.RayPool, {slots} actors x 1 CPU, keras engine, runs one per batch")


def run_bench(quick: bool = False, results: str | Path = "results",
              progress: Callable[[str], None] = lambda s: None) -> list[Measurement]:
    """Run every measurement, write results/bench.parquet, return the measurements (the
    population and plain-fit pairs in the order they were taken)."""
    from ..engines.runtime import import_tensorflow

    tf = import_tensorflow()
    import keras

    study = bench_study(quick)
    runs = study.plan()
    few = sample(runs, 2 if quick else 12)
    started = datetime.now(timezone.utc)
    progress("matmul ceiling")
    ceiling = matmul_ceiling()
    measurements = [ceiling]
    repeats = 1 if quick else REPEATS
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="sweep-bench-cache-") as cache:
            progress(f"{r + 1}/{repeats}: population engine, {len(runs)} runs x {study.epochs} epochs, cold")
            measurements.append(replace(population_process(quick, ceiling.gflop_per_s, cache, "population"),
                                        repetition=r))
            progress(f"{r + 1}/{repeats}: plain model.fit loop, {len(few)} runs")
            measurements.append(replace(plain_fit(study, few, warm_up=r == 0), repetition=r))
            progress(f"{r + 1}/{repeats}: population engine again, compile cache filled")
            measurements.append(replace(population_process(quick, ceiling.gflop_per_s, cache, "population_cached"),
                                        repetition=r))
    progress(f"keras engine through the worker pool: {len(few)} runs")
    measurements.append(keras_pool(study, few))

    rows = []
    for m in measurements:
        rows.append({"measurement": m.measurement, "repetition": m.repetition, "runs": m.runs,
                     "seconds": m.seconds, "runs_per_s": m.runs_per_s,
                     "gflop_per_s": m.gflop_per_s, "ceiling_fraction": m.ceiling_fraction,
                     "peak_rss_mib": m.peak_rss_mib, "epochs": study.epochs, "quick": quick, "detail": m.detail,
                     "cpus": len(__import__("os").sched_getaffinity(0)),
                     "gpus": len(tf.config.list_physical_devices("GPU")), "host": socket.gethostname(),
                     "tf_version": tf.__version__, "keras_version": keras.__version__,
                     "sweep_version": __version__, "started_at": started})
    write(rows, Path(results) / "bench.parquet")
    return measurements


def write(rows: list[dict], path: Path) -> None:
    from ..results.reports import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=COLUMNS).replace_schema_metadata({"schema_version": SCHEMA_VERSION})
    write_atomic(table, path)


def pair_speedups(measurements: list[Measurement], name: str = "population") -> list[float]:
    """`name`'s runs/s over plain-fit runs/s, for each repetition measured back to back."""
    pop, fit = ({m.repetition: m for m in measurements if m.measurement == n} for n in (name, "plain_fit"))
    return [pop[r].runs_per_s / fit[r].runs_per_s for r in sorted(pop)]


def speedup(measurements: list[Measurement], name: str = "population") -> float:
    """The median over the repetitions of `name`'s speedup (population: cold; population_cached).

    >>> pairs = [Measurement("population", 792, s, repetition=r) for r, s in enumerate([20.0, 24.0, 18.0])]
    >>> pairs += [Measurement("plain_fit", 12, s, repetition=r) for r, s in enumerate([30.0, 33.0, 30.0])]
    >>> [round(x, 1) for x in pair_speedups(pairs)], round(speedup(pairs), 1)
    ([99.0, 90.8, 110.0], 99.0)
    """
    return float(np.median(pair_speedups(measurements, name)))


def table(measurements: list[Measurement], quick: bool, path: Path) -> Table:
    """`sweep bench`'s table: one row per measurement, each detail in the caption."""
    details = {m.measurement: m.detail for m in measurements}
    out = Table(title=f"sweep bench{' --quick' if quick else ''}: {EXAMPLE}, written to {path}",
                caption="\n".join(f"{name}: {detail}" for name, detail in details.items()), caption_justify="left")
    for c in ("measurement", "runs", "seconds", "runs/s", "GFLOP/s", "of ceiling", "peak RSS MiB"):
        out.add_column(c, justify="left" if c == "measurement" else "right", no_wrap=True)
    for m in measurements:
        name = f"{m.measurement} {m.repetition + 1}" if m.measurement in PAIRED else m.measurement
        out.add_row(name, str(m.runs) if m.runs else "-", f"{m.seconds:.2f}",
                    f"{m.runs_per_s:.2f}" if m.runs_per_s else "-",
                    f"{m.gflop_per_s:.1f}" if m.gflop_per_s else "-",
                    f"{m.ceiling_fraction:.0%}" if m.ceiling_fraction else "-",
                    f"{m.peak_rss_mib:.0f}" if m.peak_rss_mib else "-")
    return out


def speedup_lines(measurements: list[Measurement]) -> list[str]:
    """Each repetition's speedups, then the medians: the last line is `speedup: N.Nx`."""
    out = []
    for name in ("population_cached", "population"):
        pairs = pair_speedups(measurements, name)
        if len(pairs) > 1:
            out.append(f"{name} N / plain_fit N: {', '.join(f'{x:.1f}x' for x in pairs)}; median below")
    return out + [f"speedup_cached: {speedup(measurements, 'population_cached'):.1f}x",
                  f"speedup: {speedup(measurements):.1f}x"]
