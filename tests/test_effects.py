"""Effects on planted maps: a knob that moves the edge by a known factor, one that rescues
known cells, censored edges reported as bounds, the `cells` restriction, and a knob that does
nothing (shift 1, rescue 0), so the arithmetic is pinned both ways."""

import doctest
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sweep.answers import effects
from sweep.results import maps, reports
from sweep.results.reports import ResultsError

# A geometric grid: neighbouring learning rates are a factor 3 apart.
LRS = [1e-4 * 3**i for i in range(8)]
SEEDS = 3
BASE = {"study": "planted", "example": "exploding_gradients", "activation": "relu", "scaler": "none",
        "optimizer": "adam", "loss": "binary_crossentropy", "schedule": "constant", "batch_size": 32,
        "clipnorm": None, "global_clipnorm": None, "clipvalue": None, "initial_loss": 0.7, "final_loss": 0.3}


def setting(stable_seeds: list[int], **axes) -> list[dict]:
    """One setting's runs: at LRS[i], stable_seeds[i] of the SEEDS seeds are stable, the rest nan."""
    return [{**BASE, **axes, "learning_rate": lr, "seed": s, "status": "stable" if s < k else "nan"}
            for lr, k in zip(LRS, stable_seeds) for s in range(SEEDS)]


def edge_at(i: int | None, **axes) -> list[dict]:
    """Stable below LRS[i], nan from it on (i None: stable to the grid's end; 0: nothing stable)."""
    i = len(LRS) if i is None else i
    return setting([SEEDS] * i + [0] * (len(LRS) - i), **axes)


