"""The vectorised bootstrap gives the numbers of the per-resample scikit-learn loop it
replaced: same resamples, same metric on each, same undefined resamples left out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from featstore.errors import ProbeError
from featstore.metrics import _bootstrap_values
from featstore.probe import bootstrap_ci, primary_score


def reference_values(task, y_true, proba, pred=None, *, n_boot=1000, seed=0):
    """The old bootstrap_ci loop: one draw and one scikit-learn call per resample."""
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-label kappa and confusion-matrix warnings
        for b in range(n_boot):
            idx = rng.integers(0, len(y_true), len(y_true))
            try:
                values[b] = primary_score(task, y_true[idx], proba[idx],
                                          None if pred is None else pred[idx])
            except (ValueError, ProbeError):  # a resample with a single class
                values[b] = np.nan
    return values


def reference_ci(values, level=0.95):
    if np.isnan(values).all():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def assert_same_as_reference(task, y, proba, pred=None, *, n_boot=300, seed=0):
    want = reference_values(task, y, proba, pred, n_boot=n_boot, seed=seed)
    got = _bootstrap_values(task, y, proba, pred, n_boot=n_boot, seed=seed)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    lo, hi = bootstrap_ci(task, y, proba, pred, n_boot=n_boot, seed=seed)
    np.testing.assert_allclose([lo, hi], reference_ci(want), rtol=0, atol=1e-12)
    return want


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def rounded(p, decimals=1):
    """Coarse scores: many ties within and across classes."""
    return np.round(p, decimals)


def test_resample_indices_drawn_as_one_array_equal_successive_draws():
    for n in (1, 7, 1000, 20001):
        a = np.random.default_rng(5)
        b = np.random.default_rng(5)
        blocks = [b.integers(0, n, (k, n)) for k in (3, 1, 6)]
        assert np.array_equal(np.stack([a.integers(0, n, n) for _ in range(10)]),
                              np.concatenate(blocks))


@pytest.mark.parametrize("n", [6, 15, 200])
def test_binary_auc_with_ties_and_single_class_resamples(n):
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.25).astype(int)
    y[:2] = [0, 1]
    p1 = rounded(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1))
    values = assert_same_as_reference("binary", y, np.stack([1 - p1, p1], 1))
    if n <= 15:
        assert np.isnan(values).any()  # some resamples had a single class


def test_binary_auc_on_boolean_and_float_labels_and_distinct_scores():
    rng = np.random.default_rng(1)
    y = rng.random(120) < 0.4
    p1 = rng.random(120)
    proba = np.stack([1 - p1, p1], 1)
    assert_same_as_reference("binary", y, proba)
    assert_same_as_reference("binary", y.astype(float), proba)


def test_binary_single_class_test_set_gives_nan_interval():
    y = np.ones(30, int)
    p1 = np.linspace(0, 1, 30)
    lo, hi = bootstrap_ci("binary", y, np.stack([1 - p1, p1], 1), n_boot=50)
    assert np.isnan(lo) and np.isnan(hi)


def test_binary_non_finite_score_leaves_out_the_resamples_that_hold_it():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    p1 = rng.random(40)
    p1[7] = np.nan
    values = assert_same_as_reference("binary", y, np.stack([1 - p1, p1], 1))
    assert np.isnan(values).any() and not np.isnan(values).all()


@pytest.mark.parametrize("n", [8, 60, 300])
def test_multiclass_accuracy(n):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 4, n)
    proba = softmax(rng.normal(0, 1, (n, 4)) + 1.5 * np.eye(4)[y])
    assert_same_as_reference("multiclass", y, proba)
    pred = rng.integers(0, 4, n)  # a decision given instead of the argmax
    assert_same_as_reference("multiclass", y, proba, pred)


@pytest.mark.parametrize("n", [5, 12, 40, 400])
def test_ordinal_kappa_from_argmax(n):
    rng = np.random.default_rng(n)
    y = np.minimum(rng.poisson(0.8, n), 4)  # grade 4 rare: absent from many resamples
    proba = softmax(rng.normal(0, 1, (n, 5)) + 2.0 * np.eye(5)[y])
    values = assert_same_as_reference("ordinal", y, proba)
    if n <= 5:
        assert np.isnan(values).any()  # resamples with one grade, true and predicted


@pytest.mark.parametrize("n", [6, 30, 250])
def test_ordinal_kappa_from_given_grades(n):
    rng = np.random.default_rng(100 + n)
    y = np.minimum(rng.poisson(1.0, n), 4)
    proba = softmax(rng.normal(0, 1, (n, 5)))
    pred = np.clip(y + rng.integers(-1, 2, n), 0, 4)
    pred[rng.random(n) < 0.3] = 2  # grades in pred that y lacks and the other way round
    assert_same_as_reference("ordinal", y, proba, pred)


def test_ordinal_kappa_with_gaps_in_the_grades():
    rng = np.random.default_rng(3)
    y = rng.choice([0, 2, 4], 50)  # weights follow the positions of present labels
    proba = softmax(rng.normal(0, 1, (50, 5)))
    pred = rng.choice([0, 1, 4], 50)
    assert_same_as_reference("ordinal", y, proba, pred)


@pytest.mark.parametrize("n", [10, 40, 300])
def test_multilabel_mean_auc_leaves_out_labels_constant_in_a_resample(n):
    rng = np.random.default_rng(n)
    rates = np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.4])
    Y = (rng.random((n, len(rates))) < rates).astype(int)
    Y[0, :5] = 1  # every label but the last has a positive somewhere...
    Y[1:, 4] = 0  # ...label 4 only in row 0: missing from about 1/e of the resamples...
    Y[:, 5] = 0  # ...and the last is constant everywhere
    P = rounded(np.clip(0.3 * Y + rng.random(Y.shape) * 0.7, 0, 1))
    assert_same_as_reference("multilabel", Y, P)
    idx = np.random.default_rng(0).integers(0, n, (300, n))
    constant = Y[idx].min(axis=1) == Y[idx].max(axis=1)  # (resample, label)
    assert constant[:, 4].any()  # a label left out of some resamples' means


def test_multilabel_resample_with_no_label_scored_is_left_out():
    Y = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [1, 1]])
    P = np.array([[0.9, 0.2], [0.1, 0.1], [0.4, 0.8], [0.4, 0.3], [0.6, 0.6]])
    values = assert_same_as_reference("multilabel", Y, P)
    assert np.isnan(values).any() and not np.isnan(values).all()


def test_multilabel_non_finite_score_only_counts_where_its_label_is_scored():
    rng = np.random.default_rng(4)
    Y = (rng.random((25, 3)) < [0.5, 0.08, 0.5]).astype(int)
    Y[0, 1] = 1
    P = rng.random(Y.shape)
    P[3, 1] = np.inf  # label 1: often constant in a resample, then its score is not read
    assert_same_as_reference("multilabel", Y, P)


def test_blocks_of_resamples_give_the_same_values(monkeypatch):
    import featstore.metrics as metrics

    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 50)
    p1 = rounded(rng.random(50), 2)
    proba = np.stack([1 - p1, p1], 1)
    whole = _bootstrap_values("binary", y, proba, None, n_boot=100, seed=3)
    monkeypatch.setattr(metrics, "_BLOCK_ROWS", 50 * 7)  # blocks of 7 resamples
    assert np.array_equal(_bootstrap_values("binary", y, proba, None, n_boot=100, seed=3),
                          whole, equal_nan=True)


def test_no_resamples_and_unknown_task():
    y = np.array([0, 1, 0, 1])
    proba = np.full((4, 2), 0.5)
    assert np.isnan(bootstrap_ci("binary", y, proba, n_boot=0)).all()
    with pytest.raises(ProbeError, match="unknown task"):
        bootstrap_ci("regression", y, proba, n_boot=10)
    with pytest.raises(ProbeError, match="3 values"):
        bootstrap_ci("binary", np.array([0, 1, 2, 1]), proba, n_boot=10)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_paired_bootstrap_sd_is_the_spread_of_score_differences_on_shared_resamples(task):
    from featstore.metrics import paired_bootstrap_sd

    rng = np.random.default_rng(7)
    n, classes = 60, 2 if task == "binary" else 4
    y = rng.integers(0, classes, n)
    z = rng.normal(size=(n, classes)) + 2 * np.eye(classes)[y]
    a, b = softmax(z), softmax(z + 0.7 * rng.normal(size=(n, classes)))  # two close models
    # each resample scores both models on the same rows (the same draw from one seed)
    diff = (reference_values(task, y, a, n_boot=200, seed=3)
            - reference_values(task, y, b, n_boot=200, seed=3))
    want = np.std(diff[np.isfinite(diff)], ddof=1)
    got = paired_bootstrap_sd(task, y, a, b, n_boot=200, seed=3)
    assert got == pytest.approx(want, abs=1e-12) and got > 0
    assert paired_bootstrap_sd(task, y, a, a, n_boot=200, seed=3) == 0.0  # same model
    # unpaired, the two scores' own spreads would add up: pairing removes what the rows
    # drawn do to both models alike
    own = np.nanstd(reference_values(task, y, a, n_boot=200, seed=3), ddof=1)
    assert got < np.hypot(own, np.nanstd(reference_values(task, y, b, n_boot=200, seed=4),
                                         ddof=1))


def test_decision_threshold_maximises_balanced_accuracy_on_val():
    """The threshold a binary run decides its labels by: the best balanced accuracy on val
    of any threshold (checked by trying every one), halfway between the scores it parts."""
    from sklearn.metrics import balanced_accuracy_score

    from featstore.metrics import binary_predictions, decision_threshold

    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.3).astype(int)
    # near-constant outputs off 0.5 (a strongly regularised probe): 0.5 predicts one class
    score = 0.8 + 1e-3 * (y + rng.normal(scale=0.6, size=len(y)))
    t = decision_threshold(y, score)
    best = max(balanced_accuracy_score(y, score >= s) for s in np.unique(score))
    assert balanced_accuracy_score(y, binary_predictions(score, t)) == best > 0.75
    assert balanced_accuracy_score(y, binary_predictions(score, 0.5)) == 0.5
    above, below = score[score >= t].min(), score[score < t].max()
    assert t == pytest.approx((above + below) / 2)


def test_decision_threshold_is_one_half_where_val_cannot_tell():
    from featstore.metrics import decision_threshold

    assert decision_threshold(np.ones(10, int), np.linspace(0, 1, 10)) == 0.5  # one class
    assert decision_threshold(np.arange(10) % 2, np.full(10, 0.9)) == 0.5  # one score
    assert decision_threshold(np.arange(10) % 2, np.where(np.arange(10) % 2, 0.1, 0.9)) == 0.5
    assert decision_threshold(np.arange(4) % 2, np.array([0.2, np.nan, 0.3, 0.9])) == 0.5
