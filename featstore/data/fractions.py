"""Labelled-data fractions and splits: stratified, patient-grouped, reproducible."""

from __future__ import annotations

import numpy as np

from featstore._hashing import sha256_bytes
from featstore.errors import ManifestError


def _group_index(groups: np.ndarray | None, rows: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of groups, each row's group number) of ``rows``, whose groups are ``groups``;
    rows with an empty group (or no groups at all) are groups of their own."""
    own = np.char.add("\0row", np.asarray(rows).astype(str))  # sorts before any name
    if groups is None:
        keys = own
    else:
        named = np.asarray(groups, dtype=object).astype(str)  # any str dtype, StringDType too
        keys = np.where(named != "", named, own)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return len(uniq), inverse.reshape(-1)


def _multilabel(labels: np.ndarray) -> bool:
    return labels.ndim == 2 and labels.shape[1] > 1


def select_fraction(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                    fraction: float, seed: int) -> np.ndarray:
    """A subset of ``rows`` holding about ``fraction`` of them, sorted.

    Whole groups (patients) are drawn, never parts of one; rows with an empty group (or
    ``groups`` None) are groups of their own. Single-label data is stratified: each class (a
    group's most frequent label) keeps ``round(fraction * groups of that class)`` groups, and
    at least one, so no class vanishes. Multilabel data draws groups uniformly. The same
    arguments always give the same subset. Linear in rows (plus a sort): no loop over groups.

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
    n_groups, inverse = _group_index(None if groups is None else groups[rows], rows)
    rng = np.random.default_rng(seed)
    if _multilabel(labels):
        n = max(1, round(fraction * n_groups))
        chosen = rng.choice(n_groups, size=n, replace=False)
    else:
        y = labels.reshape(len(labels), -1)[rows, 0]
        values, code = np.unique(y, return_inverse=True)
        counts = np.zeros((n_groups, len(values)), dtype=np.int64)
        np.add.at(counts, (inverse, code.reshape(-1)), 1)
        group_label = values[counts.argmax(axis=1)]  # most frequent; a tie: the smallest
        chosen = []
        for c in np.unique(group_label):
            members = np.flatnonzero(group_label == c)
            n = max(1, round(fraction * len(members)))
            chosen.extend(rng.choice(members, size=n, replace=False).tolist())
        chosen = np.asarray(chosen)
    return np.sort(rows[np.isin(inverse, chosen)])


def ids_sha256(ids: np.ndarray) -> str:
    """Hex sha256 of a set of ids (order-free): records which rows a run trained on."""
    return sha256_bytes("\n".join(sorted(map(str, ids))).encode())


def split_by_group(labels: np.ndarray, groups: np.ndarray | None, *, val: float, test: float,
                   seed: int) -> np.ndarray:
    """Assign ``"train"``, ``"val"`` or ``"test"`` to each row, whole groups at a time.

    The one splitter of featstore: release readers carve their val/test with it, and a probe
    carves a val set out of train with ``split_by_group(y[train], group[train], val=0.2,
    test=0.0, seed=0)``. Rows with an empty group (or ``groups=None``) are groups of their
    own. The same arguments always give the same split.

    - Single-label ``labels`` (N,) or (N, 1): stratified. A group's label is its highest (for
      graded tasks the worse eye decides); within each label, the groups are shuffled with
      ``seed``, the first ``round(test * n)`` go to test, the next ``round(val * n)`` to val,
      the rest to train (so a label with few groups may give none to val). A split asked for
      that comes out empty overall gets one group from train (a small release never has an
      empty val or test); too few groups for that is an error naming the counts.
    - Multilabel ``labels`` (N, K), K > 1: groups are drawn uniformly, ``round(test * n)`` to
      test and ``round(val * n)`` to val, at least one each when its share is above 0.

    Returns
    -------
    np.ndarray of str (object), shape (N,)

    Raises
    ------
    ManifestError
        ``val`` or ``test`` below 0, or ``val + test`` above 1; too few groups to give train
        and every split asked for at least one.
    """
    if val < 0 or test < 0 or val + test > 1:
        raise ManifestError(f"split shares val={val}, test={test}: each must be >= 0 and "
                            "together <= 1")
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.empty(0, dtype=object)
    n_groups, inverse = _group_index(groups, np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    group_split = np.full(n_groups, "train", dtype=object)
    if _multilabel(labels):
        n_test = min(n_groups, max(1, round(test * n_groups)) if test > 0 else 0)
        n_val = min(n_groups - n_test, max(1, round(val * n_groups)) if val > 0 else 0)
        if n_test + n_val:
            chosen = rng.choice(n_groups, size=n_test + n_val, replace=False)
            group_split[chosen[:n_test]] = "test"
            group_split[chosen[n_test:]] = "val"
        return group_split[inverse]
    group_label = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(group_label, inverse, labels.reshape(len(labels), -1)[:, 0].astype(np.int64))
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        n_test = round(test * len(members))
        n_val = round(val * len(members))
        group_split[members[:n_test]] = "test"
        group_split[members[n_test:n_test + n_val]] = "val"
    _fill_empty_splits(group_split, group_label, rng, val=val, test=test)
    return group_split[inverse]


def _fill_empty_splits(group_split: np.ndarray, group_label: np.ndarray,
                       rng: np.random.Generator, *, val: float, test: float) -> None:
    """A split asked for (share > 0) that rounding left empty gets one group from train, of
    the label with the most train groups, so a small release never has an empty val or test.

    Raises ManifestError when there are too few groups for train plus every split asked for.
    """
    wanted = [name for name, share in (("test", test), ("val", val)) if share > 0]
    for name in wanted:
        if (group_split == name).any():
            continue
        train = np.flatnonzero(group_split == "train")
        if len(train) < 2:
            counts = {k: int((group_split == k).sum()) for k in ("train", "val", "test")}
            raise ManifestError(
                f"{len(group_split)} patients (groups) cannot fill train and "
                f"{' and '.join(wanted)} (val={val:g}, test={test:g}; after the split: "
                f"{', '.join(f'{k} {v}' for k, v in counts.items())}): add data or give the "
                "dataset its own split")
        labels, counts = np.unique(group_label[train], return_counts=True)
        pool = train[group_label[train] == labels[counts.argmax()]]
        group_split[rng.choice(pool)] = name


VAL_CARVE_FRACTION = 0.2
VAL_SPLIT = "val split"


def training_splits(split: np.ndarray, y: np.ndarray, group: np.ndarray | None,
                    exclude: np.ndarray | None = None, *, name: str = "dataset",
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(train, val, test, val source) row positions: the protocol every stage trains by
    (probes, fusion, finetuning), so a (fraction, seed) means the same rows everywhere.

    A missing val split is carved from train: whole patients (``group``), stratified by
    label, seed 0, :data:`VAL_CARVE_FRACTION` of them (:func:`split_by_group`). Rows flagged
    in ``exclude`` are left out of every split.

    Raises
    ------
    ManifestError
        No train or test rows, or no val split and a train too small to carve one from.
    """
    keep = ~exclude if exclude is not None else np.ones(len(split), bool)
    tr = np.flatnonzero((split == "train") & keep)
    va = np.flatnonzero((split == "val") & keep)
    te = np.flatnonzero((split == "test") & keep)
    for which, rows in (("train", tr), ("test", te)):
        if len(rows) == 0:
            raise ManifestError(f"{name}: no rows in split {which!r}")
    if len(va):
        return tr, va, te, VAL_SPLIT
    try:
        carved = split_by_group(y[tr], None if group is None else group[tr],
                                val=VAL_CARVE_FRACTION, test=0.0, seed=0)
    except ManifestError as e:  # one patient in train: nothing to carve
        raise ManifestError(f"{name}: no val split, and train is too small to carve one "
                            f"({e})") from None
    return tr[carved == "train"], tr[carved == "val"], te, CARVED_VAL


CARVED_VAL = f"{VAL_CARVE_FRACTION:.0%} of train patients (seed 0)"


def val_source(split: np.ndarray) -> str:
    """How val is made for a dataset with these splits (as :func:`training_splits` says it),
    without drawing anything: what a planner needs to name a run before it runs."""
    return VAL_SPLIT if bool((np.asarray(split) == "val").any()) else CARVED_VAL
