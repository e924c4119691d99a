"""The shared task rules and the estimators built on them: scikit-learn estimators that agree
on targets, output widths, probabilities and labels, and refuse bad arguments as ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from featstore.errors import FusionError, ProbeError
from featstore.fusion import DVME
from featstore.probe import KNNProbe, LinearProbe
from featstore.task import (
    logits_to_proba,
    make_targets,
    proba_to_labels,
    scored_metrics,
    target_tensor,
    task_loss,
)


def data(n=240, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, :2] += 3.0 * y[:, None]
    return X, y


@pytest.mark.parametrize(("task", "y", "kind", "n_out"), [
    ("binary", [0, 1, 1, 0], "sigmoid", 1),
    ("multiclass", [0, 2, 1, 2], "softmax", 3),
    ("ordinal", [0, 4, 1, 4], "softmax", 5),  # grades 2 and 3 unseen: the head still has 5
    ("multilabel", [[0, 1], [1, 1], [0, 0], [1, 0]], "sigmoid", 2),
])
def test_targets_give_every_head_the_same_width_and_loss(task, y, kind, n_out):
    t = make_targets(task, np.asarray(y))
    assert (t.kind, t.n_out) == (kind, n_out)
    logits = torch.zeros(len(y), n_out)
    assert float(t.loss()(logits, t.target)) > 0  # the loss accepts the target as made


def test_probabilities_and_labels_from_logits():
    z = torch.tensor([[2.0], [-1.0]])
    p = logits_to_proba("binary", z)
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    assert list(proba_to_labels("binary", p)) == [1, 0]
    p = logits_to_proba("multilabel", torch.tensor([[3.0, -3.0]]))
    assert proba_to_labels("multilabel", p).tolist() == [[1, 0]]


def test_one_class_is_refused_as_a_value_error():
    with pytest.raises(ValueError, match="one class only"):
        make_targets("binary", np.zeros(5))
    with pytest.raises(ProbeError, match="unknown task"):
        make_targets("regression", np.arange(5))
    with pytest.raises(ProbeError, match="binary labels must be 0 or 1"):
        make_targets("binary", np.array([0, 1, 2]))


@pytest.mark.parametrize("make", [
    lambda: LinearProbe("multiclass", l2=1e-3),
    lambda: KNNProbe("multiclass", k=5),
])
def test_probes_are_scikit_learn_estimators(make):
    X, y = data()
    est = make()
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    pred = copy.fit(X, y).predict(X)
    assert pred.shape == (len(y),) and set(np.unique(pred)) <= {0, 1, 2}
    assert (pred == y).mean() > 0.8
    scores = cross_val_score(make(), X, y, cv=3)  # sklearn's own model selection drives it
    assert len(scores) == 3 and scores.min() > 0.7


def test_predict_returns_the_class_labels_not_column_indices():
    X, y = data(classes=2)
    y = y * 3  # labels 0 and 3: column 3 of a softmax head is class 3
    probe = LinearProbe("multiclass", l2=1e-3).fit(X, y)
    assert set(np.unique(probe.predict(X))) == {0, 3}


@pytest.mark.parametrize(("est", "message"), [
    (LinearProbe("binary", l2=-1.0), "l2=-1.0"),
    (LinearProbe("binary", tol=0.0), "tol=0.0"),
    (LinearProbe("cancer"), "unknown task"),
    (KNNProbe("binary", k=0), "k=0"),
])
def test_invalid_arguments_raise_value_errors(est, message):
    X, y = data(classes=2)
    with pytest.raises(ValueError, match=message):
        est.fit(X, y)


def test_dvme_is_an_estimator_and_raises_fusion_errors():
    X, y = data(classes=2)
    Xs = [X[:, :3], X[:, 3:]]
    head = DVME("binary", dim=8, max_epochs=3, seed=1)
    assert clone(head).get_params() == head.get_params()
    head.fit(Xs, y, Xs, y)
    assert head.predict(Xs).shape == (len(y),)
    assert np.allclose(head.predict_proba(Xs).sum(1), 1)
    for bad, message in ((DVME("binary", attention="max"), "unknown attention"),
                         (DVME("binary", dropout=1.5), "dropout"),
                         (DVME("cancer"), "unknown task")):
        with pytest.raises(FusionError, match=message):
            bad.fit(Xs, y, Xs, y)
    with pytest.raises(FusionError, match="one class only"):
        DVME("binary").fit(Xs, np.zeros(len(y)), Xs, y)
    Xs_nan = [X[:, :3].copy(), X[:, 3:]]
    Xs_nan[0][5, 1] = np.nan
    with pytest.raises(FusionError, match="NaN"):
        head.predict_proba(Xs_nan)
    assert issubclass(FusionError, ValueError)


def test_scored_metrics_put_the_ci_on_the_primary_metric_only():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    p1 = np.clip(y * 0.6 + rng.uniform(0, 0.4, 200), 0, 1)
    rows = scored_metrics("binary", y, np.stack([1 - p1, p1], 1), n_bootstrap=50)
    prim = [r for r in rows if r["primary"]]
    assert [r["metric"] for r in prim] == ["auc"]
    assert prim[0]["ci_low"] <= prim[0]["value"] <= prim[0]["ci_high"]
    assert all(np.isnan(r["ci_low"]) for r in rows if not r["primary"])


def test_one_loss_and_one_target_layout_for_probe_dvme_and_finetuning():
    """Finetuning weights rows itself (per-element loss) and meets mini-batches of one class;
    it takes the same loss and targets as the probes' make_targets."""
    for task, y in (("binary", np.array([0, 1, 1])), ("multiclass", np.array([0, 2, 1])),
                    ("multilabel", np.array([[0, 1], [1, 1], [0, 0]]))):
        t = target_tensor(task, y)
        assert torch.equal(t, make_targets(task, y).target)
        z = torch.zeros(len(y), t.shape[1] if t.ndim == 2 else 3)
        per_row = task_loss(task, reduction="none")(z, t)
        assert per_row.shape[0] == len(y) and torch.isclose(
            per_row.mean(), task_loss(task)(z, t))
    assert target_tensor("binary", np.array([1, 1])).shape == (2, 1)  # one class: no error
