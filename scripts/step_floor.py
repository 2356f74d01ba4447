"""How far the population engine's step is from the least any kernel can do on this machine.

A training step of a population must at least run its matmuls (forward, and the weights' and
inputs' gradients), apply Adam's update to every weight (read the gradient, the weight and
both slots; write the weight and both slots), and run the model's own elementwise work (bias,
activation, loss, and their gradients). This script times, on one CPU thread, for each batch
size of `sweep bench`'s set and its real population size K:

- `step`: the engine's compiled epoch (the bench's program: Adam, clipnorm, relu and tanh
  in one program), per step; `no XLA`: the same epoch run by TensorFlow's own kernels,
  which compiles nothing;
- `dots`: the step's eight matmuls alone, with the same shapes, in one XLA loop; the same
  matmuls by TensorFlow's kernels without XLA (`tf`) and by numpy's OpenBLAS (`blas`), as
  GFLOP/s: the fastest of the three is the floor's;
- `adam`: Adam's update alone on the same stacked variables (`step.update`), with a new
  gradient read every step;
- `optimizer`: what the step does to the weights in full: the gradient norms, clipping, Adam
  and the finiteness test (`step.clip`, `step.update`);
- `act`: the model's elementwise work at its least (`activation_loop`): relu for every run,
  the loss, and their gradients, each written once;

and three floors: `dots + adam`, below which no step can go (its matmuls as the fastest
kernel here runs them and one pass of the update), `dots + optimizer`, what the step must do
to the weights under the product's contract (Keras's clipping, the gradient-norm telemetry,
the stop at the first non-finite value), and `whole`: that with the activations and the loss.
The headroom of each (step time over floor, weighted by the steps each batch size takes in
the bench set) bounds what any rewrite of the step can gain; applied to the figures in
results/bench.parquet (measured by `sweep bench`) it gives the best figures this machine
allows, the cold one both with the compilation as measured and with none at all. Every
figure is a ratio of timings taken in this process seconds apart, so the machine's drift
cancels. Not a test: a timing depends on the machine.

    python scripts/step_floor.py [--bench results/bench.parquet] [--reps 9] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# One BLAS thread, as the engine's one XLA thread per population; read when numpy loads BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from sweep.probes.bench import bench_study, matmul_ceiling
from sweep.engines import batch_order
from sweep.engines.population.engine import group_key, schedule
from sweep.engines.population.step import clip, update
from sweep.engines.population.train import pad_last_batch, prepare


# The floors a step is compared with, each a sum of the timings above.
FLOORS = {"floor": "dots + adam", "contract": "dots + optimizer",
          "whole": "dots + optimizer + activations, the contract's whole"}


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


def step_epoch(study, runs, jit: bool = True) -> tuple:
    """The engine's own epoch for `runs` (one population), as a callable; also its steps and the
    model's architecture. `jit=False`: the same program run by TensorFlow's own kernels, which
    compiles nothing."""
    import tensorflow as tf

    p = prepare(study, runs, jit, None, None)
    B = runs[0].config.batch_size
    n_steps = -(-p.n // B)
    order = np.stack([p.offset[k] + batch_order(r.seed, 1, p.n) for k, r in enumerate(runs)]).astype(np.int32)
    order = tf.constant(pad_last_batch(order, B).reshape(len(runs), n_steps, B))
    lr = tf.constant(np.array([r.config.learning_rate for r in runs], np.float32))
    alive = tf.constant(np.ones(len(runs), bool))

    def epoch():
        out = p.program.run_epoch(p.theta, p.state, p.slots, alive, tf.constant(0), order, p.x, p.y, p.choice, lr,
                                  *p.hyper)
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


def other_kernels(K: int, B: int, shapes, steps: int) -> dict:
    """The same matmuls (`dots_loops`, the faster weight-gradient layout) with the other kernels
    this machine has: TensorFlow's own (Eigen, oneDNN) in a graph without XLA, and numpy's
    OpenBLAS on one thread. If one ran these shapes faster than XLA, the floor would be its."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((K, i, o), dtype=np.float32) * 0.1 for i, o in shapes]
    x = rng.standard_normal((K, B, shapes[0][0]), dtype=np.float32)
    dzs = [rng.standard_normal((K, B, o), dtype=np.float32) for _, o in shapes]
    hts = [rng.standard_normal((K, i, B), dtype=np.float32) for i, _ in shapes]

    def blas():
        for _ in range(steps):
            h = x
            for w in ws:
                h = np.matmul(h, w)
            for layer, (w, dz) in enumerate(zip(ws, dzs)):
                np.matmul(hts[layer], dz)
                if layer:
                    np.matmul(dz, w.transpose(0, 2, 1))

    tx = tf.constant(x)
    tws, tdzs, thts = ([tf.constant(a) for a in group] for group in (ws, dzs, hts))

    @tf.function(jit_compile=False, autograph=False)
    def graph():
        def body(i, acc):
            shift = tf.cast(i, tf.float32) * 0.0
            h, total = tx + shift, tf.constant(0.0)
            for w in tws:
                h = tf.matmul(h, w)
            total += tf.reduce_sum(h[:, :1])
            for layer, (w, dz) in enumerate(zip(tws, tdzs)):
                total += tf.reduce_sum(tf.matmul(thts[layer] + shift, dz)[:, :1, :1])
                if layer:
                    total += tf.reduce_sum(tf.matmul(dz + shift, w, transpose_b=True)[:, :1, :1])
            return i + 1, acc + total
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))[1]

    return {"dots_tf": lambda: graph().numpy(), "dots_blas": blas}


