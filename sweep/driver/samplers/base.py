"""What a sampler is: it decides which runs come next; the driver trains them and calls again.

The protocol is one method: `propose(study, done)` gets every run recorded
so far (`done`: (config_id, seed) -> trials row) and returns the next runs to
train, none of them already done; an empty list ends the study. A sampler
keeps no state between calls that `done` cannot rebuild, so a resumed study
proposes exactly what an uninterrupted one would.

    >>> from sweep.driver.samplers import GridSampler
    >>> from sweep.spec import parse
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nseeds=[0,1]', "d.toml")
    >>> runs = GridSampler().propose(study, {})
    >>> len(runs), GridSampler().propose(study, {r.key: {} for r in runs})
    (2, [])
"""

from __future__ import annotations

from typing import Mapping, Protocol

from ...spec import Run, Study

Done = Mapping[tuple[str, int], dict]


class Sampler(Protocol):
    def propose(self, study: Study, done: Done) -> list[Run]: ...


def next_trial(done: Done) -> int:
    """The first free trial number, for samplers whose runs are not a fixed plan."""
    return 1 + max((int(row["trial"]) for row in done.values()), default=-1)
