"""How far the population engine's step is from the least XLA can do on this machine.

A training step of a population must at least run its matmuls (forward, and the weights' and
inputs' gradients) and apply Adam's update to every weight (read the gradient, the weight and
both slots; write the weight and both slots). This script times, on one CPU thread, for each
batch size of `sweep bench`'s set and its real population size K:

- `step`: the engine's compiled epoch (the bench's program: Adam, clipnorm, relu and tanh
  in one program), per step;
- `dots`: the step's eight matmuls alone, with the same shapes, in one XLA loop;
- `adam`: Adam's update alone on the same stacked variables (`step.update`), with a new
  gradient read every step;
- `optimizer`: what the step does to the weights in full: the gradient norms, clipping, Adam
  and the finiteness test (`step.clip`, `step.update`);

and two floors: `dots + adam`, below which no step in XLA can go (its matmuls as XLA runs
them and one pass of the update), and `dots + optimizer`, what the step must do to the weights
under the product's contract (Keras's clipping, the gradient-norm telemetry, the stop at the
first non-finite value), still leaving out the forward activations and the loss. The
headroom of each (step time over floor, weighted by the steps each batch size takes in the
bench set) bounds what any rewrite of the step in XLA can gain; applied to the figures in
results/bench.parquet (measured by `sweep bench`) it gives the best figures this machine
allows. Every figure is a ratio of timings taken in this process seconds apart, so the
machine's drift cancels. Not a test: a timing depends on the machine.

    python scripts/step_floor.py [--bench results/bench.parquet] [--reps 9] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from sweep.bench import bench_study, matmul_ceiling
from sweep.engines import batch_order
from sweep.engines.population.engine import group_key, schedule
from sweep.engines.population.step import clip, update
from sweep.engines.population.train import pad_last_batch, prepare


def interleaved_best(fns: dict, reps: int) -> dict:
    """The best time of each callable over `reps` rounds, one call of each per round: this
    machine's speed drifts by tens of percent within a minute, and a drift then reaches every
    callable alike instead of the ones timed during it."""
    for fn in fns.values():
        fn()  # compiles
    best = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def step_epoch(study, runs) -> tuple:
    """The engine's own epoch for `runs` (one population), as a callable; also its steps and the
    model's architecture."""
    import tensorflow as tf

    p = prepare(study, runs, True, None, None)
    B = runs[0].config.batch_size
    n_steps = -(-p.n // B)
    order = np.stack([p.offset[k] + batch_order(r.seed, 1, p.n) for k, r in enumerate(runs)]).astype(np.int32)
    order = tf.constant(pad_last_batch(order, B).reshape(len(runs), n_steps, B))
    lr = tf.constant(np.array([r.config.learning_rate for r in runs], np.float32))
    alive = tf.constant(np.ones(len(runs), bool))

    def epoch():
        out = p.program.run_epoch(p.theta, p.slots, alive, tf.constant(0), order, p.x, p.y, p.choice, lr,
                                  *p.thresholds)
        out[-1].numpy()

    return epoch, n_steps, p.program.shape.archs[0]


def dots_loops(K: int, B: int, shapes, steps: int) -> dict:
    """The step's matmuls alone: forward through every layer, then each layer's weight gradient
    and every input gradient but the first layer's, on [K, ...] operands as the step has them.
    XLA's dot runs a weight gradient faster with the activations already transposed, [K, in,
    B] (measured here: 51 against 34 GFLOP/s at batch 32), so the better of the two layouts
    counts, and making the transposed copy is not charged."""
    import tensorflow as tf

    g = tf.random.Generator.from_seed(0)
    ws = [g.normal([K, i, o]) * 0.1 for i, o in shapes]
    x = g.normal([K, B, shapes[0][0]])
    dzs = [g.normal([K, B, o]) for _, o in shapes]
    hts = [g.normal([K, i, B]) for i, _ in shapes]

    def loop(transposed: bool):
        @tf.function(jit_compile=True)
        def run():
            def body(i, acc):
                shift = tf.cast(i, tf.float32) * 0.0  # makes every operand depend on the step
                h, hs = x + shift, []
                for w in ws:
                    hs.append(h)
                    h = tf.matmul(h, w)
                total = tf.reduce_sum(h[:, :1])
                for layer, (w, dz) in enumerate(zip(ws, dzs)):
                    if transposed:
                        grad = tf.matmul(hts[layer] + shift, dz)
                    else:
                        grad = tf.matmul(hs[layer], dz + shift, transpose_a=True)
                    total += tf.reduce_sum(grad[:, :1, :1])
                    if layer:
                        total += tf.reduce_sum(tf.matmul(dz + shift, w, transpose_b=True)[:, :1, :1])
                return i + 1, acc + total
            return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))[1]
        return lambda: run().numpy()

    return {"dots": loop(False), "dots_t": loop(True)}


