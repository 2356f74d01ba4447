"""What `sweep.engines.population.convolution` buys a population of small CNNs: the time of one
SGD step (forward, gradient of the summed loss, update) of K runs of
Conv2D(16, 3) - MaxPool - Conv2D(32, 3) - Flatten - Dense(10) on scikit-learn's 8x8 digits
(`load_digits`, batch 32, each run its own batch; `--shared-batch`: one batch for all), as

* `sequential`: one compiled per-run step called K times, run after run;
* `vmap`: `model.stateless_call` under `tf.vectorized_map` over the stacked weights, one
  gradient outside the map, pfor's own Conv2D converter (a while_loop over the runs);
* `vmap+conv`: the same after `convolution.install()` (the form chosen by device; `--forms`
  adds forced forms, e.g. `grouped` on a CPU);

each with and without XLA (`jit_compile`). Every function is compiled and warmed up first; then
`--rounds` rounds each time every variant for `--steps` steps in turn, so the variants share the
machine's drift; the median of the rounds is reported, with the load before and after. Not a
test: a timing depends on the machine. Needs scikit-learn (`pip install scikit-learn`).

    python scripts/bench_conv_population.py [--ks 8,32] [--steps 10] [--rounds 5] [--shared-batch] [--forms grouped]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from sweep.engines.runtime import import_tensorflow

BATCH = 32
LR = 0.01


def build_model():
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images[..., None] / 16.0).astype("float32"), data.target.astype("int32")


def loss_of(model, weights, x, y):
    import tensorflow as tf

    logits, _ = model.stateless_call(list(weights), [], x, training=True)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def per_run_step(model, jit: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(weights, x, y):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = loss_of(model, weights, x, y)
        grads = tape.gradient(loss, weights)
        return [w - LR * g for w, g in zip(weights, grads)], loss

    return step


def population_step(model, jit: bool, shared: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(weights, x, y):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            if shared:
                losses = tf.vectorized_map(lambda w: loss_of(model, w, x, y), weights)
            else:
                losses = tf.vectorized_map(lambda a: loss_of(model, *a), (weights, x, y))
            total = tf.reduce_sum(losses)
        grads = tape.gradient(total, weights)
        return [w - LR * g for w, g in zip(weights, grads)], losses

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="8,32", help="population sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shared-batch", action="store_true", help="one batch for all runs")
    parser.add_argument("--forms", default="", help="forced forms to add (matmul,grouped)")
    parser.add_argument("--no-sequential", action="store_true")
    args = parser.parse_args()
    tf = import_tensorflow()
    import numpy as np

    from sweep.engines.population import convolution

    images, labels = digits()
    model = build_model()
    base = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    ks = [int(k) for k in args.ks.split(",")]
    forms = [f for f in args.forms.split(",") if f]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_logical_devices('GPU'))}, "
          f"{'one batch for all runs' if args.shared_batch else 'each run its own batch'}, batch {BATCH}")

    variants = {}  # (name, K, jit) -> callable running one K-run step
    failed = {}  # (name, K, jit) -> why it does not run
    for k in ks:
        weights = [tf.constant(np.stack([w + 0.01 * rng.standard_normal(w.shape).astype("float32") for _ in range(k)]))
                   for w in base]
        rows = rng.integers(0, len(images), size=(k, BATCH))
        x, y = tf.constant(images[rows]), tf.constant(labels[rows])
        if args.shared_batch:
            x, y = x[0], y[0]
        for jit in (False, True):
            if not args.no_sequential:
                one = per_run_step(model, jit)
                runs = [[w[i] for w in weights] for i in range(k)]
                xs = [x if args.shared_batch else x[i] for i in range(k)]
                ys = [y if args.shared_batch else y[i] for i in range(k)]

                def sequential(one=one, runs=runs, xs=xs, ys=ys):
                    out = [one(r, a, b) for r, a, b in zip(runs, xs, ys)]
                    return out[-1][1]
                variants[("sequential", k, jit)] = sequential
            convolution.uninstall()
            plain = population_step(model, jit, args.shared_batch)
            try:
                plain(weights, x, y)  # traced with pfor's own converter
                variants[("vmap", k, jit)] = lambda f=plain, w=weights, a=x, b=y: f(w, a, b)[1]
            except tf.errors.InvalidArgumentError as exc:
                failed[("vmap", k, jit)] = exc.message.splitlines()[0]
            convolution.install()
            for form in [None] + forms:
                convolution.force_form(form)
                fast = population_step(model, jit, args.shared_batch)
                fast(weights, x, y)
                name = "vmap+conv" + (f"[{form}]" if form else "")
                variants[(name, k, jit)] = lambda f=fast, w=weights, a=x, b=y: f(w, a, b)[1]
            convolution.force_form(None)

    for run in variants.values():  # warm-up: compile and first calls
        for _ in range(2):
            run().numpy()
    load = os.getloadavg()
    times = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, run in variants.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                out = run()
            out.numpy()
            times[key].append((time.perf_counter() - started) / args.steps)
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"median of {args.rounds} rounds of {args.steps} steps, ms per step of K runs (range)")
    print(f"{'K':>3} {'XLA':>4} {'variant':<22} {'ms':>8}  {'range':<17} {'vs sequential':>13}")
    for (name, k, jit), ts in times.items():
        ms = statistics.median(ts) * 1e3
        seq = times.get(("sequential", k, jit))
        ratio = f"{statistics.median(seq) * 1e3 / ms:.1f}x" if seq else "-"
        print(f"{k:>3} {'on' if jit else 'off':>4} {name:<22} {ms:8.2f}  {min(ts) * 1e3:7.2f}-{max(ts) * 1e3:<8.2f} {ratio:>13}")
    for (name, k, jit), why in failed.items():
        print(f"{k:>3} {'on' if jit else 'off':>4} {name:<22} does not compile: {why}")


if __name__ == "__main__":
    main()
