"""Fault injection for the reliability suite: kill the driver (or fail a write) at a named point.

The driver calls `point(name)` where a crash would leave its state half
changed (between the curves part and the trials part, with a journal line
half written, between the two map files, ...). With `SWEEP_FAULT` unset,
which is always the case outside the suite, `point` is one comparison.
`SWEEP_FAULT=<point>[:<nth>][:<action>]` makes the nth visit (default 1)
of that point do the action:

* `kill` (default): SIGKILL this process, as a machine dying would: no
  `finally`, no atexit, no flush;
* `enospc`: raise `OSError(ENOSPC)`, as a full disk would at that write.

The variable is read once, when this module is first imported, so a driver
process and the Ray processes it starts agree on it.

    >>> from sweep.results import faults
    >>> faults.point("write.curves")      # SWEEP_FAULT unset: nothing happens
    >>> faults.parse("write.tmp:3:enospc")
    ('write.tmp', 3, 'enospc')
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "SWEEP_FAULT"
ACTIONS = ("kill", "enospc")

# Every point the driver visits, in the order a session meets them. The suite tries each;
# one place for the names, so a point cannot be renamed without the suite noticing.
POINTS = {
    "start": "driver lock taken, nothing read yet (start-up)",
    "start.optuna": "Optuna study created, its plan attributes half written (start-up)",
    "propose": "the sampler proposed runs, none submitted yet (propose/ask)",
    "collected": "rows came back from the workers, nothing written yet",
    "write.tmp": "a Parquet temp file written and synced, not yet renamed (mid-write)",
    "write.curves": "the curves part written, its trials part not yet",
    "write.trials": "the trials part written (the commit record), the Optuna copy not yet",
    "journal.append": "half of the Optuna journal append written (a torn line)",
    "committed": "a batch committed to Parquet and Optuna, the next not started (between batches)",
    "maps": "map.parquet written, boundary.parquet not yet",
    "done": "the maps written, the driver about to exit",
}


def parse(spec: str | None) -> tuple[str, int, str] | None:
    """(point, nth, action) of a SWEEP_FAULT value; None when unset or empty."""
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    nth_text, _, action = rest.partition(":")
    if name not in POINTS or (nth_text and not nth_text.isdigit()) or (action or "kill") not in ACTIONS:
        raise ValueError(f"{ENV}={spec!r}: expected <point>[:<nth>][:<action>] with point one of "
                         f"{', '.join(POINTS)}, nth >= 1 and action one of {', '.join(ACTIONS)}")
    return name, int(nth_text or 1), action or "kill"


_FAULT = parse(os.environ.get(ENV))
_visits = 0


def point(name: str) -> None:
    """The driver reached `name`: act if SWEEP_FAULT names it and this is the chosen visit."""
    global _visits
    if _FAULT is None or _FAULT[0] != name:
        return
    _visits += 1
    if _visits != _FAULT[1]:
        return
    if _FAULT[2] == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {ENV} at {name})")
    os.kill(os.getpid(), signal.SIGKILL)
