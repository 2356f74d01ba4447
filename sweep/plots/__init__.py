"""Plots: PNG figures of a study (matplotlib's Agg canvas; no display needed).

* `figures`: the study's figures and `write_plots`, which writes every one that applies;
* `answers`: effects charts and P(stable) by axis for large studies;
* `curvature`: the sharpness telemetry against the measured edge.

May import: the answers, the results, the engines' curvature thresholds, the study file
and the catalog; never the driver, probes or claims.

    >>> from sweep.plots.figures import PLOTS_DIR
    >>> PLOTS_DIR
    'plots'
"""
