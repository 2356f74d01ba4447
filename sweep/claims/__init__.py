"""Claims: `sweep reproduce`, the documents' claims next to what was measured.

* `studies`: the study files each example's claims are measured with;
* `reproduce`: trains them and judges every claim (claims.parquet);
* `report`: REPORT.md.

May import: every stage below it (probes, driver, plots, answers, results, engines, the
study file, the catalog and the verdict rules). Only the command line imports it.

    >>> from sweep.claims.studies import KINDS
    >>> KINDS
    ('sweep', 'keras', 'space')
"""
