"""stability-sweep: where TensorFlow training is stable, measured.

    >>> import sweep
    >>> trials = sweep.load_trials("results/quickstart")   # doctest: +SKIP
"""

__version__ = "0.1.0"

from .conditions import load_conditions  # noqa: E402
from .effects import load_effects  # noqa: E402
from .maps import load_boundary, load_map  # noqa: E402
from .reports import load_curves, load_trials  # noqa: E402

__all__ = ["__version__", "load_trials", "load_curves", "load_map", "load_boundary", "load_effects",
           "load_conditions"]
