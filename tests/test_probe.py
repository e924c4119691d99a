"""Linear probes: metric parity with scikit-learn, learning a known rule, each task type."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from featstore.errors import ProbeError
from featstore.probe import LinearProbe, fit_with_validation, task_metrics


def linear_data(n=600, d=20, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d) + rng.normal(size=d) * 3
    W = rng.normal(size=(d, classes))
    y = (X @ W / np.linalg.norm(W, axis=0) + rng.normal(0, 0.3, (n, classes))).argmax(1)
    return X.astype(np.float32), y


def test_probe_recovers_a_known_linear_rule():
    X, y = linear_data()
    sweep = fit_with_validation(X[:400], y[:400], X[400:500], y[400:500], task="binary")
    auc = roc_auc_score(y[500:], sweep.probe.predict_proba(X[500:])[:, 1])
    assert auc > 0.97
    assert sweep.probe.converged_ and sweep.l2 in sweep.val_scores


def test_probe_matches_sklearn_logistic_regression():
    X, y = linear_data(classes=3)
    l2 = 1e-2
    ours = LinearProbe("multiclass", l2=l2, tol=1e-7).fit(X, y)
    Xs = (X - ours.mean_) / ours.scale_
    sk = LogisticRegression(C=1 / (l2 * len(X)), max_iter=5000, tol=1e-10).fit(Xs, y)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(Xs), atol=2e-3)


def test_ordinal_task_scores_quadratic_kappa():
    X, y = linear_data(classes=5, n=800)
    probe = LinearProbe("ordinal", l2=1e-3).fit(X[:600], y[:600])
    pred = probe.predict(X[600:])
    assert probe.score(X[600:], y[600:]) == pytest.approx(
        cohen_kappa_score(y[600:], pred, weights="quadratic"))
    assert probe.score(X[600:], y[600:]) > 0.5


def test_multilabel_with_a_label_absent_from_test():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    Y = np.stack([(X[:, 0] > 0), (X[:, 1] > 0.5), (X[:, 2] > 0)], 1).astype(int)
    probe = LinearProbe("multilabel", l2=1e-3).fit(X[:200], Y[:200])
    Yt = Y[200:].copy()
    Yt[:, 2] = 0  # the third finding never occurs in test
    m = task_metrics("multilabel", Yt, probe.predict_proba(X[200:]))
    assert np.isnan(m["auc[2]"]) and m["auc[0]"] > 0.95
    assert m["mean_auc"] == pytest.approx((m["auc[0]"] + m["auc[1]"]) / 2)


def test_metrics_equal_sklearn_on_the_same_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    m = task_metrics("multiclass", y, p)
    assert m["auc"] == roc_auc_score(y, p, multi_class="ovr", average="macro")
    b = task_metrics("binary", y % 2, np.stack([1 - p[:, 0], p[:, 0]], 1))
    assert b["auc"] == roc_auc_score(y % 2, p[:, 0])


def test_bad_probe_input_is_refused():
    X, y = linear_data()
    with pytest.raises(ProbeError, match="one class only"):
        LinearProbe().fit(X, np.zeros_like(y))
    X[5, 3] = np.nan
    with pytest.raises(ProbeError, match="NaN or inf .*row 5"):
        LinearProbe().fit(X, y)
