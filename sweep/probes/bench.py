"""`sweep bench`: the engines and the plain Keras loop timed on the same configurations, in one run.

A bench set (`SETS`, `sweep bench --set NAME`, repeatable) is a model and a fixed plan:

* `mlp` (the default, and the only set before there were several): `exploding_gradients`'
  grid (tf-optimizer-error.md, example 1: learning rate x clipnorm x batch size x activation)
  with seeds 0-2, 20 epochs: the plan of studies/exploding_gradients.toml when this benchmark
  was written, fixed here (`GRID`) so that figures stay comparable.
* `user_mlp`: the same model, data, loss and plan, written as a user's `module:function`
  builder (`bench_models.exploding_mlp`): what the user-builder path costs against the catalog's.
* `cnn`, `rnn`: user builders too (`bench_models.cnn`, `bench_models.rnn`): a small
  convolutional net on scikit-learn's digits, a SimpleRNN on the adding problem, each on a
  learning rate x clipnorm x activation grid with seeds 0-2.

For each set, measured in this order, in this process unless said otherwise:

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
   plain-fit runs/s, `speedup_cached` the same of population_cached. With
   several sets, each repetition measures every set in turn, so that the sets
   share the drift too.
6. `keras_pool` (the `mlp` set only): the same sample on the keras engine through
   the worker pool (`sweep.driver.raypool.RayPool` on a private local Ray, one actor
   per CPU); one run per actor first, untimed, so that actor start-up is not charged.

Every measurement is a row of `results/bench.parquet` (written atomically,
with `schema_version` in its metadata; `set` names the bench set, `repetition`
numbers the pairs, `engine` says what trained the runs). A run replaces the rows
of the (set, --quick or not) it measured and keeps the others; a file of
schema_version 2 (before there were sets) holds `mlp` rows. For one set the
last two lines printed are `speedup_cached: N.Nx` and `speedup: N.Nx`::

    sweep bench --quick                                   # doctest: +SKIP
    sweep bench --set mlp --set user_mlp                  # doctest: +SKIP
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


@dataclass(frozen=True)
class BenchSet:
    """A model and the fixed plan `sweep bench` times on it; `quick_*` is the CI form."""

    name: str
    example: str  # a catalog id or a module:function builder
    about: str
    grid: dict
    quick_grid: dict
    epochs: int = 20
    quick_epochs: int = 3
    seeds: tuple = (0, 1, 2)
    sample: int = 12  # runs of the plain model.fit loop
    quick_sample: int = 2
    pool: bool = False  # also time the keras engine through the worker pool


MODELS = "sweep.probes.bench_models"
# Learning rates of the user-builder sets: Adam's useful range and past it, so that the grid
# has an edge (runs that diverge cost the plain loop as much as those that learn).
BUILDER_LRS = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
SETS = {s.name: s for s in (
    BenchSet("mlp", EXAMPLE, "catalog exploding_gradients: Dense 128-64-1, 1000 x 10, BCE", GRID, QUICK_GRID,
             pool=True),
    BenchSet("user_mlp", f"{MODELS}:exploding_mlp",
             "the mlp set's model, data, loss and plan, as a user module:function builder", GRID, QUICK_GRID),
    BenchSet("cnn", f"{MODELS}:cnn", "Conv2D(8, 3)-MaxPool-Flatten-Dense(10) on sklearn digits (1797 8x8), CCE",
             {"learning_rate": BUILDER_LRS, "clipnorm": ["none", 1.0], "activation": ["relu", "tanh"]},
             {"learning_rate": [0.001, 0.1], "clipnorm": ["none"], "activation": ["relu"]},
             epochs=10, quick_epochs=2, sample=6),
    BenchSet("rnn", f"{MODELS}:rnn", "SimpleRNN(16)-Dense(1) on the adding problem (1000 x 10 steps), MSE",
             {"learning_rate": BUILDER_LRS, "clipnorm": ["none", 1.0], "activation": ["tanh", "relu"]},
             {"learning_rate": [0.01, 0.1], "clipnorm": ["none"], "activation": ["tanh"]},
             quick_epochs=2, sample=6),
)}
DEFAULT_SET = "mlp"

# 3: the `set` and `engine` columns (a file of schema_version 2 holds the mlp set's rows only).
SCHEMA_VERSION = "3"
READABLE_VERSIONS = ("2", "3")
REPEATS = 3
# The measurements taken back to back in each repetition; population and population_cached
# over plain_fit are the two speedups.
PAIRED = ("population", "plain_fit", "population_cached")

COLUMNS = pa.schema([
    ("set", pa.string()),
    ("measurement", pa.string()),
    ("engine", pa.string()),
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
    set: str = DEFAULT_SET
    engine: str | None = None  # what trained the runs: population, keras (both: "population+keras"), model.fit

    @property
    def runs_per_s(self) -> float | None:
        return self.runs / self.seconds if self.runs and self.seconds > 0 else None


def bench_study(quick: bool, bench_set: str = DEFAULT_SET) -> Study:
    """A set's configurations: its grid x seeds 0-2, its epochs; --quick: its quick grid and epochs, seed 0.

    >>> s = bench_study(False)
    >>> s.example, len(s.plan()), s.epochs
    ('exploding_gradients', 792, 20)
    >>> [(name, len(bench_study(False, name).plan())) for name in SETS]
    [('mlp', 792), ('user_mlp', 792), ('cnn', 96), ('rnn', 96)]
    """
    b = SETS[bench_set]
    grid = b.quick_grid if quick else b.grid
    lines = [f"{axis} = {values!r}".replace("'", '"') for axis, values in grid.items()]
    text = (f'[study]\nname = "bench-{b.name}"\nexample = "{b.example}"\n'
            f'epochs = {b.quick_epochs if quick else b.epochs}\n'
            f'seeds = {[0] if quick else list(b.seeds)}\n[grid]\n' + "\n".join(lines))
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
    """Useful floating-point work: every trained sample's forward and backward matmuls (and
    convolutions, `bench_models.forward_flops`), and l0."""
    from ..engines import run_data
    from ..engines.population import Architecture, initial_model
    from .bench_models import forward_flops, training_flops_per_sample

    total = 0.0
    for run, o in outcomes:
        arch, _ = initial_model(study, run.config, run.seed)
        if isinstance(arch, Architecture):
            per_sample, forward = arch.flops_per_sample(), sum(2 * i * j for i, j in arch.shapes)
        else:
            per_sample, forward = training_flops_per_sample(arch.model), forward_flops(arch.model)[0]
        n, b = len(run_data(study, run.config)[0]), run.config.batch_size
        per_epoch = -(-n // b)
        steps = len(o.grad_norms)
        samples = (steps // per_epoch) * n + (steps % per_epoch) * b
        total += samples * per_sample + n * forward
    return total


def engines_of(outcomes) -> str:
    """What trained the runs, from their outcomes: "population", "keras", or both joined by "+"."""
    return "+".join(sorted({o.engine for o in outcomes}))


def population(study: Study, runs: list[Run], ceiling: float, name: str = "population",
               bench_set: str = DEFAULT_SET) -> Measurement:
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
    # A program XLA could not compile trains without it (the engine logs why): say so.
    xla = f"; without XLA: {', '.join(sorted(e for e, _ in engine.unjitted))}" if engine.unjitted else ""
    return Measurement(name, len(runs), seconds, gflop_per_s=gflops, ceiling_fraction=gflops / ceiling,
                       peak_rss_mib=peak_rss_mib(), set=bench_set, engine=engines_of(outcomes),
                       detail=f"whole set in a fresh process, {cache if active() else 'compile cache off'}; "
                              f"K <= {CPU_MAX_K}, {concurrent_populations()} populations at a time{xla}")


def population_process(quick: bool, ceiling: float, cache: str, name: str,
                       bench_set: str = DEFAULT_SET) -> Measurement:
    """`population` in a fresh Python process whose compile cache is `cache`."""
    from ..engines.xla import in_fresh_process

    code = ("import json, sys; from sweep.probes.bench import _child; "
            f"print(json.dumps(_child({quick!r}, {ceiling!r}, {name!r}, {bench_set!r})))")
    try:
        return Measurement(**in_fresh_process(code, cache))
    except RuntimeError as exc:
        raise RuntimeError(f"{bench_set}: {name} pass failed: {exc}") from None


def _child(quick: bool, ceiling: float, name: str, bench_set: str = DEFAULT_SET) -> dict:
    from dataclasses import asdict

    from ..engines.runtime import import_tensorflow

    import_tensorflow()
    study = bench_study(quick, bench_set)
    return asdict(population(study, study.plan(), ceiling, name, bench_set))


def plain_fit(study: Study, runs: list[Run], warm_up: bool = True, bench_set: str = DEFAULT_SET) -> Measurement:
    """The documents' way: build, compile, fit, one run after another. A user builder's model is
    built by the builder under the run's seed and compiled again with the run's optimizer and
    the builder's own loss, as the sweep does; then `model.fit`."""
    import keras

    from ..engines import example_data, make_optimizer, user_builder

    if study.example in EXAMPLES:
        ex = EXAMPLES[study.example]
        x, y = example_data(study.example, study.data_seed, "none")

        def fit(run: Run, epochs: int) -> None:
            keras.utils.set_random_seed(run.seed)
            model = ex.build(run.config.activation, x.shape[1])
            model.compile(optimizer=make_optimizer(run.config), loss="binary_crossentropy", metrics=["accuracy"])
            model.fit(x, y, epochs=epochs, batch_size=run.config.batch_size, verbose=0)
    else:
        builder = user_builder(study)

        def fit(run: Run, epochs: int) -> None:
            keras.utils.set_random_seed(run.seed)
            model, x, y = builder(activation=run.config.activation, seed=study.data_seed)
            model.compile(optimizer=make_optimizer(run.config), loss=model.loss, metrics=["accuracy"])
            model.fit(x, y, epochs=epochs, batch_size=run.config.batch_size, verbose=0)

    if warm_up:
        fit(runs[0], 1)  # untimed
    t0 = time.perf_counter()
    for run in runs:
        fit(run, study.epochs)
    seconds = time.perf_counter() - t0
    return Measurement("plain_fit", len(runs), seconds, peak_rss_mib=peak_rss_mib(), set=bench_set,
                       engine="model.fit", detail="model.compile + model.fit(verbose=0), one after another")


