"""stability-sweep: where TensorFlow training is stable, measured.

    >>> import sweep
    >>> trials = sweep.load_trials("results/quickstart")   # doctest: +SKIP
"""

from ._version import __version__
from .answers.conditions import load_conditions
from .answers.effects import load_effects
from .results.maps import load_boundary, load_map
from .results.reports import load_curves, load_trials

__all__ = ["__version__", "load_trials", "load_curves", "load_map", "load_boundary", "load_effects",
           "load_conditions"]
