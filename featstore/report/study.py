"""``featstore report``: the study's tables and figures from a store's persisted runs.

Reads what the stages persisted (probe, finetuning and fusion runs, each set's provenance)
and writes one folder: ``report.html`` (a single file, the figures embedded), ``report.md``
(the figures beside it as PNG) and the PNGs. Computes no run: a run that is not in the
store is not in the report. Figures are drawn with matplotlib's Agg backend (no display).

- per dataset, backbone x method x fraction: mean ± sd over seeds, the bootstrap 95% CI on
  test (averaged over seeds), the best mean per fraction marked;
- ``fractions.png``: the study's main figure, metric against the labelled fraction (log x),
  one line per backbone and method, error bars ± sd over seeds, a panel per dataset;
- ``attention.png``: DVME's mean attention per backbone on test, overall and per class;
- ``map.png``: t-SNE of a sample of one embedding set per dataset, coloured by label;
- provenance of every set: weights file and sha256, preprocessing, versions, who and where;
  random weights flagged.
"""

# the report, in three modules: collect (what it shows), figures, document (html, md)
from featstore.report.collect import (  # noqa: F401
    DatasetReport,
    Row,
    collect,
    display_names,
    provenance_rows,
    short,
    table_cells,
)
from featstore.report.document import (  # noqa: F401
    CSS,
    LEGEND,
    NO_RUNS,
    NOT_IN_STORE,
    RANDOM_BANNER,
    _md,
    build_report,
)
from featstore.report.figures import (  # noqa: F401
    FRAME,
    STYLE,
    attention_figure,
    fraction_figure,
    map_figure,
)
