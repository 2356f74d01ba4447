"""The progress of `sweep run` on a terminal (the plain form is the module's doctest)."""

import io
from collections import Counter
from types import SimpleNamespace as Batch

from rich.console import Console

from sweep.driver.progress import eta, progress_printer


def test_the_terminal_bar_counts_a_resume_and_shows_rate_and_statuses():
    out = io.StringIO()
    update, stop = progress_printer(10, Counter(stable=2), Console(file=out, force_terminal=True, width=120))
    update(Batch(ran=4, seconds=2.0, counts=Counter(stable=3, nan=1)), [])
    update(Batch(ran=8, seconds=4.0, counts=Counter(stable=6, nan=2)), [])
    stop()
    text = out.getvalue()
    assert "10/10" in text and "2.00 runs/s" in text and "nan:2 stable:8" in text


def test_eta_reads_as_a_clock_then_in_days():
    assert eta(0.0, 5) == "?"
    assert eta(2.0, 7200) == "01:00:00"
    assert eta(0.01, 8640) == "10.0 d"
