"""Labelled-data fractions: stratified, patient-grouped, reproducible subsets of a split."""

from __future__ import annotations

import hashlib

import numpy as np

from featstore.errors import ManifestError


def select_fraction(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                    seed: int) -> np.ndarray:
    """A subset of ``rows`` holding about ``fraction`` of them, sorted.

    Whole groups (patients) are drawn, never parts of one; rows with an empty group are
    groups of their own. Single-label data is stratified: each class (a group's most frequent
    label) keeps ``round(fraction * groups of that class)`` groups, and at least one, so no
    class vanishes. Multilabel data draws groups uniformly. The same arguments always give
    the same subset.

    Raises
    ------
    ManifestError
        ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ManifestError(f"fraction {fraction} is outside (0, 1]")
    rows = np.asarray(rows)
    if fraction == 1:
        return np.sort(rows)
    keys = np.asarray([g if g else f"\0row{r}" for g, r in zip(groups[rows], rows, strict=True)])
    uniq, inverse = np.unique(keys, return_inverse=True)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2 and labels.shape[1] > 1:
        n = max(1, round(fraction * len(uniq)))
        chosen = rng.choice(len(uniq), size=n, replace=False)
    else:
        y = labels.reshape(len(labels), -1)[rows, 0]
        group_label = np.empty(len(uniq), dtype=y.dtype)
        for g in range(len(uniq)):
            values, counts = np.unique(y[inverse == g], return_counts=True)
            group_label[g] = values[counts.argmax()]
        chosen = []
        for c in np.unique(group_label):
            members = np.flatnonzero(group_label == c)
            n = max(1, round(fraction * len(members)))
            chosen.extend(rng.choice(members, size=n, replace=False).tolist())
        chosen = np.asarray(chosen)
    return np.sort(rows[np.isin(inverse, chosen)])


def ids_sha256(ids: np.ndarray) -> str:
    """Hex sha256 of a set of ids (order-free): records which rows a run trained on."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def split_by_group(labels: np.ndarray, groups: np.ndarray, *, val: float, test: float,
                   seed: int) -> np.ndarray:
    """Assign train/val/test to rows, whole groups at a time, stratified by the group's label.

    ``labels`` (N,) single-label; a group's label is its highest (for graded tasks the worse
    eye decides). Within each label, groups are shuffled with ``seed``; the first ``test``
    share goes to test, the next ``val`` share to val, the rest to train.
    """
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_label = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(group_label, inverse, labels.astype(np.int64))
    rng = np.random.default_rng(seed)
    group_split = np.empty(len(uniq), dtype=object)
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        n_test = round(test * len(members))
        n_val = round(val * len(members))
        group_split[members[:n_test]] = "test"
        group_split[members[n_test:n_test + n_val]] = "val"
        group_split[members[n_test + n_val:]] = "train"
    return group_split[inverse]