def keras_pool(study: Study, runs: list[Run], bench_set: str = DEFAULT_SET) -> Measurement:
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
    return Measurement("keras_pool", len(runs), seconds, set=bench_set, engine="keras",
                       detail=f"sweep.driver.raypool.RayPool, {slots} actors x 1 CPU, keras engine, runs one per batch")


class BenchFileError(Exception):
    """An existing bench.parquet this sweep cannot add its rows to."""


def read_rows(path: Path) -> list[dict]:
    """The rows of an existing bench.parquet in this schema (none if there is no file): a file
    of schema_version 2, from before there were sets, holds `mlp` rows."""
    import pyarrow.parquet as pq

    if not path.exists():
        return []
    try:
        table = pq.read_table(path)
    except Exception as exc:  # a damaged file: say which, do not overwrite it
        raise BenchFileError(f"{path}: not a readable Parquet file ({exc}); move it away to start a new one") from None
    version = (table.schema.metadata or {}).get(b"schema_version", b"?").decode()
    if version not in READABLE_VERSIONS:
        raise BenchFileError(f"{path}: schema_version {version}, this sweep reads {' and '.join(READABLE_VERSIONS)}; "
                             "move it away to start a new one")
    rows = table.to_pylist()
    for row in rows:
        row.setdefault("set", DEFAULT_SET)
        row.setdefault("engine", None)
    return [{c: row.get(c) for c in COLUMNS.names} for row in rows]


