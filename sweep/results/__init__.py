"""Results: what a sweep leaves on disk, and the views read straight off it.

* `reports`: the trials and curves datasets (columns, atomic part files, typed loaders,
  the rows a run becomes);
* `maps`: map.parquet and boundary.parquet, built from the trials (P(stable), Wilson
  intervals, each setting's edge);
* `rangetest`: lrfind.parquet, and its suggestions joined onto the boundary;
* `tables`: the terminal tables of `sweep map` and `sweep show`;
* `repro`: one recorded run as a standalone Keras script (`sweep repro`);
* `faults`: the named crash points every writer passes (the reliability suite's hooks).

May import: the engines (an `Outcome` becomes rows), the study file, the catalog and the
verdict rules; never the answers, plots, driver, probes or claims above it.

    >>> from sweep.results import maps
    >>> maps.wilson(3, 3)[1]
    1.0
"""
