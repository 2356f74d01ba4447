"""What `sweep reproduce` trains for each document claim: three study files per example.

* `reproduce-<example>`: the document's failure and fix configurations over five seeds,
  each across a short learning-rate sweep (a decade below the document's learning rate up
  to 1.0 on the half-decade ladder), on the study's default engine: the edges around the
  document's configuration.
* `reproduce-<example>-keras`: the document's exact configurations (its learning rates,
  optimizer, batch size, epochs) on the keras engine, the reference, five seeds: what the
  claim is judged on. A study is a grid, so where the fix changes the learning rate as well
  (exploding_gradients) the two crossed configurations are trained too.
* `reproduce-<example>-space`: the example's wider space on the population engine, three
  seeds: the learning-rate ladder 1e-4..10, every optimizer the engine trains, batch sizes
  16, 32 and 128, three activations, and the example's own knob (the axis the document's
  fix changes, `fix_change`) at each of its values. It is a full grid, not the boundary
  sampler: where a failure status occurs is answered from the runs that have it, and
  the boundary sampler trains no learning rate above a setting's first non-stable one,
  so a `nan` beyond a `stalled` edge would never be seen.

With `--quick` the names start `reproduce-quick-` and every study is a few runs of
two epochs (the CI form, not reference figures)::

    >>> from sweep.claims.studies import claim_studies
    >>> s = claim_studies("exploding_gradients", quick=True)
    >>> s["sweep"].name, s["sweep"].grid["clipnorm"], s["sweep"].grid["learning_rate"]
    ('reproduce-quick-exploding_gradients', (None, 1.0), (0.001, 0.01, 0.1, 1.0))
    >>> full = claim_studies("exploding_gradients")["space"]
    >>> full.name, full.engine, full.grid["clipnorm"], len(full.plan())
    ('reproduce-exploding_gradients-space', 'population', (None, 0.1, 1.0), 2673)
"""

from __future__ import annotations

from typing import Any

from ..catalog import EXAMPLES, Example
from ..spec import AXIS_DEFAULTS, CLIP_AXES, OPTIMIZERS, SCALERS, SETTING_AXES, Study, parse
from ..spec import format_value as _fmt

SEEDS = (0, 1, 2, 3, 4)  # at least five seeds per configuration (docs/design.md)
SHARPNESS = "{every_epochs = 5, iterations = 20, samples = 100}"
QUICK_SEEDS = (0, 1)
QUICK_EPOCHS = 2
# The half-decade learning-rate ladder of the example study files (studies/*.toml).
LR_LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)

# The wider space every example is explored in (beside its own knob).
SPACE = {
    "learning_rate": LR_LADDER,
    "optimizer": OPTIMIZERS,
    "batch_size": (16, 32, 128),
    # sigmoid: the saturating activation tf-optimizer-error.md names as a cause.
    "activation": ("relu", "tanh", "sigmoid"),
}
SPACE_SEEDS = (0, 1, 2)
# The values of the example's own knob, where it has more than the document's two:
# a tighter clip than the document's, and both scalers the documents name.
KNOB_VALUES: dict[str, tuple] = {"clipnorm": (None, 0.1, 1.0), "scaler": SCALERS}
QUICK_SPACE = {"learning_rate": (1e-3, 0.1, 10.0), "optimizer": ("adam", "sgd"), "batch_size": (32,),
               "activation": ("relu",)}
QUICK_SPACE_SEEDS = (0,)
QUICK_REFERENCE_SEEDS = (0,)

KINDS = ("sweep", "keras", "space")


def describe(overrides: dict) -> str:
    """A configuration as the document sets it: the axes it names."""
    return ", ".join(f"{a}={_fmt(v)}" for a, v in overrides.items())


def fix_change(ex: Example) -> tuple[str, Any, Any]:
    """(axis, fix value, failure value): the one setting axis the document's fix changes."""
    fail, fix = ex.config(ex.failure), ex.config(ex.fix)
    changed = [a for a in SETTING_AXES if fail[a] != fix[a]]
    if len(changed) != 1:
        raise ValueError(f"{ex.id}: the fix changes {changed or 'no setting axis'}; one is expected")
    return changed[0], fix[changed[0]], fail[changed[0]]


def sweep_learning_rates(example: Example, quick: bool) -> tuple[float, ...]:
    """The learning rates around the document's: a decade below the lowest up to 1.0
    (or a decade above the highest if that is larger); quick: the document's, 0.1 and 1.0."""
    doc = _document_learning_rates(example)
    if quick:
        return tuple(sorted(set(doc) | {0.1, 1.0}))
    top = max(1.0, doc[-1] * 10)
    return tuple(lr for lr in LR_LADDER if doc[0] / 10 * 0.999 <= lr <= top * 1.001)


