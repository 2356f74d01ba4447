#!/usr/bin/env python
"""Run the reliability suite's fault cases for real and print the figures.

    python scripts/reliability_report.py            # every case (~25 min on 2 cores)
    python scripts/reliability_report.py --quick    # crash points on the in-process driver only, no cli sessions (~5 min)

Crash points: the driver SIGKILLed at every point of `sweep.results.faults.POINTS`, then the same
command again (in-process scripted driver, and without --quick also the real `sweep run`
with the keras engine on a private Ray). Worker faults: an actor killed mid-batch, a run
that raises, a run past its timeout, a node removed from a two-node Ray cluster. Bad inputs:
every hostile study file through `sweep validate` and `sweep run`. Storage and corrupted
results: a full disk mid-sweep through `sweep run`, and damaged part files. The cases are
tests/fault_cases.py, the same the tests run. Needs the test extra (pytest).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fault_cases  # noqa: E402
from sweep.results import faults  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the cli crash sessions and the disk-full session")
    args = parser.parse_args()
    started = time.monotonic()
    results: list[fault_cases.Result] = []

    def record(result: fault_cases.Result) -> None:
        results.append(result)
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {result.kind:8} {result.name}", flush=True)
        for problem in result.problems:
            print(f"       {problem.splitlines()[0][:200]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="sweep-reliability-") as tmp:
        work = Path(tmp)
        modes = ["local"] if args.quick else ["local", "cli"]
        for mode in modes:
            reference = fault_cases.baseline(mode, work / f"reference-{mode}")
            for point in faults.POINTS:
                record(fault_cases.crash_case(point, mode, work / f"crash-{mode}-{point}", reference))

        # A two-node test cluster first: it needs no other Ray connection in this process.
        record(fault_cases.node_removed(work / "node"))
        from scripted_engine import ship_to_workers

        from sweep.driver.cluster import ray_cluster

        ship_to_workers()
        with ray_cluster(None, num_cpus=3):
            for name, case in fault_cases.WORKER_FAULTS.items():
                record(case(work / f"worker-{name.replace(' ', '-')}"))

        for i, name in enumerate(sorted(fault_cases.hostile_inputs())):
            record(fault_cases.hostile_case(name, work / f"input-{i}"))
        for i, name in enumerate(sorted(fault_cases.CORRUPTIONS)):
            record(fault_cases.corrupted_case(name, work / f"corrupt-{i}"))
        if not args.quick:
            record(fault_cases.disk_full_case(work / "disk-full"))

    def figure(kind: str) -> str:
        mine = [r for r in results if r.kind == kind]
        return f"{sum(r.ok for r in mine)} / {len(mine)}"

    crash = [r for r in results if r.kind == "crash"]
    print()
    print(f"command: python scripts/reliability_report.py{' --quick' if args.quick else ''}")
    print(f"crash points survived / tried:     {figure('crash')}  "
          f"({len(faults.POINTS)} points x {', '.join(sorted({r.name.split(':')[0] for r in crash}))} driver)")
    print(f"worker faults survived / tried:    {figure('worker')}")
    print(f"bad inputs rejected cleanly / tried: {figure('input')}")
    print(f"corrupted results refused / tried: {figure('corrupt')}")
    if not args.quick:
        print(f"storage faults survived / tried:   {figure('storage')}")
    print(f"runs lost:       {sum(r.lost for r in results)}")
    print(f"runs duplicated: {sum(r.duplicated for r in results)}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
