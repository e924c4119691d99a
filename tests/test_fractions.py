"""Label fractions: stratified by class, whole patients only, reproducible from the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featstore.cli import main
from featstore.data.fractions import ids_sha256, select_fraction
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
    assert exc.value.code == 0 and "+-" in capsys.readouterr().out