def update_loop(K: int, shapes, full: bool, steps: int):
    """Adam's update alone on the stacked variables ([K, fan-in, units] kernels, [K, units]
    biases); `full` adds the norms, clipping and finiteness test the step does around it."""
    import tensorflow as tf

    g = tf.random.Generator.from_seed(1)
    var_shapes = [s for i, o in shapes for s in ((i, o), (o,))]
    theta = [g.normal([K, *s]) * 0.1 for s in var_shapes]
    grads = [g.normal([K, *s]) for s in var_shapes]
    lr = tf.fill([K], 1e-3)
    clipnorm = tf.constant(np.where(np.arange(K) % 2, 1.0, 0.0).astype(np.float32))
    off = tf.zeros([K])

    @tf.function(jit_compile=True)
    def loop():
        def body(i, theta, m, v):
            gs = [t * (1.0 + tf.cast(i, tf.float32) * 1e-9) for t in grads]  # a new gradient each step
            if full:
                squares = tf.stack([tf.reduce_sum(tf.square(t), axis=list(range(1, len(t.shape)))) for t in gs], 1)
                norm = tf.sqrt(tf.reduce_sum(squares, axis=1))
                gs, _ = clip(gs, squares, norm, clipnorm, off, off, frozenset({"clipnorm"}))
            out = [update("adam", w, t, {"m": a, "v": b}, lr, i) for w, t, a, b in zip(theta, gs, m, v)]
            theta = [o[0] for o in out]
            if full:
                finite = tf.math.is_finite(norm)
                for w in theta:
                    finite &= tf.reduce_all(tf.math.is_finite(w), axis=list(range(1, len(w.shape))))
                theta = [tf.where(tf.reshape(finite, [-1] + [1] * (len(w.shape) - 1)), w, w) for w in theta]
            return i + 1, theta, [o[1]["m"] for o in out], [o[1]["v"] for o in out]
        zeros = [tf.zeros_like(w) for w in theta]
        return tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), theta, zeros, zeros))[1]

    return lambda: loop()[0].numpy()


