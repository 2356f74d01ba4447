"""Plots: views of a study: PNG figures (matplotlib's Agg canvas; no display needed) and
TensorBoard's event files.

* `figures`: the study's figures and `write_plots`, which writes every one that applies;
* `answers`: effects charts and P(stable) by axis for large studies;
* `curvature`: the sharpness telemetry against the measured edge;
* `tensorboard`: TensorBoard event files of a study's runs and its HParams experiment
  (`sweep tensorboard`, and `sweep run --tensorboard` as the rows are committed).

May import: the answers, the results, the engines' curvature thresholds, the study file,
the catalog and the verdict rules; never the driver, probes or claims.

    >>> from sweep.plots.figures import PLOTS_DIR
    >>> PLOTS_DIR
    'plots'
"""
