"""`lrfind.parquet`: the LR range test's rows (one per setting, its curve as list columns), read
back typed, and joined onto the study's boundary as `lr_rangetest_suggestion`.

`sweep lrfind` (`probes`) writes the file; the maps read it here, so a rebuilt
boundary keeps the suggestions and only one writer ever writes boundary.parquet.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..spec import SETTING_AXES
from .reports import (TRIAL_COLUMNS, ResultsError, arrow_table, model_fields, open_checked, read_checked, typed,
                      with_model_fields)

LRFIND_FILE = "lrfind.parquet"
BOUNDARY_COLUMN = "lr_rangetest_suggestion"


# lrfind.parquet: one row per setting. The curve is kept as list columns (one list per row).
_IDENTITY = [TRIAL_COLUMNS.field("study"), TRIAL_COLUMNS.field("example")]
LRFIND_COLUMNS = pa.schema(_IDENTITY + [TRIAL_COLUMNS.field(a) for a in SETTING_AXES] + [
    ("rule", pa.string()),  # a key of RULES
    ("seed", pa.int64()),  # initial weights and batch order: the study's first seed
    ("start_lr", pa.float64()),
    ("end_lr", pa.float64()),
    ("num_it", pa.int64()),  # batches the test runs at most
    ("steps", pa.int64()),  # batches trained
    ("stopped_on_divergence", pa.bool_()),  # the stop rule fired (smoothed loss > 4 x best)
    ("first_nonfinite_step", pa.int64()),  # first batch whose loss was NaN or inf (null: none)
    ("suggestion", pa.float64()),  # the rule's suggested learning rate (null: too few points)
    ("suggestion_step", pa.int64()),  # its index in the curve
    ("wall_seconds", pa.float64()),
    ("curve_lr", pa.list_(pa.float64())),  # per recorded batch: its learning rate,
    ("curve_loss", pa.list_(pa.float64())),  # its loss (NaN: not trained, after a NaN),
    ("curve_smoothed_loss", pa.list_(pa.float64())),  # the smoothed loss the tool reads
])


def lrfind_schema(knobs: Sequence[pa.Field]) -> pa.Schema:
    """The lrfind.parquet columns of a study whose model knobs have these columns."""
    return with_model_fields(LRFIND_COLUMNS, knobs, SETTING_AXES[-1])


def setting_key(values, knobs: Sequence[str] = ()) -> tuple:
    """A setting's axis values (and its `knobs`' values) as plain Python (absent clipping None),
    to match rows across files."""
    out = []
    for a in (*SETTING_AXES, *knobs):
        v = values[a]
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif a == "batch_size":
            out.append(int(v))
        elif isinstance(v, (int, float, np.number)):
            out.append(float(v))
        else:
            out.append(str(v))
    return tuple(out)


def read_rows(path: Path) -> tuple[list[dict], pa.Schema]:
    """The rows of an lrfind.parquet and its columns (`lrfind_schema`: with the study's knobs)."""
    try:
        pf = open_checked(path, LRFIND_COLUMNS, verdicts=False)  # range tests hold no verdict
        schema = lrfind_schema(model_fields(pf.schema_arrow))
        return read_checked(pf, schema).to_pylist(), schema
    except ResultsError as exc:
        raise ResultsError(f"{exc}; `sweep lrfind` writes it (delete it to run the range test again)") from None
    except Exception as exc:  # pyarrow: damaged data pages behind a readable footer
        raise ResultsError(f"{path}: not a readable Parquet file ({exc}); delete it and run `sweep lrfind` again") \
            from None


def with_suggestions(study_dir: str | os.PathLike, boundary: pa.Table) -> pa.Table:
    """`boundary` with `lr_rangetest_suggestion` filled from the study's `lrfind.parquet`, if any
    (settings it does not hold stay null). `maps.write` calls this, so a rebuilt boundary keeps
    the suggestions and only one writer ever writes boundary.parquet."""
    path = Path(study_dir) / LRFIND_FILE
    if not path.is_file() or boundary.num_rows == 0:
        return boundary
    knobs = [f.name for f in model_fields(boundary.schema)]
    rows, _ = read_rows(path)
    found = {setting_key(r, knobs): r["suggestion"] for r in rows if all(k in r for k in knobs)}
    values = [found.get(setting_key(r, knobs)) for r in boundary.select([*SETTING_AXES, *knobs]).to_pylist()]
    i = boundary.schema.get_field_index(BOUNDARY_COLUMN)
    return boundary.set_column(i, boundary.schema.field(i), pa.array(values, pa.float64()))


def load_lrfind(study_dir: str | os.PathLike) -> pd.DataFrame:
    """`lrfind.parquet` of a study directory, axes as categoricals like `load_trials`."""
    path = Path(study_dir) / LRFIND_FILE
    if not path.is_file():
        raise ResultsError(f"{path}: no such file; `sweep lrfind STUDY.toml` writes it")
    return typed(arrow_table(*read_rows(path)))
