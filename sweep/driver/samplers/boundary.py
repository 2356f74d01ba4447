"""The boundary sampler: find each setting's stability edge with few runs.

A dense grid trains every learning rate of every setting. What a stability
map needs per setting is the edge: the last stable learning rate and the
first non-stable one above it (`maps.edge`). The boundary sampler probes
the study's learning-rate grid (all seeds at each probe; a probe is stable
when a strict majority of its seeds are) and, per setting:

1. starts where the edge is expected: at the bracket of the most similar
   setting already resolved (fewest differing axes), or, for the first
   setting, at the example's default learning rate;
2. gallops away from the probe (steps of 1, 2, 4, ... grid values) until it
   holds a stable probe and a non-stable one above it;
3. bisects in log learning rate between the two until they are neighbouring
   grid values, or their ratio is at most the study's `[boundary] resolution`.

The first setting is searched alone; once it is resolved every other setting
is searched at once (one probe each per round), starting from the nearest
resolved setting's bracket, so a batch holds many configurations.

The sampler keeps no state: every call rebuilds what was probed from `done`,
so a resumed study proposes what an uninterrupted one would. Trial numbers
come from `base.next_trial`.

    >>> from sweep.spec import parse
    >>> study = parse('''
    ... [study]
    ... name = "b"
    ... example = "exploding_gradients"
    ... seeds = [0, 1]
    ... sampler = "boundary"
    ... [grid]
    ... learning_rate = [0.001, 0.01, 0.1, 1.0]
    ... clipnorm = ["none", 1.0]
    ... ''', "b.toml")
    >>> first = BoundarySampler().propose(study, {})
    >>> [(r.trial, r.config.learning_rate, r.config.clipnorm, r.seed) for r in first]
    [(0, 0.01, None, 0), (1, 0.01, None, 1)]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from ...results.maps import is_stable
from ...spec import Config, Run, Study, example_defaults
from ...verdict import ORCHESTRATOR_STATUSES
from .base import Done, next_trial


def _probes(study: Study, done: Done) -> tuple[list[float], dict[tuple, Config], dict[tuple, dict[int, list[str]]]]:
    """The learning-rate grid, each setting's configuration, and each setting's statuses per grid index."""
    lrs = sorted(study.grid["learning_rate"])
    settings: dict[tuple, Config] = {}
    for config in study.configs():
        settings.setdefault(config.setting(), config)
    by_id = {}
    for key, config in settings.items():
        for i, lr in enumerate(lrs):
            by_id[dataclasses.replace(config, learning_rate=lr).config_id] = (key, i)
    seen: dict[tuple, dict[int, list[str]]] = {key: {} for key in settings}
    for (config_id, _seed), row in done.items():
        where = by_id.get(config_id)
        if where is not None:
            seen[where[0]].setdefault(where[1], []).append(str(row["status"]))
    return lrs, settings, seen


def _stable(statuses: list[str]) -> bool:
    trained = [s for s in statuses if s not in ORCHESTRATOR_STATUSES]
    return is_stable({"n_seeds": len(trained), "n_stable": trained.count("stable")})


def bracket(probed: Mapping[int, bool]) -> tuple[int | None, int | None]:
    """(largest stable index below the edge, first non-stable index above the smallest stable one).

    The same rule as `maps.edge`, on grid indices::

        >>> bracket({2: True, 4: True, 6: False, 9: False})
        (4, 6)
        >>> bracket({0: False, 3: True})
        (3, None)
    """
    stable = sorted(i for i, ok in probed.items() if ok)
    if not stable:
        return None, None
    hi = min((i for i, ok in probed.items() if not ok and i > stable[0]), default=None)
    lo = max(i for i in stable if hi is None or i < hi)
    return lo, hi


def next_probe(probed: Mapping[int, bool], lrs: list[float], hint: tuple[int, int | None],
               resolution: float | None = None) -> int | None:
    """The grid index to probe next for one setting, or None when its edge is resolved.

    `probed` maps grid indices already probed to stable or not; `hint` is where the
    edge is expected (a stable index and the non-stable one above it, or None).

        >>> lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
        >>> next_probe({}, lrs, (4, None))
        4
        >>> next_probe({4: True}, lrs, (4, None)), next_probe({4: True, 5: True}, lrs, (4, None))
        (5, 7)
        >>> next_probe({4: True, 5: True, 7: False}, lrs, (4, None))
        6
        >>> next_probe({4: True, 5: True, 6: True, 7: False}, lrs, (4, None)) is None
        True
        >>> next_probe({4: True, 8: False}, lrs, (4, 8), resolution=10.0)
        6
    """
    n = len(lrs)
    if not probed:
        return hint[0]
    lo, hi = bracket(probed)
    if lo is None:
        return _find_stable(probed, n)
    if hi is None:
        if lo == n - 1:
            return None  # stable up to the largest learning rate: no edge in the grid
        if hint[1] is not None and hint[1] > lo and hint[1] not in probed:
            return hint[1]
        return min(n - 1, lo + _gallop_step(probed, lo, up=True))
    if hi - lo <= 1 or (resolution is not None and lrs[hi] / lrs[lo] <= resolution):
        return None
    # Bisect in log learning rate: the grid value nearest the geometric midpoint, strictly inside.
    mid = math.log(lrs[lo] * lrs[hi]) / 2
    return min(range(lo + 1, hi), key=lambda i: abs(math.log(lrs[i]) - mid))


def _gallop_step(probed: Mapping[int, bool], at: int, up: bool) -> int:
    """Twice the distance to the previous probe on the other side of `at` (1 if none): 1, 2, 4, ..."""
    behind = [i for i in probed if (i < at if up else i > at)]
    if not behind:
        return 1
    return 2 * abs(at - (max(behind) if up else min(behind)))


def _find_stable(probed: Mapping[int, bool], n: int) -> int | None:
    """No stable probe yet: gallop down from the lowest probe (too large a step is the usual
    reason), then up from the highest (too small a step). A setting with no stable probe once
    both ends of the grid are reached is taken as stable nowhere: a stable band narrower than
    the gallop's gaps would be missed, the price of not training the whole grid."""
    low, high = min(probed), max(probed)
    if low > 0:
        return max(0, low - _gallop_step(probed, low, up=False))
    if high < n - 1:
        return min(n - 1, high + _gallop_step(probed, high, up=True))
    return None


