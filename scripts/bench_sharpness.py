"""What the curvature telemetry costs the population engine: the bench set of `sweep bench`
(`sweep.probes.bench.bench_study`) trained with `[telemetry]` off and with
`sharpness = {every_epochs = 5, iterations = 20}` (optionally `samples = S`), as back-to-back
pairs so that both sides of a pair share the machine's drift, each pass from cold (compiled
programs and probes dropped, as `sweep bench` times the engine). Prints each pair and the
median over the pairs of (seconds with / seconds without) - 1, the extra time per run, with the
load (`os.getloadavg`) before and after. Not a test: a timing depends on the machine.

    python scripts/bench_sharpness.py [--quick] [--pairs 3] [--samples S] [--every 5] [--iterations 20] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

# Every pass compiles its programs, as `sweep bench`'s cold pass does: no compile cache. Set
# before sweep imports TensorFlow, which reads XLA's flags once.
os.environ["SWEEP_COMPILE_CACHE"] = "off"

from sweep.probes.bench import bench_study, sample  # noqa: E402
from sweep.spec import SharpnessTelemetry  # noqa: E402


def timed(study, runs) -> float:
    from sweep.engines.population import PopulationEngine, program
    from sweep.engines.population.curvature import probe

    program.cache_clear()
    probe.cache_clear()
    started = time.perf_counter()
    outcomes = PopulationEngine().train(study, runs)
    seconds = time.perf_counter() - started
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed, first: {failed[0]!r}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the bench's quick set (8 runs, 3 epochs)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--samples", type=int, default=None, help="rows of the training set (default all)")
    parser.add_argument("--runs", type=int, default=None, help="a sample of this many runs spread over the set")
    args = parser.parse_args()
    off = bench_study(args.quick)
    on = replace(off, sharpness=SharpnessTelemetry(args.every, args.iterations, args.samples))
    runs = off.plan() if args.runs is None else sample(off.plan(), args.runs)
    n = len(runs)
    print(f"bench set: {n} runs, {off.epochs} epochs; telemetry {on.sharpness}; load {os.getloadavg()}")
    ratios = []
    for pair in range(args.pairs):
        t_off, t_on = timed(off, runs), timed(on, runs)
        ratios.append(t_on / t_off)
        print(f"pair {pair}: off {t_off:.1f} s ({t_off / n * 1e3:.1f} ms/run), on {t_on:.1f} s "
              f"({t_on / n * 1e3:.1f} ms/run), +{100 * (t_on / t_off - 1):.0f} %; load {os.getloadavg()}")
    print(f"extra time per run with the telemetry: +{100 * (statistics.median(ratios) - 1):.0f} % "
          f"(median of {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
