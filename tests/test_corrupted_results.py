"""Corrupted results: a truncated part, a part of another schema version, a foreign file, in
trials/ or curves/. The loaders raise naming the file; `sweep run`, `sweep map` and `sweep show`
exit 2 naming it and change nothing; no row is ever dropped silently (`fault_cases.corrupted_case`)."""

import pytest

import fault_cases


@pytest.mark.parametrize("name", sorted(fault_cases.CORRUPTIONS))
def test_refused_by_name(name, tmp_path):
    result = fault_cases.corrupted_case(name, tmp_path)
    assert result.ok, "\n".join(result.problems)


def test_a_hidden_temp_file_is_not_a_row_and_is_tidied(tmp_path):
    """What a killed write leaves (`.part-*.tmp`) is neither read nor refused, and the next run removes it."""
    import sweep

    fault_cases.recorded_study(tmp_path)
    study_dir = tmp_path / "crash"
    part = sorted((study_dir / "trials").glob("part-*.parquet"))[0]
    temp = study_dir / "trials" / f".{part.name}.1234abcd.tmp"
    temp.write_bytes(part.read_bytes()[:50])
    assert len(sweep.load_trials(study_dir)) == 16
    fault_cases.recorded_study(tmp_path)  # the same study again: nothing to train, the driver tidies
    assert not temp.exists()
    assert len(sweep.load_trials(study_dir)) == 16