def _distance(a: tuple, b: tuple) -> int:
    return sum(x != y for x, y in zip(a, b))


def _start(study: Study, lrs: list[float]) -> int:
    """The grid index nearest (in log) the example's default learning rate."""
    default = float(example_defaults(study.example)["learning_rate"])
    return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / default)))


class BoundarySampler:
    """Bisection for each setting's edge; see the module docstring. Usable as `sampler = "boundary"`."""

    def propose(self, study: Study, done: Done) -> list[Run]:
        lrs, settings, seen = _probes(study, done)
        n_seeds = len(study.seeds)
        complete = {key: {i: _stable(s) for i, s in per.items() if len(s) >= n_seeds} for key, per in seen.items()}
        cold = (_start(study, lrs), None)
        finished, resolved = set(), {}
        for key in settings:
            partial = any(len(s) < n_seeds for s in seen[key].values())
            if complete[key] and not partial and next_probe(complete[key], lrs, cold, study.resolution) is None:
                finished.add(key)
                lo, hi = bracket(complete[key])
                if lo is not None:
                    resolved[key] = (lo, hi)
        first = next(iter(settings))
        runs: list[Run] = []
        trial = next_trial(done)
        for key, config in settings.items():
            if key in finished or (key != first and first not in finished and not seen[key]):
                continue  # done, or waiting for the first setting's edge to start from
            hint = cold
            if resolved:
                nearest = min(resolved, key=lambda other: _distance(key, other))
                hint = resolved[nearest]
            # A probe with some seeds recorded (an interrupted session) is finished first.
            partial = [i for i, s in seen[key].items() if len(s) < n_seeds]
            i = partial[0] if partial else next_probe(complete[key], lrs, hint, study.resolution)
            if i is None:
                continue
            probe = dataclasses.replace(config, learning_rate=lrs[i])
            for seed in study.seeds:
                if (probe.config_id, seed) not in done:
                    runs.append(Run(trial, probe, seed))
                    trial += 1
        return runs
