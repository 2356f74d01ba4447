"""How a run's cost on the population engine depends on K, the runs one program trains at once,
for the models of `sweep bench`'s sets: what bounds K on a CPU worker where memory does not.

For each set, one group of its plan (batch size 32, one activation, no clipping; every learning
rate and seed of it, padded by repeating the plan to `--runs`) is trained at each K of `--ks`
(`PopulationEngine(max_k=K)`, `sizing.CPU_MAX_K` lifted above the largest): once to compile and
warm up, then `--rounds` rounds each timing every K in turn, so that the Ks share the machine's
drift. Reported: the median wall time per run and per run-epoch, with the load before and after.
Not a test: a timing depends on the machine.

    python scripts/bench_population_size.py [--sets mlp,cnn,rnn] [--ks 4,8,16,32,48,96] [--runs 192] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

from sweep.engines.runtime import import_tensorflow


def group(bench_set: str, runs: int, epochs: int):
    from sweep.probes.bench import bench_study

    study = dataclasses.replace(bench_study(False, bench_set), epochs=epochs)
    plan = [r for r in study.plan() if r.config.batch_size == 32 and r.config.clipnorm is None
            and r.config.activation == study.plan()[0].config.activation]
    plan = (plan * (runs // len(plan) + 1))[:runs]
    return study, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="mlp,user_mlp,cnn,rnn")
    parser.add_argument("--ks", default="4,8,16,32,48,96")
    parser.add_argument("--runs", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import_tensorflow()
    from sweep.engines.population import PopulationEngine, sizing

    ks = [int(k) for k in args.ks.split(",")]
    sizing.CPU_MAX_K = max(ks)
    print(f"load before: {os.getloadavg()[0]:.2f}; {args.runs} runs x {args.epochs} epochs per timing")
    for name in args.sets.split(","):
        study, plan = group(name, args.runs, args.epochs)
        engines = {k: PopulationEngine(max_k=k) for k in ks}
        for engine in engines.values():  # compile every K's program first
            engine.train(study, plan)
        times: dict[int, list[float]] = {k: [] for k in ks}
        for _ in range(args.rounds):
            for k, engine in engines.items():
                t0 = time.perf_counter()
                engine.train(study, plan)
                times[k].append(time.perf_counter() - t0)
        best = min(statistics.median(t) for t in times.values())
        for k in ks:
            m = statistics.median(times[k])
            print(f"{name:9s} K={k:3d}: {1e3 * m / len(plan):7.2f} ms per run, "
                  f"{1e3 * m / len(plan) / args.epochs:6.2f} ms per run-epoch, {m / best:5.2f}x the fastest K")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
