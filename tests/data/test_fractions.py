"""Label fractions and splits: stratified by class, whole patients only, reproducible from the
seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featstore.cli import main
from featstore.data.fractions import ids_sha256, select_fraction, split_by_group
from featstore.errors import ManifestError
from tests.conftest import SIZE, TINY


def cohort(n_patients=200, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient)
    # 10% of patients positive: a rare class, as in screening data
    labels = np.repeat((rng.random(n_patients) < 0.1).astype(int), per_patient)[:, None]
    return np.arange(len(groups)), labels, groups


def test_subset_is_stratified_and_takes_whole_patients():
    rows, labels, groups = cohort()
    sub = select_fraction(rows, labels, groups, 0.25, seed=1)
    picked = set(groups[sub])
    assert all(set(np.flatnonzero(groups == g)) <= set(sub) for g in picked)  # whole patients
    pos_all = len(set(groups[labels[:, 0] == 1]))
    pos_sub = len(set(groups[sub][labels[sub, 0] == 1]))
    assert pos_sub == round(0.25 * pos_all)  # the rare class keeps its share
    assert abs(len(sub) - 0.25 * len(rows)) <= 2 * 3


def test_subset_is_reproducible_from_its_seed_and_differs_across_seeds():
    rows, labels, groups = cohort()
    a = select_fraction(rows, labels, groups, 0.1, seed=7)
    assert np.array_equal(a, select_fraction(rows, labels, groups, 0.1, seed=7))
    assert ids_sha256(a) != ids_sha256(select_fraction(rows, labels, groups, 0.1, seed=8))


def test_every_class_keeps_an_example_at_tiny_fractions():
    rows, labels, groups = cohort()
    sub = select_fraction(rows, labels, groups, 0.001, seed=0)
    assert set(labels[sub, 0]) == {0, 1}


def test_bad_fraction_is_refused():
    rows, labels, groups = cohort(10)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ManifestError, match="outside"):
            select_fraction(rows, labels, groups, bad, seed=0)


def carve_val(labels, groups, seed=0):
    """The probe stage's call: a val set carved out of train for a dataset without one."""
    return split_by_group(labels, groups, val=0.2, test=0.0, seed=seed)


def test_carved_val_takes_whole_patients_stratified_by_class():
    rows, labels, groups = cohort()
    split = carve_val(labels[:, 0], groups)
    assert set(split) == {"train", "val"}
    for g in set(groups):  # no patient on both sides
        assert len(set(split[groups == g])) == 1
    for c in (0, 1):  # each class gives its share of patients to val
        patients = set(groups[labels[:, 0] == c])
        in_val = set(groups[(labels[:, 0] == c) & (split == "val")])
        assert len(in_val) == round(0.2 * len(patients))


def test_carved_val_is_reproducible_from_its_seed():
    _, labels, groups = cohort()
    a = carve_val(labels[:, 0], groups, seed=0)
    assert np.array_equal(a, carve_val(labels[:, 0], groups, seed=0))
    assert not np.array_equal(a, carve_val(labels[:, 0], groups, seed=1))


def test_rows_without_a_patient_are_patients_of_their_own():
    labels = np.arange(100) % 2
    split = carve_val(labels, np.full(100, "", dtype=object))
    assert (split == "val").sum() == 20  # 10 of each class's 50 single-row groups
    assert np.array_equal(split, carve_val(labels, None))  # no group column: the same
    groups = np.array(["p1"] * 10 + [""] * 90, dtype=object)  # one patient, 90 loose rows
    split = carve_val(labels, groups)
    assert len(set(split[:10])) == 1 and set(split[10:]) == {"train", "val"}


def test_multilabel_carve_draws_whole_patients_uniformly():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i:02d}" for i in range(40)], 3)
    labels = rng.integers(0, 2, (len(groups), 14))
    split = carve_val(labels, groups)
    for g in set(groups):
        assert len(set(split[groups == g])) == 1
    assert len(set(groups[split == "val"])) == 8  # 20% of 40 patients
    assert np.array_equal(split, carve_val(labels, groups))
    few = split_by_group(labels[:6], groups[:6], val=0.1, test=0.0, seed=0)
    assert len(set(groups[:6][few == "val"])) == 1  # a share above 0 carves at least one


