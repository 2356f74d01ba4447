"""Answers: what users ask of a map, computed from the results.

* `effects`: what each axis value does to the edge (shift with a bootstrap interval,
  share up and down, rescue rate), effects.parquet;
* `conditions`: where each failure status occurs, as a short conjunction of axis
  conditions with its precision and coverage, conditions.parquet.

May import: the results, the engines' shared facts, the study file, the catalog and the
verdict rules; never plots, the driver, probes or claims.

    >>> from sweep.answers.conditions import CONDITIONS_FILE
    >>> CONDITIONS_FILE
    'conditions.parquet'
"""
