"""Samplers: which runs a study trains next (`base` says what a sampler must do).

One module per sampler, named as study files name it (`sampler = "grid"`):

* `grid`: every planned run once, in plan order;
* `boundary`: each setting's stability edge, bisected with few runs;
* `tpe`: Optuna's TPE over the grid's configurations.

    >>> from sweep.driver.samplers import get_sampler
    >>> type(get_sampler("boundary")).__name__
    'BoundarySampler'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Done, Sampler, next_trial
from .boundary import BoundarySampler
from .grid import GridSampler
from .tpe import DEFAULT_TPE_TRIALS, TPESampler

if TYPE_CHECKING:
    import optuna

__all__ = ["BoundarySampler", "DEFAULT_TPE_TRIALS", "Done", "GridSampler", "Sampler", "TPESampler",
           "get_sampler", "next_trial"]


def get_sampler(name: str, ostudy: "optuna.Study | None" = None) -> Sampler:
    """The sampler of a study file's `sampler` field; tpe needs the study's Optuna study."""
    if name == "grid":
        return GridSampler()
    if name == "boundary":
        return BoundarySampler()
    if name == "tpe":
        if ostudy is None:
            import optuna

            ostudy = optuna.create_study(direction="minimize")
        return TPESampler(ostudy)
    raise ValueError(f"sampler {name!r} is not available in this version")
