"""The grid sampler: every planned run once.

    >>> from sweep.spec import parse
    >>> study = parse('[study]\\nname="g"\\nexample="exploding_gradients"\\nseeds=[0,1]\\n'
    ...               '[grid]\\nlearning_rate=[0.01,0.1]', "g.toml")
    >>> [(r.trial, r.config.learning_rate, r.seed) for r in GridSampler().propose(study, {})]
    [(0, 0.01, 0), (1, 0.01, 1), (2, 0.1, 0), (3, 0.1, 1)]
"""

from __future__ import annotations

from ...spec import Run, Study
from .base import Done


class GridSampler:
    """Every planned (configuration, seed) exactly once, in plan order; `trial` is the plan index."""

    def propose(self, study: Study, done: Done) -> list[Run]:
        return [run for run in study.plan() if run.key not in done]