def _document_learning_rates(ex: Example) -> list[float]:
    return sorted({ex.config(ex.failure)["learning_rate"], ex.config(ex.fix)["learning_rate"]})


def _document_axes(ex: Example) -> dict[str, tuple]:
    """The setting axes the document's failure or fix names, with their values in both."""
    fail, fix = ex.config(ex.failure), ex.config(ex.fix)
    return {a: tuple(dict.fromkeys([fail[a], fix[a]])) for a in SETTING_AXES
            if fail[a] != fix[a] or a in ex.failure or a in ex.fix}


def _toml_values(values) -> str:
    return ", ".join('"none"' if v is None else (f'"{v}"' if isinstance(v, str) else repr(v)) for v in values)


def study_toml(ex: Example, kind: str, quick: bool = False, engine: str | None = None) -> str:
    """The study file of one of an example's claim studies (`KINDS`), as `sweep run` reads it."""
    if kind not in KINDS:
        raise ValueError(f"study kind {kind!r}; allowed: {', '.join(KINDS)}")
    name = f"reproduce-{'quick-' if quick else ''}{ex.id}" + ("" if kind == "sweep" else f"-{kind}")
    epochs = min(QUICK_EPOCHS, ex.epochs) if quick else ex.epochs
    doc = f"the document's failure {describe(ex.failure)} and fix {describe(ex.fix)}"
    if kind == "sweep":
        what, seeds = f"{doc}, with a short learning-rate sweep around each", QUICK_SEEDS if quick else SEEDS
        grid = {"learning_rate": sweep_learning_rates(ex, quick), **_document_axes(ex)}
    elif kind == "keras":
        what, seeds, engine = f"{doc}, exactly, on the reference engine", QUICK_REFERENCE_SEEDS if quick else SEEDS, "keras"
        grid = {"learning_rate": tuple(_document_learning_rates(ex)), **_document_axes(ex)}
    else:
        axis = fix_change(ex)[0]
        knob = KNOB_VALUES.get(axis, _document_axes(ex)[axis])
        what, seeds, engine = f"the wider space of {doc}", QUICK_SPACE_SEEDS if quick else SPACE_SEEDS, "population"
        grid = {**(QUICK_SPACE if quick else SPACE), axis: knob}
    lines = [f"# {ex.document}, {ex.section}: {what} (written by `sweep reproduce`).",
             "[study]", f'name = "{name}"', f'example = "{ex.id}"', f"epochs = {epochs}",
             f"seeds = {list(seeds)}", 'sampler = "grid"']
    if engine:
        lines.append(f'engine = "{engine}"')
    lines.append("[grid]")
    lines += [f"{axis} = [{_toml_values(values)}]" for axis, values in grid.items()]
    if kind == "sweep" and not quick:
        # The curvature's prediction of the edge beside the measured one in REPORT.md, on a
        # 100-row subset of the training set (the cost: docs/curvature.md).
        lines += ["[telemetry]", f"sharpness = {SHARPNESS}"]
    return "\n".join(lines) + "\n"


def claim_studies(example_id: str, quick: bool = False, engine: str | None = None) -> dict[str, Study]:
    """The example's claim studies by kind; `engine` sets the sweep study's engine only
    (the reference is keras and the space population by definition)."""
    ex = EXAMPLES[example_id]
    return {kind: parse(study_toml(ex, kind, quick, engine), f"<reproduce {example_id} {kind}>") for kind in KINDS}


def space_text(study: Study) -> str:
    """The explored space written out: the axes it varies with their values, the seeds and
    epochs; then the axes it holds at the example's values (absent clipping, and the axes
    added since at their defaults, left unsaid)."""
    varied, held = [], []
    for axis in ("learning_rate", *SETTING_AXES):
        values = study.grid[axis]
        if len(values) > 1:
            varied.append(f"{axis} {', '.join(_fmt(v) for v in values)}")
        elif values not in ((None,), (AXIS_DEFAULTS.get(axis),)):
            held.append(f"{axis}={_fmt(values[0])}")
    return (f"{'; '.join(varied)}; {len(study.seeds)} seed{'s' * (len(study.seeds) > 1)}, "
            f"{study.epochs} epochs ({len(study.plan())} runs); held: {', '.join(held)}")