def bench_figures(path: str, quick: bool) -> dict | None:
    """The medians `sweep bench` (`--quick` or not, as this run) measured: speedups, share of the
    ceiling, pass seconds; None if it has not measured that set."""
    if not os.path.exists(path):
        return None
    import pandas as pd

    b = pd.read_parquet(path)
    b = b[b.quick == quick]
    if b.empty:
        return None
    fit = b[b.measurement == "plain_fit"].set_index("repetition").runs_per_s
    out = {}
    for name in ("population", "population_cached"):
        rows = b[b.measurement == name].set_index("repetition")
        out[name] = dict(speedup=statistics.median(rows.runs_per_s / fit), seconds=rows.seconds.median(),
                         share=rows.ceiling_fraction.median())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="results/bench.parquet", help="sweep bench's figures to apply it to")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="the bench's quick set, one repetition")
    args = parser.parse_args()
    from sweep.cluster import import_tensorflow

    import_tensorflow(threads=1)  # one thread: the engine trains one population per core
    reps = 1 if args.quick else args.reps
    study = bench_study(args.quick)
    runs = study.plan()
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(group_key(r.config), []).append(i)
    work = schedule(study, runs, list(groups.values()), None)
    print(f"bench set: {len(runs)} runs, {study.epochs} epochs, {len(work)} populations; one CPU thread; "
          f"load {os.getloadavg()[0]:.2f}")
    ceiling = matmul_ceiling()
    print(f"matmul ceiling on one thread: {ceiling.gflop_per_s:.1f} GFLOP/s ({ceiling.detail})")
    print(f"{'batch':>5} {'K':>3} {'steps':>5} | {'step':>8} {'dots':>8} {'adam':>8} {'optimizer':>9} | "
          f"{'dots GFLOP/s':>12} {'floor':>8} {'contract':>8}")
    real = floor = contract = 0.0
    by_batch: dict[int, list] = {}
    for _, padded, _ in work:
        by_batch.setdefault(padded[0].config.batch_size, []).append(padded)
    for B, populations in sorted(by_batch.items()):
        padded, count = populations[0], len(populations)
        K = len(padded)
        epoch, n_steps, arch = step_epoch(study, padded)
        shapes = arch.shapes
        loops = 100
        best = interleaved_best({"step": epoch, **dots_loops(K, B, shapes, loops),
                                 "adam": update_loop(K, shapes, False, loops),
                                 "optimizer": update_loop(K, shapes, True, loops)}, reps)
        step = best["step"] / n_steps
        dots = min(best["dots"], best["dots_t"]) / loops
        adam, optimizer = best["adam"] / loops, best["optimizer"] / loops
        flops = K * B * arch.flops_per_sample()
        print(f"{B:>5} {K:>3} {n_steps:>5} | {step * 1e3:6.2f}ms {dots * 1e3:6.2f}ms {adam * 1e3:6.2f}ms "
              f"{optimizer * 1e3:7.2f}ms | {flops / dots / 1e9:12.1f} {(dots + adam) * 1e3:6.2f}ms "
              f"{(dots + optimizer) * 1e3:6.2f}ms")
        # Each batch size weighs by the steps its populations take in the bench set.
        real += count * n_steps * step
        floor += count * n_steps * (dots + adam)
        contract += count * n_steps * (dots + optimizer)
    print(f"over the bench set, step time / floor: {real / floor:.2f}x (dots + adam), "
          f"{real / contract:.2f}x (dots + optimizer, the contract's)")
    figures = bench_figures(args.bench, args.quick)
    if figures is None:
        print(f"{args.bench}: no figures of this set; run `sweep bench{' --quick' if args.quick else ''}` "
              f"to apply the headroom to them")
        return
    cold, cached = figures["population"], figures["population_cached"]
    compile_s = max(0.0, cold["seconds"] - cached["seconds"])
    print(f"{args.bench}: speedup {cold['speedup']:.1f}x (cold, {cold['seconds']:.1f} s), speedup_cached "
          f"{cached['speedup']:.1f}x ({cached['seconds']:.1f} s), share of the ceiling {cached['share']:.0%}")
    for name, headroom in (("dots + adam", real / floor), ("dots + optimizer", real / contract)):
        # The cached pass is all training; the cold pass adds its compilations, kept as they are.
        cold_floor = compile_s + cached["seconds"] / headroom
        print(f"with every step at {name}: speedup_cached <= {cached['speedup'] * headroom:.0f}x, speedup "
              f"(cold, compiling as now) <= {cold['speedup'] * cold['seconds'] / cold_floor:.0f}x, share of "
              f"the ceiling <= {cached['share'] * headroom:.0%}, pass {cached['seconds'] / headroom:.1f} s "
              f"cached, {cold_floor:.1f} s cold")


if __name__ == "__main__":
    main()