def planted(*settings: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return maps.build(pd.DataFrame([r for s in settings for r in s]))


def row(frame: pd.DataFrame, axis: str, value: str) -> pd.Series:
    rows = frame[(frame["axis"] == axis) & (frame["value"] == value)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_a_knob_that_moves_every_edge_by_x3():
    m, b = planted(edge_at(2, batch_size=16), edge_at(3, activation="tanh", batch_size=16),
                   edge_at(3), edge_at(4, activation="tanh"),
                   edge_at(4, batch_size=128), edge_at(5, activation="tanh", batch_size=128))
    pairs = effects.pair_shifts(m, b, "activation", "tanh", "relu")
    assert len(pairs) == 3
    assert pairs["shift_low"].tolist() == pytest.approx([3, 3, 3])
    assert (pairs["shift_low"] == pairs["shift_high"]).all()
    assert set(pairs["direction"]) == {"up"}
    r = row(effects.effects(m, b), "activation", "tanh")
    assert (r["reference"], r["reference_source"], r["n_pairs"], r["n_censored"]) == ("relu", "default", 3, 0)
    assert r["edge_shift_censored"] == ""
    assert [r["edge_shift"], r["edge_shift_low"], r["edge_shift_high"]] == pytest.approx([3, 3, 3])
    assert (r["share_up"], r["share_down"], r["share_same"]) == (1.0, 0.0, 0.0)
    # relu fails from LRS[2], LRS[3], LRS[4]: 6 + 5 + 4 cells; tanh rescues the first of each.
    assert (r["n_failing_cells"], r["n_rescued"]) == (15, 3)
    assert r["rescue_rate"] == pytest.approx(3 / 15)
    # One more stable learning rate, a factor 3 wider: log10(3) decades more.
    assert r["range_change"] == pytest.approx(math.log10(3))
    assert effects.describe(r).startswith("activation=tanh vs relu: edge x3 [3, 3] over 3 pairs (up 100 %")


def test_a_knob_that_does_nothing_shifts_by_1_and_rescues_nothing():
    m, b = planted(edge_at(2, batch_size=16), edge_at(2, batch_size=16, clipnorm=1.0),
                   edge_at(5), edge_at(5, clipnorm=1.0))
    r = row(effects.effects(m, b), "clipnorm", "1")
    assert (r["reference"], r["n_pairs"], r["edge_shift_censored"]) == ("none", 2, "")
    assert [r["edge_shift"], r["edge_shift_low"], r["edge_shift_high"]] == [1.0, 1.0, 1.0]
    assert (r["share_up"], r["share_down"], r["share_same"]) == (0.0, 0.0, 1.0)
    assert (r["n_failing_cells"], r["n_rescued"], r["rescue_rate"]) == (6 + 3, 0, 0.0)
    assert r["range_change"] == 0.0
    assert set(effects.pair_shifts(m, b, "clipnorm", 1.0, None)["direction"]) == {"same"}


def rescue_study() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Without clipping, stable below LRS[4]: 4 failing cells in each of two settings (8).
    With clipnorm 1: LRS[4] and LRS[5] stable by 2 of 3 seeds (rescued), LRS[6] by 1 of 3 (not)."""
    clipped = [SEEDS] * 4 + [2, 2, 1, 0]
    return planted(edge_at(4, batch_size=16), setting(clipped, batch_size=16, clipnorm=1.0),
                   edge_at(4), setting(clipped, clipnorm=1.0))


def test_a_knob_rescues_exactly_the_planted_cells():
    m, b = rescue_study()
    r = effects.axis_effect(m, b, "clipnorm", 1.0, None)
    assert (r["n_failing_cells"], r["n_rescued"], r["rescue_rate"]) == (8, 4, 0.5)
    assert (r["value"], r["reference"], r["n_pairs"]) == ("1", "none", 2)
    assert r["edge_shift"] == pytest.approx(9)  # edge LRS[4] -> LRS[6]
    pairs = effects.pair_shifts(m, b, "clipnorm", "1.0", "none")  # text values are read as the axis's type
    assert pairs["n_rescued"].tolist() == [2, 2] and pairs["n_failing_cells"].tolist() == [4, 4]


def test_cells_restrict_the_failing_cells_and_the_pairs():
    m, b = rescue_study()
    only_16 = m["batch_size"] == 16
    r = effects.axis_effect(m, b, "clipnorm", 1.0, None, cells=only_16)
    assert (r["n_pairs"], r["n_failing_cells"], r["n_rescued"]) == (1, 4, 2)
    at_lr4 = m["learning_rate"] == LRS[4]
    r = effects.axis_effect(m, b, "clipnorm", 1.0, None, cells=at_lr4)
    assert (r["n_pairs"], r["n_failing_cells"], r["n_rescued"], r["rescue_rate"]) == (2, 2, 2, 1.0)
    at_lr6 = m["learning_rate"] == LRS[6]
    r = effects.axis_effect(m, b, "clipnorm", 1.0, None, cells=at_lr6)
    assert (r["n_failing_cells"], r["n_rescued"], r["rescue_rate"]) == (2, 0, 0.0)
    # Masked cells of the value's settings only: no reference cell, so no pair and nothing to rescue.
    r = effects.axis_effect(m, b, "clipnorm", 1.0, None, cells=m["clipnorm"].notna())
    assert (r["n_pairs"], r["n_failing_cells"]) == (0, 0) and math.isnan(r["rescue_rate"])
    assert math.isnan(r["edge_shift"]) and "no pairs" in effects.describe(r)
    with pytest.raises(ValueError, match="mask"):
        effects.axis_effect(m, b, "clipnorm", 1.0, None, cells=only_16.reset_index(drop=True).iloc[:3])


def test_censored_edges_are_bounds_never_numbers():
    m, b = planted(
        edge_at(3, batch_size=16), edge_at(None, batch_size=16, activation="tanh"),
        edge_at(0, batch_size=16, activation="sigmoid"),
        edge_at(3), edge_at(None, activation="tanh"), edge_at(0, activation="sigmoid"),
        # A reference stable to the grid's end: against another such, nothing is known.
        edge_at(None, batch_size=128), edge_at(None, batch_size=128, activation="tanh"),
        edge_at(0, batch_size=128, activation="sigmoid"))
    pairs = effects.pair_shifts(m, b, "activation", "tanh", "relu").sort_values("batch_size")
    assert pairs["shift_low"].tolist() == pytest.approx([0, 81, 81])  # batch sizes "128", "16", "32"
    assert pairs["shift_high"].tolist() == [math.inf] * 3
    assert pairs["direction"].tolist() == ["unknown", "up", "up"]
    out = effects.effects(m, b)
    up = row(out, "activation", "tanh")
    assert (up["edge_shift_censored"], up["n_censored"]) == (">=", 3)
    assert up["edge_shift"] == pytest.approx(81) and up["edge_shift_high"] == math.inf
    assert up["share_unknown"] == pytest.approx(1 / 3)
    assert "edge x>=81 [" in effects.describe(up)
    down = row(out, "activation", "sigmoid")
    assert (down["edge_shift_censored"], down["share_down"]) == ("<=", 1.0)
    assert down["edge_shift"] == pytest.approx(1 / 27) and down["edge_shift_low"] == 0.0
    assert "edge x<=0.037 [0, " in effects.describe(down)
    assert (down["n_never_stable"], down["never_stable_status"], up["n_never_stable"]) == (3, "nan", 0)
    assert "nothing stable with the value in 3 pairs (nan)" in effects.describe(down)
    assert down["n_range_pairs"] == 0 and math.isnan(down["range_change"])  # nothing stable: no range


def test_a_median_that_censoring_leaves_open_is_reported_as_a_range():
    m, b = planted(edge_at(2, batch_size=16), edge_at(2, batch_size=16, activation="tanh"),
                   edge_at(6), edge_at(None, activation="tanh"),
                   edge_at(1, batch_size=128), edge_at(4, batch_size=128, activation="tanh"))
    r = row(effects.effects(m, b), "activation", "tanh")  # pairs x1, [3, inf], x27
    assert r["edge_shift_censored"] == "between" and math.isnan(r["edge_shift"])
    assert [r["edge_shift_min"], r["edge_shift_max"]] == pytest.approx([3, 27])
    assert "edge x3 to 27 [" in effects.describe(r)


def test_reference_is_the_most_common_value_when_the_default_was_not_swept():
    m, b = planted(edge_at(2, batch_size=16), edge_at(3, batch_size=128),
                   edge_at(4, batch_size=128, activation="tanh"))
    refs = effects.reference_values("exploding_gradients", b)
    assert (refs["batch_size"], refs["activation"], refs["clipnorm"], refs["scaler"]) == (128, "relu", None, "none")
    out = effects.effects(m, b)
    assert sorted(zip(out["axis"], out["value"])) == [("activation", "tanh"), ("batch_size", "16")]
    r = row(out, "batch_size", "16")
    assert (r["reference"], r["reference_source"]) == ("128", "most common")
    assert r["edge_shift"] == pytest.approx(1 / 3) and "most common" in effects.describe(r)
    given = effects.effects(m, b, reference={"activation": "tanh"})
    assert row(given, "activation", "relu")["reference_source"] == "given"
    with pytest.raises(ValueError, match="batch_size=32 is not in the study"):
        effects.effects(m, b, reference={"batch_size": 32})
    with pytest.raises(ValueError, match="not a setting axis"):
        effects.axis_effect(m, b, "learning_rate", 0.1, 0.01)


def test_write_and_load_round_trip_and_refuse_other_versions(tmp_path):
    m, b = rescue_study()
    written = effects.write(tmp_path, m, b)
    loaded = effects.load_effects(tmp_path)
    pd.testing.assert_frame_equal(written, loaded)
    assert loaded.columns.tolist() == effects.EFFECT_COLUMNS.names
    path = tmp_path / effects.EFFECTS_FILE
    assert pq.ParquetFile(path).schema_arrow.metadata[b"schema_version"] == reports.SCHEMA_VERSION.encode()
    table = pq.read_table(path).replace_schema_metadata({"schema_version": "0"})
    pq.write_table(table, path)
    with pytest.raises(ResultsError, match=f"{path}: schema_version 0"):
        effects.load_effects(tmp_path)
    with pytest.raises(ResultsError, match="no such file"):
        effects.load_effects(tmp_path / "elsewhere")
    assert effects.effects(*planted()).columns.tolist() == effects.EFFECT_COLUMNS.names


def test_module_docstring_example():
    assert doctest.testmod(effects).failed == 0
