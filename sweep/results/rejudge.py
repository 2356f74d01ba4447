"""Runs recorded under an earlier verdict rule, judged again from their curves.

Schema 3 judges `stalled` against min(l0, baseline_loss) (`sweep.verdict`). A study
directory written before holds statuses by l0 alone; reading it is refused
(`reports.JUDGED_SINCE`), and the next `sweep run` of its study file calls `rejudge`
before anything else: every such trials part is read, each trained run judged again from
its recorded epoch losses with its baseline (`engines.baseline`), and the part written
back under the same name, atomically, as schema 3. Nothing trains again. A crash between
two parts leaves the rest for the next start; the maps and answers are rebuilt from the
trials at the end of that session, as always.

    >>> from sweep.results.rejudge import rejudge
    >>> rejudge("results/old-study", study)                  # doctest: +SKIP
    12
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

from ..engines.baseline import baseline_loss
from ..spec import Study, config_from_dict
from ..verdict import ORCHESTRATOR_STATUSES, judge
from .reports import (CURVE_COLUMNS, TRIAL_COLUMNS, arrow_table, older_rule, open_checked, part_files,
                      part_version, ratio, read_checked, write_atomic)


def outdated(study_dir: str | os.PathLike) -> list[Path]:
    """The trials parts judged by an earlier rule than this version's."""
    return [p for p in part_files(Path(study_dir) / "trials") if older_rule(part_version(p))]


def _epoch_losses(study_dir: Path) -> dict[int, list[float]]:
    """trial -> its losses of epochs 1..E, from every curves part."""
    by_trial: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for part in part_files(study_dir / "curves"):
        table = read_checked(open_checked(part, CURVE_COLUMNS), CURVE_COLUMNS)
        for trial, epoch, loss in zip(*(table.column(c).to_pylist() for c in ("trial", "epoch", "loss"))):
            if epoch > 0:
                by_trial[trial].append((epoch, math.nan if loss is None else loss))
    return {t: [loss for _, loss in sorted(points)] for t, points in by_trial.items()}


def rejudge(study_dir: str | os.PathLike, study: Study) -> int:
    """Judge again every run of the outdated trials parts; returns how many changed status."""
    study_dir = Path(study_dir)
    parts = outdated(study_dir)
    if not parts:
        return 0
    losses = _epoch_losses(study_dir)
    changed = 0
    for part in parts:
        rows = read_checked(open_checked(part, TRIAL_COLUMNS, verdicts=False), TRIAL_COLUMNS).to_pylist()
        for row in rows:
            curve = losses.get(row["trial"], [])
            if row["status"] in ORCHESTRATOR_STATUSES or (not curve and row["first_nonfinite_step"] is None):
                continue  # an error or timeout, never judged; a trained run always has its curve
            lc = baseline_loss(study, config_from_dict(row))
            status = judge(row["initial_loss"], curve, row["first_nonfinite_step"], study.verdict, lc)
            changed += status != row["status"]
            final = row["final_loss"]
            row.update(status=status, baseline_loss=lc,
                       final_baseline_ratio=None if final is None else ratio(final, lc))
        write_atomic(arrow_table(rows, TRIAL_COLUMNS), part)
    return changed
