"""`PopulationEngine`: the engine protocol's `train(study, runs)`, by groups and populations.

It sorts runs into groups that can share one compiled program (`group_key`, and
`shared_activations` for the activation), sends the runs it cannot express to the keras
engine, cuts each group into populations of K runs (`sizing`), and trains the populations on
`concurrent_populations` threads. A population that runs out of memory is split in
half and retried, so the worker never crashes on it::

    >>> shared_activations(["tanh", "relu", "relu"], 5e6)
    [('relu', 'tanh')]
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ...catalog import EXAMPLES
from ...spec import CLIP_AXES, Config, Run, Study
from .. import Outcome, run_data
from .model import KERAS_LOSSES, Graph, Unsupported, initial_model
from .sizing import concurrent_populations, population_size, populations
from .step import SLOTS, WRITTEN_LOSSES
from .train import train_population

# Activations share a program while the group trains at most this many samples (runs x epochs x
# training-set size): below it, computing every activation of the group in each layer costs
# less than compiling a program per activation, with room left for activations dearer than tanh.
MERGE_RUN_SAMPLES = 1e7

log = logging.getLogger(__name__)


def group_key(config: Config) -> tuple:
    """Runs with the same key can share a program: these axes change its ops or shapes (the
    activation changes its ops too, but a program can hold several: `shared_activations`); the
    model knobs change the model, SGD's momentum the slots and the update."""
    return (config.batch_size, config.loss, config.optimizer, config.model,
            config.optimizer == "sgd" and config.momentum != 0)


def shared_activations(activations: Sequence[str], run_samples: float) -> list[tuple[str, ...]]:
    """The activations of one group, as the sets that share a program: all in one while the
    group trains at most MERGE_RUN_SAMPLES samples, else one program each.

    >>> shared_activations(["tanh", "relu"], 5e7)
    [('relu',), ('tanh',)]
    """
    names = sorted(set(activations))
    return [tuple(names)] if run_samples <= MERGE_RUN_SAMPLES else [(a,) for a in names]


# One population's work: the indices of its real runs, its runs padded to the group's population
# size with repeats of the last, and what chooses its program (clipping kinds, activations).
Work = tuple[list[int], list[Run], tuple[frozenset, tuple[str, ...]]]


def schedule(study: Study, runs: Sequence[Run], groups: list[list[int]], max_k: int | None) -> list[Work]:
    """The groups (lists of indices into `runs`) cut into populations, in the order to train them.

    Every group's first population comes first, so that populations trained side by side at
    the start belong to different groups and each thread compiles its own program rather
    than waiting for another's. Then the longest first: the smallest batches, whose epochs
    take the most steps, so that no thread is left with a long population at the end while
    the others idle."""
    work: list[list[Work]] = []
    for same_key in groups:
        activations = [runs[i].config.activation for i in same_key]
        first = runs[same_key[0]]
        n = len(run_data(study, first.config)[0])
        # A Keras graph computes one activation's model: a program each.
        graph = isinstance(initial_model(study, first.config, first.seed)[0], Graph)
        for shared in shared_activations(activations, math.inf if graph else len(same_key) * study.epochs * n):
            members = [i for i in same_key if runs[i].config.activation in shared]
            first = runs[members[0]]
            arch, _ = initial_model(study, first.config, first.seed)
            k = population_size(arch, first.config.batch_size, n, first.config.optimizer, max_k, len(shared))
            size, parts = populations(members, k)
            # A group's clipping kinds are fixed for all its populations: one program per group.
            kinds = frozenset(a for a in CLIP_AXES if any(getattr(runs[i].config, a) is not None for i in members))
            work.append([(part, [runs[i] for i in part] + [runs[part[-1]]] * (size - len(part)),
                          (kinds, shared)) for part in parts])

    def steps_first(w: Work) -> int:
        return w[1][0].config.batch_size

    return sorted((g[0] for g in work), key=steps_first) + sorted((w for g in work for w in g[1:]), key=steps_first)


