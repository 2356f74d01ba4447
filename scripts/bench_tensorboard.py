"""What `sweep tensorboard` costs: seconds, files and bytes per run, in both forms, and what a
`tensorboard` server then takes to list the runs in its HParams view.

A grid study of about --runs runs with --epochs epochs is recorded first by the driver with an
engine that trains nothing (made-up curves: stable below learning rate 0.3, diverging up to 3,
NaN after two epochs above), so the event files carry a sweep's real shapes. Then, timed:
writing every run (`Board.sync`), a second sync with nothing to write (what a resumed
`sweep run --tensorboard` does first), the same in the aggregate form, and with --serve a
`tensorboard --logdir` on 127.0.0.1: seconds until its HParams API lists every run, one
session-groups request as the dashboard sends it, and the server's resident memory.

    python scripts/bench_tensorboard.py                          # 10,000 runs, 20 epochs
    python scripts/bench_tensorboard.py --runs 2000 --serve      # and a TensorBoard server
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from sweep.driver import session as driver
from sweep.driver.pool import LocalPool
from sweep.driver.workers import execute
from sweep.engines import Outcome
from sweep.plots import tensorboard as tb
from sweep.spec import parse

VERSIONS = ("bench", "bench")  # rows carry these: this process never imports TensorFlow


class CurveEngine:
    """`epochs` made-up epochs per run; which shape depends on the learning rate."""

    name = "curves"

    def capacity(self, study):
        return 4096

    def train(self, study, runs):
        out = []
        for r in runs:
            lr, n = r.config.learning_rate, study.epochs
            rng = np.random.default_rng([r.seed, int(lr * 1e6)])
            if lr < 0.3:
                losses = list(0.69 * np.exp(-lr * 10 * np.arange(1, n + 1)) * (1 + 0.01 * rng.random(n)))
            elif lr < 3:
                losses = list(0.69 * 3.0 ** np.arange(1, n + 1))
            else:
                losses = [1.5, 40.0, math.nan]
            k = len(losses)
            out.append(Outcome(initial_loss=0.69, initial_accuracy=0.5, epoch_loss=losses,
                               epoch_accuracy=list(rng.random(k)), epoch_grad_norm_max=list(1 + rng.random(k)),
                               epoch_learning_rate=[lr] * k, grad_norms=np.ones(k * 4),
                               first_nonfinite_step=8 if lr >= 3 else None, engine=self.name))
        return out


class Pool(LocalPool):
    def __enter__(self):
        return self

    def wait(self):
        return list(execute(self.study, self.queue.popleft(), self.engine, versions=VERSIONS)) if self.queue else []


AXES = {"learning_rate": [float(f"{x:.3g}") for x in np.geomspace(1e-4, 10, 11)],
        "clipnorm": ["none", 0.1, 1.0, 10.0], "batch_size": [16, 32, 128, 1000],
        "activation": ["relu", "tanh", "sigmoid", "gelu"], "scaler": ["none", "standard", "minmax"],
        "optimizer": ["adam", "sgd", "rmsprop"]}


def grid_study(target: int, epochs: int):
    """About `target` runs: axes added in order until 3 seeds of them reach it."""
    axes, configs = {}, 1
    for name, values in AXES.items():
        if configs * 3 >= target:
            break
        axes[name] = values
        configs *= len(values)
    seeds = max(1, round(target / configs))
    grid = "\n".join(f"{name} = {json.dumps(values)}" for name, values in axes.items())
    text = f'[study]\nname = "bench-tensorboard"\nexample = "exploding_gradients"\nepochs = {epochs}\n' \
           f'seeds = {list(range(seeds))}\n[grid]\n{grid}\n'
    return text, parse(text, "bench-tensorboard.toml", max_runs=configs * seeds)


def footprint(logdir: Path) -> tuple[int, int, int]:
    """Files and directories, bytes of event files, bytes on disk (blocks, directories included)."""
    entries = size = disk = 0
    for root, dirs, files in os.walk(logdir):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            entries += 1
            disk += st.st_blocks * 512
            if name.startswith("events.out.tfevents"):
                size += st.st_size
    return entries, size, disk


def timed_sync(study_dir: Path, logdir: Path, aggregate: bool) -> tuple[tb.Board, float, float]:
    t0 = time.perf_counter()
    board = tb.write(study_dir, logdir, aggregate=aggregate)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = tb.write(study_dir, logdir, aggregate=aggregate)
    assert again.written == 0
    return board, first, time.perf_counter() - t0


def post(port: int, route: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/data/plugin/hparams/{route}",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the fast loader is a child process)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        if int(proc.name) == pid or ppid == pid:
            found = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(found.group(1)) * 1024 if found else 0
    return total


def serve(logdir: Path, runs: int) -> None:
    log = logdir.parent / "tensorboard.log"
    with open(log, "w") as err:
        server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir),
                                   "--host", "127.0.0.1", "--port", "0"], stdout=err, stderr=err)
    body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"],
            "colParams": [{"metric": {"tag": "stable", "group": ""}, "includeInResult": True}],
            "startIndex": 0, "sliceSize": 100}  # the dashboard's first page
    try:
        t0 = time.perf_counter()
        port, total = None, 0
        while total < runs and server.poll() is None and time.perf_counter() - t0 < 3600:
            time.sleep(2)
            if port is None:
                found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
                port = found and int(found.group(1))
                continue
            total = post(port, "session_groups", body).get("totalSize", 0)
        listed = time.perf_counter() - t0
        t1 = time.perf_counter()
        post(port, "session_groups", body)
        request = time.perf_counter() - t1
        print(f"tensorboard --logdir: all {total} runs listed by the HParams API after {listed:.1f} s "
              f"(start-up included); one session-groups request then {request:.2f} s; "
              f"server resident memory {tree_rss(server.pid) / 2**20:.0f} MiB")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000, help="about this many runs (default 10000)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20, as studies/full.toml)")
    ap.add_argument("--serve", action="store_true", help="also time a tensorboard server on the per-run form")
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-tensorboard-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        text, study = grid_study(args.runs, args.epochs)
        (work / "bench-tensorboard.toml").write_text(text)
        study = parse(text, str(work / "bench-tensorboard.toml"), max_runs=len(study.plan()))
        driver.run(study, work / "results", pool=Pool(study, CurveEngine()))
        study_dir = work / "results" / study.name
        n = len(study.plan())
        print(f"{n} runs ({n // len(study.seeds)} configurations x {len(study.seeds)} seeds), "
              f"{args.epochs} epochs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for aggregate in (False, True):
            logdir = work / ("aggregate" if aggregate else "runs")
            board, first, again = timed_sync(study_dir, logdir, aggregate)
            entries, size, disk = footprint(logdir)
            k = board.written
            print(f"{board.form:>9}: {k} runs written in {first:.1f} s ({first / k * 1000:.2f} ms each, "
                  f"{k / first:.0f}/s); {entries} files and directories, event files {size / k:.0f} B per run, "
                  f"{disk / k / 1024:.1f} KiB on disk per run; a second sync (nothing to write) {again:.2f} s")
            per_million = 1e6 / n
            what = f"1,000,000 runs ({1e6 / len(study.seeds):,.0f} configurations)" if aggregate else "1,000,000 runs"
            print(f"{'':>9}  at {what}: {first * per_million / 60:.0f} min, "
                  f"{entries * per_million / 1e6:.2f} M entries, "
                  f"{size * per_million / 2**30:.2f} GiB of event files, {disk * per_million / 2**30:.2f} GiB on disk")
        if args.serve:
            serve(work / "runs", n)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