def merged(previous: list[dict], rows: list[dict]) -> list[dict]:
    """`rows` after the previous rows of every other (set, quick): a run replaces only what it measured.

    >>> old = [{"set": "mlp", "quick": False, "seconds": 1.0}, {"set": "cnn", "quick": False, "seconds": 2.0}]
    >>> [r["seconds"] for r in merged(old, [{"set": "cnn", "quick": False, "seconds": 3.0}])]
    [1.0, 3.0]
    """
    measured = {(r["set"], r["quick"]) for r in rows}
    return [r for r in previous if (r["set"], r["quick"]) not in measured] + rows


def run_bench(quick: bool = False, results: str | Path = "results",
              progress: Callable[[str], None] = lambda s: None,
              sets: tuple[str, ...] = (DEFAULT_SET,)) -> list[Measurement]:
    """Run every measurement of each set, add them to results/bench.parquet, return them (per
    repetition, each set's population and plain-fit passes in the order they were taken)."""
    from ..engines.runtime import import_tensorflow

    path = Path(results) / "bench.parquet"
    previous = read_rows(path)  # before any measurement: a file we cannot extend fails now, not in an hour
    tf = import_tensorflow()
    import keras

    sets = tuple(dict.fromkeys(sets))
    studies = {name: bench_study(quick, name) for name in sets}
    plans = {name: s.plan() for name, s in studies.items()}
    few = {name: sample(plans[name], SETS[name].quick_sample if quick else SETS[name].sample) for name in sets}
    started = datetime.now(timezone.utc)
    progress("matmul ceiling")
    ceiling = matmul_ceiling()
    # Each set's rows are whole on their own: the one ceiling measured, under each set's name.
    measurements = [replace(ceiling, set=name) for name in sets]
    repeats = 1 if quick else REPEATS
    for r in range(repeats):
        for name in sets:
            study, runs, label = studies[name], plans[name], f"{r + 1}/{repeats} {name}"
            with tempfile.TemporaryDirectory(prefix="sweep-bench-cache-") as cache:
                progress(f"{label}: population engine, {len(runs)} runs x {study.epochs} epochs, cold")
                measurements.append(replace(population_process(quick, ceiling.gflop_per_s, cache, "population", name),
                                            repetition=r))
                progress(f"{label}: plain model.fit loop, {len(few[name])} runs")
                measurements.append(replace(plain_fit(study, few[name], warm_up=r == 0, bench_set=name), repetition=r))
                progress(f"{label}: population engine again, compile cache filled")
                measurements.append(replace(population_process(quick, ceiling.gflop_per_s, cache,
                                                               "population_cached", name), repetition=r))
    for name in sets:
        if SETS[name].pool:
            progress(f"{name}: keras engine through the worker pool: {len(few[name])} runs")
            measurements.append(keras_pool(studies[name], few[name], name))

    rows = []
    for m in measurements:
        rows.append({"set": m.set, "measurement": m.measurement, "engine": m.engine, "repetition": m.repetition,
                     "runs": m.runs, "seconds": m.seconds, "runs_per_s": m.runs_per_s,
                     "gflop_per_s": m.gflop_per_s, "ceiling_fraction": m.ceiling_fraction,
                     "peak_rss_mib": m.peak_rss_mib, "epochs": studies[m.set].epochs, "quick": quick,
                     "detail": m.detail, "cpus": len(__import__("os").sched_getaffinity(0)),
                     "gpus": len(tf.config.list_physical_devices("GPU")), "host": socket.gethostname(),
                     "tf_version": tf.__version__, "keras_version": keras.__version__,
                     "sweep_version": __version__, "started_at": started})
    write(merged(previous, rows), path)
    return measurements