class PopulationEngine:
    """Trains runs in populations of K, one compiled program per group (see the package docstring).

    `jit=False` runs the same program without XLA; `max_k` caps K. The class is longer than
    most because it is the whole engine protocol (`train`, `check`, `capacity`, `program_key`)
    in one place; each method is short and reads on its own."""

    name = "population"
    batched = True

    def __init__(self, jit: bool = True, max_k: int | None = None):
        self.jit, self.max_k = jit, max_k
        self.unjitted: set[tuple] = set()  # (example, activations) whose programs XLA failed to compile

    @staticmethod
    def program_key(run: Run) -> tuple:
        """What the driver groups a batch by: runs of one key share a program (`group_key`)."""
        return group_key(run.config)

    def capacity(self, study: Study) -> int:
        """Runs this worker trains at once in this study: K per population (from its memory or
        GPU memory, for the study's group whose runs need the most) times populations at a time.
        0 when the engine trains none of the study's runs itself (a model it cannot express)."""
        firsts = {group_key(c): c for c in study.configs()}
        ks = []
        for c in firsts.values():
            try:
                self.check(study, Run(0, c, study.seeds[0]))
            except Exception:  # Unsupported, or a user builder that fails: no population to size
                continue
            n = len(run_data(study, c)[0])
            arch, _ = initial_model(study, c, study.seeds[0])
            ks.append(population_size(arch, c.batch_size, n, c.optimizer, self.max_k))
        return min(ks, default=0) * concurrent_populations()

    def train(self, study: Study, runs: Sequence[Run]) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException | None] = [None] * len(runs)
        by_key: dict[tuple, list[int]] = {}
        on_keras: list[int] = []
        for i, run in enumerate(runs):
            try:
                self.check(study, run)
                by_key.setdefault(group_key(run.config), []).append(i)
            except Unsupported:
                on_keras.append(i)
            except Exception as exc:  # a user builder that fails: the run records its error
                results[i] = exc
        if on_keras:
            from ..keras_engine import KerasEngine

            for i, outcome in zip(on_keras, KerasEngine().train(study, [runs[i] for i in on_keras])):
                results[i] = outcome

        started = time.perf_counter()
        work = schedule(study, runs, list(by_key.values()), self.max_k)
        for part, padded, _ in work:
            c = padded[0].config
            log.info("population of %d runs (%d with padding): batch size %d, %s, %s",
                     len(part), len(padded), c.batch_size, c.loss, c.optimizer)
        with ThreadPoolExecutor(max_workers=concurrent_populations()) as pool:
            done = pool.map(lambda w: self._train_fitting(study, w[1], w[2]), work)
            for (part, _, _), outcomes in zip(work, done):
                for i, outcome in zip(part, outcomes):
                    results[i] = outcome
        # Populations ran side by side: scale the runs' shares so that they add up to the time
        # this call took, keeping each population's own division among its runs.
        trained = [r for r in results if isinstance(r, Outcome) and r.engine == self.name]
        total = sum(r.wall_seconds for r in trained)
        if total > 0:
            scale = (time.perf_counter() - started) / total
            for r in trained:
                r.wall_seconds *= scale
        return results  # type: ignore[return-value]

    @staticmethod
    def check(study: Study, run: Run) -> None:
        """Raise Unsupported when this engine cannot train the run exactly as Keras would."""
        c = run.config
        # The program computes in float32: a mixed-precision run trains on the keras engine.
        if c.precision != "float32":
            raise Unsupported(f"mixed precision ({c.precision}): the population engine computes in float32")
        if c.optimizer not in SLOTS:
            raise Unsupported(f"optimizer {c.optimizer!r}")
        if study.example in EXAMPLES and c.loss not in KERAS_LOSSES and c.loss not in WRITTEN_LOSSES:
            raise Unsupported(f"loss {c.loss!r}")
        initial_model(study, c, run.seed)  # raises Unsupported for a model it cannot express

    def _train_fitting(self, study: Study, runs: list[Run], program_of: tuple) -> list[Outcome | BaseException]:
        """Train one population; if it runs out of memory, train its halves instead. A program XLA
        cannot compile (an op with no XLA kernel in a user's model) trains without XLA."""
        import tensorflow as tf

        kinds, shared = program_of
        # The hand-written losses are evaluated sample by sample (tf.vectorized_map), a program
        # XLA compiles for minutes per population shape: it never pays back, so they run without.
        jit = self.jit and runs[0].config.loss not in WRITTEN_LOSSES and (study.example, shared) not in self.unjitted
        try:
            return train_population(study, runs, jit=jit, clip_kinds=kinds, activations=shared)
        except tf.errors.InvalidArgumentError as exc:
            if not jit or "XLA" not in str(exc):
                raise
            log.warning("XLA cannot compile %s (%s); it trains without XLA", study.example,
                        str(exc).strip().splitlines()[0][:200])
            self.unjitted.add((study.example, shared))
            return self._train_fitting(study, runs, program_of)
        except tf.errors.ResourceExhaustedError as exc:
            if len(runs) == 1:
                return [exc]
            half = len(runs) // 2
            return (self._train_fitting(study, runs[:half], program_of)
                    + self._train_fitting(study, runs[half:], program_of))