def activation_loop(K: int, B: int, shapes, steps: int):
    """What a step of the bench's model must do besides its matmuls and its update, at the least:
    add each layer's bias and apply relu (the cheaper of the bench's two activations; the output
    layer: sigmoid's logit into binary cross-entropy), and backwards the loss's gradient, relu's
    mask on the gradient reaching each hidden layer and the biases' gradients. Each result is
    written once, as the step writes it for the matmul that reads it next; nothing else is done
    with it (a sum over every value would cost more than the work it keeps: XLA adds a float sum
    one value after another)."""
    import tensorflow as tf

    g = tf.random.Generator.from_seed(2)
    zs = [g.normal([K, B, o]) for _, o in shapes]  # each layer's matmul output
    biases = [g.normal([K, o]) * 0.1 for _, o in shapes]
    upstream = [g.normal([K, B, o]) for _, o in shapes[:-1]]  # the input gradient of the layer above
    y = tf.cast(g.uniform([K, B, 1]) > 0.5, tf.float32)

    @tf.function(jit_compile=True, autograph=False)
    def loop():
        def body(i, outputs):
            shift = tf.cast(i, tf.float32) * 0.0  # makes every operand depend on the step
            new = []
            for layer, (z, b) in enumerate(zip(zs, biases)):
                a = z + shift + b[:, None, :]
                if layer < len(shapes) - 1:
                    h = tf.nn.relu(a)
                    dz = tf.where(a > 0, upstream[layer] + shift, 0.0)
                    new += [h, dz]
                else:
                    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=a), axis=1)
                    dz = (tf.sigmoid(a) - y) / B
                    new += [loss, dz]
                new.append(tf.reduce_sum(dz, axis=1))  # the bias's gradient
            return i + 1, new
        start = []
        for layer, (_, o) in enumerate(shapes):
            start += [tf.zeros([K, B, o]) if layer < len(shapes) - 1 else tf.zeros([K, 1]), tf.zeros([K, B, o]),
                      tf.zeros([K, o])]
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), start))[1]

    return lambda: [t.numpy() for t in loop()]


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
                gs, _, _ = clip(gs, squares, norm, clipnorm, off, off, frozenset({"clipnorm"}))
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
    """The medians `sweep bench` (`--quick` or not, as this run) measured on its mlp set, the one
    this script's floors are of: speedups, share of the ceiling, pass seconds; None if it has not
    measured that set."""
    if not os.path.exists(path):
        return None
    import pandas as pd

    b = pd.read_parquet(path)
    # The mlp set's rows: a file from before there were sets (schema_version 2) holds no others.
    b = b[(b.quick == quick) & ((b.set == "mlp") if "set" in b else True)]
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
    from sweep.engines.runtime import import_tensorflow

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
    print(f"{'batch':>5} {'K':>3} {'steps':>5} | {'step':>8} {'no XLA':>8} {'dots':>8} {'adam':>8} {'optimizer':>9} "
          f"{'act':>8} | {'GFLOP/s: xla':>12} {'tf':>5} {'blas':>5} | {'floor':>8} {'contract':>8} {'whole':>8}")
    real = no_xla = 0.0
    floors = dict.fromkeys(FLOORS, 0.0)
    by_batch: dict[int, list] = {}
    for _, padded, _ in work:
        by_batch.setdefault(padded[0].config.batch_size, []).append(padded)
    for B, populations in sorted(by_batch.items()):
        padded, count = populations[0], len(populations)
        K = len(padded)
        epoch, n_steps, arch = step_epoch(study, padded)
        shapes = arch.shapes
        loops = 100
        best = interleaved_best({"step": epoch, "no_xla": step_epoch(study, padded, jit=False)[0],
                                 **dots_loops(K, B, shapes, loops),
                                 **other_kernels(K, B, shapes, loops),
                                 "adam": update_loop(K, shapes, False, loops),
                                 "optimizer": update_loop(K, shapes, True, loops),
                                 "act": activation_loop(K, B, shapes, loops)}, reps)
        # The loops time `loops` steps each; the epochs, n_steps.
        t = {name: seconds / loops for name, seconds in best.items() if name not in ("step", "no_xla")}
        step = best["step"] / n_steps
        xla_dots, tf_dots, blas_dots = min(t["dots"], t["dots_t"]), t["dots_tf"], t["dots_blas"]
        dots = min(xla_dots, tf_dots, blas_dots)  # the fastest kernel this machine has for them
        parts = {"floor": dots + t["adam"], "contract": dots + t["optimizer"],
                 "whole": dots + t["optimizer"] + t["act"]}
        flops = K * B * arch.flops_per_sample()
        print(f"{B:>5} {K:>3} {n_steps:>5} | {step * 1e3:6.2f}ms {best['no_xla'] / n_steps * 1e3:6.2f}ms "
              f"{xla_dots * 1e3:6.2f}ms {t['adam'] * 1e3:6.2f}ms "
              f"{t['optimizer'] * 1e3:7.2f}ms {t['act'] * 1e3:6.2f}ms | {flops / xla_dots / 1e9:12.1f} "
              f"{flops / tf_dots / 1e9:5.1f} {flops / blas_dots / 1e9:5.1f} | "
              + " ".join(f"{parts[name] * 1e3:6.2f}ms" for name in FLOORS))
        # Each batch size weighs by the steps its populations take in the bench set.
        real += count * n_steps * step
        no_xla += count * best["no_xla"]
        for name in FLOORS:
            floors[name] += count * n_steps * parts[name]
    headroom = {name: real / floors[name] for name in FLOORS}
    print(f"without XLA (nothing to compile) the bench set's steps take {no_xla / real:.2f}x as long: "
          f"{(no_xla - real) * study.epochs:.1f} s more on one thread over its {study.epochs} epochs")
    print("over the bench set, step time / floor: "
          + ", ".join(f"{headroom[name]:.2f}x ({FLOORS[name]})" for name in FLOORS))
    figures = bench_figures(args.bench, args.quick)
    if figures is None:
        print(f"{args.bench}: no figures of this set; run `sweep bench{' --quick' if args.quick else ''}` "
              f"to apply the headroom to them")
        return
    cold, cached = figures["population"], figures["population_cached"]
    compile_s = max(0.0, cold["seconds"] - cached["seconds"])
    print(f"{args.bench}: speedup {cold['speedup']:.1f}x (cold, {cold['seconds']:.1f} s), speedup_cached "
          f"{cached['speedup']:.1f}x ({cached['seconds']:.1f} s), share of the ceiling {cached['share']:.0%}")
    for name in FLOORS:
        # The cached pass counts as all training (its Keras builds and tracing shrink with the steps,
        # which favours the target); the cold pass adds its compilations, kept as they are.
        h = headroom[name]
        cold_floor = compile_s + cached["seconds"] / h
        print(f"with every step at {FLOORS[name]}: speedup_cached <= {cached['speedup'] * h:.0f}x, speedup "
              f"(cold, compiling as now) <= {cold['speedup'] * cold['seconds'] / cold_floor:.0f}x, share of "
              f"the ceiling <= {cached['share'] * h:.0%}, pass {cached['seconds'] / h:.1f} s "
              f"cached, {cold_floor:.1f} s cold; cold compiling nothing <= "
              f"{cold['speedup'] * cold['seconds'] * h / cached['seconds']:.0f}x")


if __name__ == "__main__":
    main()
