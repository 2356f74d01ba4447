"""Probes: measurements beside the sweep itself.

* `lrfind`: the LR range test as fastai and Lightning define it, on one setting;
* `lrfind_study`: that test on every setting of a study, beside the measured edge
  (`sweep lrfind`);
* `bench`: the engines against the plain `model.fit` loop on the same runs (`sweep bench`).

May import: the driver (its pools and cluster), the answers, the results, the engines,
the study file, the catalog and the verdict rules; never the claims.

    >>> from sweep.probes.lrfind import DEFAULT_RULE
    >>> DEFAULT_RULE
    'fastai'
"""
