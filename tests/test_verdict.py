"""The verdict rules of docs/design.md on hand-made curves, each rule at its boundary."""

import math

import pytest

from sweep.verdict import STATUSES, Thresholds, judge, spike_epochs

L0 = 1.0


def test_nonfinite_wins_over_everything():
    assert judge(L0, [0.1, 0.05], first_nonfinite_step=7) == "nan"
    assert judge(L0, [], first_nonfinite_step=0) == "nan"
    assert judge(L0, [100.0, 200.0], first_nonfinite_step=3) == "nan"


@pytest.mark.parametrize("losses, status", [
    # final >= l0 and some epoch reached 10 l0: exactly at both boundaries
    ([10.0, 1.0], "diverged"),
    # peak just below 10 l0 with final at l0: not diverged, and final > 0.95 l0 -> stalled
    ([9.999, 1.0], "stalled"),
    # peak at 10 l0 but final just below l0: the first clause fails; final < 10 l0 -> stalled
    ([10.0, 0.999], "stalled"),
    # final alone at 10 l0 diverges whatever came before
    ([0.5, 10.0], "diverged"),
    # just under 10 l0 at the end: not diverged; final > 0.95 l0 is checked before spikes
    ([0.5, 9.999], "stalled"),
    # an early explosion that recovers below l0 is neither diverged nor stalled
    ([50.0, 0.5], "stable"),
])
def test_diverged_boundaries(losses, status):
    assert judge(L0, losses, None) == status


def test_stalled_boundary_is_strict():
    assert judge(L0, [0.97, 0.95], None) == "stable"  # final == 0.95 l0 is not "> 0.95 l0"
    assert judge(L0, [0.97, 0.9501], None) == "stalled"


def test_unstable_boundary_is_strict():
    assert judge(L0, [0.4, 0.8, 0.3], None) == "stable"  # 0.8 == 2 x lowest before: not above
    assert judge(L0, [0.4, 0.8001, 0.3], None) == "unstable"
    # the first epoch has no epoch before it, and l0 is not an epoch: no spike
    assert judge(L0, [5.0, 0.3], None) == "stable"


def test_spike_counts_against_lowest_so_far():
    assert spike_epochs([1.0, 0.2, 0.5, 0.3, 0.41], 2.0) == [2, 4]
    assert spike_epochs([1.0], 2.0) == []


def test_rules_apply_in_order():
    # diverged before stalled before unstable
    assert judge(L0, [0.1, 20.0, 12.0], None) == "diverged"
    assert judge(L0, [0.1, 0.99], None) == "stalled"


def test_thresholds_from_study():
    t = Thresholds(diverge_factor=3.0, stall_ratio=0.5, spike_factor=1.5)
    assert judge(L0, [0.2, 3.0], None, t) == "diverged"
    assert judge(L0, [0.4, 0.6], None, t) == "stalled"
    assert judge(L0, [0.2, 0.31, 0.1], None, t) == "unstable"
    assert judge(L0, [0.2, 0.29, 0.1], None, t) == "stable"


def test_no_epochs_without_nonfinite_is_a_bug():
    with pytest.raises(ValueError):
        judge(L0, [], None)


def test_status_names_are_the_design_ones():
    assert STATUSES == ("nan", "diverged", "stalled", "unstable", "stable", "error", "timeout")
    assert math.isclose(Thresholds().diverge_factor, 10.0)
