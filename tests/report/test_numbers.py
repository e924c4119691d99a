"""One way to write a metric over seeds, in the terminal, the report and the figures."""

from __future__ import annotations

import math

from featstore.report.numbers import ci, mean_sd


def test_mean_sd_over_seeds_with_the_seed_count_and_undefined_seeds_said():
    assert mean_sd([0.90, 0.92]) == "0.9100 ± 0.0141"  # sd with ddof=1: a sample of seeds
    assert mean_sd([0.9123]) == "0.9123"  # one seed: a value, never a spread
    assert mean_sd([0.90, math.nan, 0.92], n=True) == "0.9100 ± 0.0141 (n=2, 1 undefined)"
    assert mean_sd([0.9123], n=True) == "0.9123 (n=1)"
    assert mean_sd([math.nan, math.nan], n=True) == mean_sd([]) == "undefined"


def test_ci_is_the_mean_bootstrap_interval_over_seeds():
    assert ci([0.80, 0.84], [0.90, 0.94]) == "[0.8200, 0.9200]"
    assert ci([math.nan], [math.nan]) == "-" and ci([], [], none="") == ""
    assert ci([math.nan, 0.8], [math.nan, 0.9]) == "[0.8000, 0.9000]"  # undefined seeds left out
