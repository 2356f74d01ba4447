"""The driver: runs a study to the end and records every run exactly once.

* `session`: `sweep run`'s loop read top to bottom: lock the study directory, resume from
  the Parquet record, ask the sampler for runs, hand them to a pool, commit the rows, write
  the maps and answers;
* `samplers`: which runs come next (grid, boundary, tpe);
* `pool`, `raypool`, `workers`: where runs train: in this process, or on Ray actors, one
  per GPU (CPU slots without one), with dead workers and timeouts turned into rows;
* `cluster`: the Ray cluster (an existing one, or a private local one on 127.0.0.1);
* `optuna_study`, `optuna_journal`: the Optuna study kept level with the Parquet record;
* `progress`: the progress line of `sweep run`.

Only the driver process touches the study's storage; workers train and return rows.
May import: the answers, the results, the engines, the study file, the catalog and the
verdict rules; never plots, probes or claims.

    >>> from sweep.driver.samplers import get_sampler
    >>> type(get_sampler("grid")).__name__
    'GridSampler'
"""
