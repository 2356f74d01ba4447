"""What `sweep validate` and `sweep run` print: the plan, the progress of a running sweep (runs
done of those planned, counts per status, runs/s, ETA) and the closing summary.

A live bar on a terminal; elsewhere (logs, CI, `ray job submit`) a plain line at most every
5 s, and always the last one. `session.run` calls the update after every batch it commits::

    >>> from collections import Counter
    >>> from types import SimpleNamespace as Batch
    >>> from rich.console import Console
    >>> update, stop = progress_printer(10, Counter(stable=2), Console(force_terminal=False))
    >>> update(Batch(ran=0, seconds=1.0, counts=Counter()), [])
    runs 2/10  0.00 runs/s  ETA ?  stable=2
    >>> update(Batch(ran=4, seconds=3.0, counts=Counter(stable=3, nan=1)), [])   # within 5 s: quiet
    >>> update(Batch(ran=8, seconds=5.0, counts=Counter(stable=6, nan=2)), [])
    runs 10/10  2.00 runs/s  ETA 00:00:00  nan=2 stable=8
    >>> stop()
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

import click
from rich.console import Console
from rich.table import Table

from ..spec import Study, format_value
from ..verdict import STATUSES

# How often the plain form prints: often enough to show life in a log, rarely enough to read.
LINE_SECONDS = 5.0


def eta(rate: float, remaining: int) -> str:
    """The time left at `rate` runs/s, as H:M:S (days past one day); '?' before any rate."""
    if not rate:
        return "?"
    seconds = remaining / rate
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"


def progress_printer(total: int, before: Counter, console: Console) -> tuple[Callable, Callable[[], None]]:
    """(update, stop): `update(summary, rows)` after each batch, `stop()` at the end. `before`
    counts the statuses already recorded (a resume); `summary` has this session's `ran`,
    `seconds` and `counts`."""
    already = sum(before.values())
    state = {"last": 0.0, "first": None}

    def numbers(ran: int, seconds: float, counts: Counter, sep: str) -> tuple[int, str, float]:
        counts = before + counts
        text = " ".join(f"{s}{sep}{counts[s]}" for s in STATUSES if counts[s])
        # Runs/s since the first rows came back: Ray's and the workers' start-up is not a rate.
        if state["first"] is None and ran:
            state["first"] = (seconds, ran)
        rate = 0.0
        if state["first"] and seconds > state["first"][0]:
            rate = (ran - state["first"][1]) / (seconds - state["first"][0])
        return already + ran, text, rate

    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} ETA {task.fields[eta]}"),
                            TextColumn("{task.fields[counts]}"), console=console)
        task = progress.add_task("runs", total=total, completed=already, rate="", eta="?",
                                 counts=numbers(0, 0.0, Counter(), ":")[1])
        progress.start()

        def update(summary, rows) -> None:
            done, counts, rate = numbers(summary.ran, summary.seconds, summary.counts, ":")
            progress.update(task, completed=done, rate=f"{rate:.2f} runs/s", counts=counts,
                            eta=eta(rate, total - done))

        return update, progress.stop

    def line(summary, rows) -> None:
        now = time.monotonic()
        done, counts, rate = numbers(summary.ran, summary.seconds, summary.counts, "=")
        if now - state["last"] < LINE_SECONDS and done < total:
            return
        state["last"] = now
        click.echo(f"runs {done}/{total}  {rate:.2f} runs/s  ETA {eta(rate, total - done)}  {counts}")

    return line, lambda: None


def plan_text(study: Study) -> list:
    """What `sweep validate` prints: the axes and their values, the number of runs, the telemetry."""
    table = Table(title=f"{study.name}: {study.example}, {study.epochs} epochs, sampler {study.sampler}, "
                        f"engine {study.engine}")
    table.add_column("axis")
    table.add_column("values")
    for axis, values in study.grid.items():
        table.add_row(axis, ", ".join(format_value(v) for v in values))
    for knob, values in study.model.items():
        table.add_row(f"model.{knob}", ", ".join(format_value(v) for v in values))
    table.add_row("seeds", ", ".join(map(str, study.seeds)))
    out = [table, f"{len(study.configs())} configurations x {len(study.seeds)} seeds = {len(study.plan())} runs"]
    if (s := study.sharpness) is not None:
        rows = "all" if s.samples is None else f"the first {s.samples}"
        out.append(f"telemetry: sharpness at epoch 0 and every {s.every_epochs} epochs, {s.iterations} power "
                   f"iterations on {rows} training rows")
    return out


def summary_text(summary, trials) -> list:
    """What `sweep run` prints at the end: runs per status, recorded and this session's, and its pace."""
    counts = trials["status"].value_counts()
    table = Table(title=f"{summary.study_dir}: {len(trials)} of {summary.planned} runs recorded")
    table.add_column("status")
    table.add_column("runs", justify="right")
    table.add_column("this session", justify="right")
    for s in STATUSES:
        if counts.get(s, 0):
            table.add_row(s, str(int(counts[s])), str(summary.counts.get(s, 0)))
    out = [table]
    if any(summary.reconciled.values()):
        out.append("Optuna copy brought level with trials/: " +
                   ", ".join(f"{k} {v}" for k, v in summary.reconciled.items() if v))
    if summary.ran:
        overhead = sum(v for k, v in summary.phases.items() if k != "start") / summary.ran
        out.append(f"this session: {summary.ran} runs in {summary.seconds:.1f} s "
                   f"({summary.ran / summary.seconds:.2f} runs/s) on {summary.workers} workers; "
                   f"driver {overhead * 1000:.2f} ms per run")
    return out
