"""Ordinal decoding: the expected grade of a softmax over grades, cut by thresholds from val."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score


def expected_grade(proba: np.ndarray) -> np.ndarray:
    """Sum over k of p(k) * k, shape (N,)."""
    return proba @ np.arange(proba.shape[1], dtype=proba.dtype)


def decode(expected: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Grade = number of thresholds the expected grade exceeds."""
    return np.searchsorted(np.asarray(thresholds), expected, side="left")


def fit_thresholds(expected: np.ndarray, y: np.ndarray, n_classes: int, *,
                   sweeps: int = 3, candidates: int = 64) -> np.ndarray:
    """Thresholds (n_classes - 1,) maximising quadratic kappa on (expected, y).

    Coordinate ascent from the midpoints 0.5, 1.5, ...: each threshold in turn moves to the
    best of ``candidates`` quantiles of ``expected`` between its neighbours.
    """
    t = np.arange(n_classes - 1, dtype=np.float64) + 0.5
    grid = np.unique(np.quantile(expected, np.linspace(0, 1, candidates)))

    def kappa(th: np.ndarray) -> float:
        return cohen_kappa_score(y, decode(expected, th), weights="quadratic")

    best = kappa(t)
    for _ in range(sweeps):
        improved = False
        for j in range(len(t)):
            lo = t[j - 1] if j else -np.inf
            hi = t[j + 1] if j + 1 < len(t) else np.inf
            for c in grid[(grid > lo) & (grid < hi)]:
                trial = t.copy()
                trial[j] = c
                k = kappa(trial)
                if k > best + 1e-12:
                    best, t, improved = k, trial, True
        if not improved:
            break
    return t