def test_three_way_split_keeps_patients_whole_and_single_label_columns_work():
    _, labels, groups = cohort()
    split = split_by_group(labels, groups, val=0.1, test=0.2, seed=0)  # labels (N, 1)
    assert set(split) == {"train", "val", "test"}
    for g in set(groups):
        assert len(set(split[groups == g])) == 1
    assert np.array_equal(split, split_by_group(labels[:, 0], groups, val=0.1, test=0.2, seed=0))


def test_bad_split_shares_are_refused():
    _, labels, groups = cohort(10)
    for val, test in ((-0.1, 0.0), (0.6, 0.5)):
        with pytest.raises(ManifestError, match="split shares"):
            split_by_group(labels, groups, val=val, test=test, seed=0)


def test_probe_sweep_over_fractions_and_seeds(capsys, image_csv, store_dir):
    store = ["--store", str(store_dir)]
    with pytest.raises(SystemExit):
        main(["extract", "--data", str(image_csv), "-b", TINY, "--image-size", str(SIZE), *store])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--data", str(image_csv), *store, "--fractions", "0.25,1.0",
              "--seeds", "2", "--bootstrap", "50", "--json"])
    assert exc.value.code == 0
    recs = [r for r in json.loads(capsys.readouterr().out) if r["primary"]]
    assert sorted((r["fraction"], r["seed"]) for r in recs) == [(0.25, 0), (0.25, 1), (1.0, 0),
                                                                 (1.0, 1)]
    small = [r for r in recs if r["fraction"] == 0.25]
    assert all(r["n_train"] == 8 and r["n_val"] == 16 for r in small)  # val never subsampled
    assert small[0]["train_ids_sha256"] != small[1]["train_ids_sha256"]
    with pytest.raises(SystemExit) as exc:
        main(["probe", "--data", str(image_csv), *store, "--fractions", "0.5", "--seeds", "2",
              "--bootstrap", "50"])
    assert exc.value.code == 0 and "±" in capsys.readouterr().out


def _select_fraction_as_before(rows, labels, groups, fraction, seed):
    """select_fraction as it was written before it was vectorised (a Python loop over the
    groups, quadratic without patient groups): the subsets a stored run trained on."""
    rows = np.asarray(rows)
    if groups is None:
        groups = np.full(len(labels), "", dtype=object)
    sub = groups[rows]
    keys = np.asarray([g if g else f"\0row{r}" for g, r in zip(sub, rows, strict=True)])
    uniq, inverse = np.unique(keys, return_inverse=True)
    rng = np.random.default_rng(seed)
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
    return np.sort(rows[np.isin(inverse, np.asarray(chosen))])


@pytest.mark.parametrize("grouping", ["patients", "none", "some empty"])
def test_subsets_are_the_rows_earlier_versions_drew(grouping):
    """Stored runs name their (fraction, seed): the vectorised draw must pick the very rows
    the per-group loop did, ties between a patient's labels included."""
    rng = np.random.default_rng(7)
    n = 3000
    labels = rng.integers(0, 5, (n, 1))
    groups = np.asarray([f"p{i}" for i in rng.integers(0, 400, n)], dtype=object)
    if grouping == "some empty":
        groups[rng.random(n) < 0.3] = ""
    rows = np.sort(rng.choice(n, 2000, replace=False))
    for fraction, seed in ((0.01, 0), (0.1, 3), (0.5, 1)):
        expected = _select_fraction_as_before(rows, labels, None if grouping == "none"
                                              else groups, fraction, seed)
        got = select_fraction(rows, labels, None if grouping == "none" else groups, fraction,
                              seed)
        assert np.array_equal(got, expected), (grouping, fraction, seed)