def write(rows: list[dict], path: Path) -> None:
    from ..results.reports import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=COLUMNS).replace_schema_metadata({"schema_version": SCHEMA_VERSION})
    write_atomic(table, path)


def pair_speedups(measurements: list[Measurement], name: str = "population",
                  bench_set: str | None = None) -> list[float]:
    """`name`'s runs/s over plain-fit runs/s, for each repetition measured back to back (of one
    set: `bench_set`, or the only one measured)."""
    ms = [m for m in measurements if bench_set is None or m.set == bench_set]
    pop, fit = ({m.repetition: m for m in ms if m.measurement == n} for n in (name, "plain_fit"))
    return [pop[r].runs_per_s / fit[r].runs_per_s for r in sorted(pop)]


def speedup(measurements: list[Measurement], name: str = "population", bench_set: str | None = None) -> float:
    """The median over the repetitions of `name`'s speedup (population: cold; population_cached).

    >>> pairs = [Measurement("population", 792, s, repetition=r) for r, s in enumerate([20.0, 24.0, 18.0])]
    >>> pairs += [Measurement("plain_fit", 12, s, repetition=r) for r, s in enumerate([30.0, 33.0, 30.0])]
    >>> [round(x, 1) for x in pair_speedups(pairs)], round(speedup(pairs), 1)
    ([99.0, 90.8, 110.0], 99.0)
    """
    return float(np.median(pair_speedups(measurements, name, bench_set)))


