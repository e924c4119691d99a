"""How featstore writes a metric over seeds, in the terminal tables, the report and its
figures alike: ``mean ± sd`` with 4 decimals (AUC differences of a few thousandths are what
the study compares), a bootstrap 95% CI as ``[low, high]``, and ``undefined`` for a metric
no seed could compute (one class in test)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIGITS = 4


def mean_sd(values: Sequence[float], *, n: bool = False) -> str:
    """``mean ± sd`` over seeds of the defined values; one value: the value. With ``n``, the
    seeds counted follow, and how many were undefined (left out): ``(n=3, 1 undefined)``."""
    v = np.asarray(values, dtype=float)
    ok = v[~np.isnan(v)]
    if not len(ok):
        return "undefined"
    text = (f"{ok[0]:.{DIGITS}f}" if len(ok) == 1
            else f"{ok.mean():.{DIGITS}f} ± {ok.std(ddof=1):.{DIGITS}f}")
    if n:
        gaps = f", {len(v) - len(ok)} undefined" if len(ok) < len(v) else ""
        text += f" (n={len(ok)}{gaps})"
    return text


def ci(low: Sequence[float], high: Sequence[float], *, none: str = "-") -> str:
    """The bootstrap 95% CI averaged over seeds, ``[low, high]``; ``none`` where no seed
    computed one."""
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if not len(lo) or np.isnan(lo).all():
        return none
    return f"[{np.nanmean(lo):.{DIGITS}f}, {np.nanmean(hi):.{DIGITS}f}]"