def sets_of(measurements: list[Measurement]) -> list[str]:
    return list(dict.fromkeys(m.set for m in measurements))


def table(measurements: list[Measurement], quick: bool, path: Path, bench_set: str = DEFAULT_SET) -> Table:
    """`sweep bench`'s table of one set: one row per measurement, each detail in the caption."""
    ms = [m for m in measurements if m.set == bench_set]
    details = {m.measurement: m.detail for m in ms}
    title = f"sweep bench{' --quick' if quick else ''} --set {bench_set}: {SETS[bench_set].example}, written to {path}"
    out = Table(title=title,
                caption="\n".join(f"{name}: {detail}" for name, detail in details.items()), caption_justify="left")
    for c in ("measurement", "runs", "seconds", "runs/s", "GFLOP/s", "of ceiling", "peak RSS MiB"):
        out.add_column(c, justify="left" if c == "measurement" else "right", no_wrap=True)
    for m in ms:
        name = f"{m.measurement} {m.repetition + 1}" if m.measurement in PAIRED else m.measurement
        out.add_row(name, str(m.runs) if m.runs else "-", f"{m.seconds:.2f}",
                    f"{m.runs_per_s:.2f}" if m.runs_per_s else "-",
                    f"{m.gflop_per_s:.1f}" if m.gflop_per_s else "-",
                    f"{m.ceiling_fraction:.0%}" if m.ceiling_fraction else "-",
                    f"{m.peak_rss_mib:.0f}" if m.peak_rss_mib else "-")
    return out


def seconds_ratios(measurements: list[Measurement], name: str, over: str, of: str) -> list[float]:
    """Per repetition, set `over`'s `name` pass seconds per run over set `of`'s: how much dearer a run is."""
    per_run = {(m.set, m.repetition): m.seconds / m.runs for m in measurements if m.measurement == name}
    return [per_run[over, r] / per_run[of, r] for s, r in sorted(per_run) if s == over and (of, r) in per_run]


def speedup_lines(measurements: list[Measurement]) -> list[str]:
    """Each repetition's speedups, then the medians. For one set the last line is
    `speedup: N.Nx`; for several, each set's lines begin with `NAME: `, and where the mlp and
    user_mlp sets were both measured, a line compares their population passes run for run."""
    names = sets_of(measurements)
    out = []
    for s in names:
        prefix = f"{s}: " if len(names) > 1 else ""
        for name in ("population_cached", "population"):
            pairs = pair_speedups(measurements, name, s)
            if len(pairs) > 1:
                out.append(f"{prefix}{name} N / plain_fit N: {', '.join(f'{x:.1f}x' for x in pairs)}; median below")
        out += [f"{prefix}speedup_cached: {speedup(measurements, 'population_cached', s):.1f}x",
                f"{prefix}speedup: {speedup(measurements, 'population', s):.1f}x"]
    if {"mlp", "user_mlp"} <= set(names):
        for name in ("population", "population_cached"):
            ratios = seconds_ratios(measurements, name, "user_mlp", "mlp")
            out.append(f"user_mlp / mlp seconds, {name}: {', '.join(f'{x:.2f}x' for x in ratios)}; "
                       f"median {float(np.median(ratios)):.2f}x")
    return out
