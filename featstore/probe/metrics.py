"""The study's metrics, computed by scikit-learn's functions on probe outputs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from featstore.errors import ProbeError

PRIMARY_METRIC = {
    "binary": "auc",
    "multiclass": "accuracy",
    "ordinal": "kappa",
    "multilabel": "mean_auc",
}


def task_metrics(task: str, y_true: np.ndarray, proba: np.ndarray,
                 pred: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of a task. ``proba``: (N, C) class probabilities, or (N, K) for multilabel.

    ``pred`` overrides the argmax decision (an ordinal probe decoding expected grades).

    binary: auc, accuracy, balanced_accuracy, f1; multiclass: accuracy, auc (macro
    one-vs-rest), balanced_accuracy, macro_f1; ordinal: kappa (quadratic-weighted, on the
    argmax grade), accuracy; multilabel: mean_auc over labels with both classes in
    ``y_true``, and ``auc[<k>]`` per label (NaN where a label has one class only).
    """
    y_true = np.asarray(y_true)
    if task == "multilabel":
        out: dict[str, float] = {}
        aucs = []
        for k in range(y_true.shape[1]):
            col = y_true[:, k]
            if col.min() == col.max():
                out[f"auc[{k}]"] = float("nan")
                continue
            out[f"auc[{k}]"] = float(roc_auc_score(col, proba[:, k]))
            aucs.append(out[f"auc[{k}]"])
        if not aucs:
            raise ProbeError("multilabel test set: no label has both classes; AUC undefined")
        return {"mean_auc": float(np.mean(aucs)), **out}
    if pred is None:
        pred = proba.argmax(axis=1)
    if task == "binary":
        return {
            "auc": _auc(y_true, proba[:, 1]),
            "accuracy": float(accuracy_score(y_true, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "f1": float(f1_score(y_true, pred, zero_division=0)),
        }
    if task == "ordinal":
        return {
            "kappa": float(cohen_kappa_score(y_true, pred, weights="quadratic")),
            "accuracy": float(accuracy_score(y_true, pred)),
        }
    if task == "multiclass":
        labels = np.arange(proba.shape[1])
        present = np.unique(y_true)
        auc = float("nan")
        if len(present) == proba.shape[1]:
            auc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                      labels=labels))
        return {
            "accuracy": float(accuracy_score(y_true, pred)),
            "auc": auc,
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        }
    raise ProbeError(f"unknown task {task!r}")


def primary_score(task: str, y_true: np.ndarray, proba: np.ndarray,
                  pred: np.ndarray | None = None) -> float:
    """The task's headline metric (used to choose hyperparameters on val)."""
    if task == "binary":
        return _auc(y_true, proba[:, 1])
    if task == "multilabel":
        return task_metrics(task, y_true, proba)["mean_auc"]
    if pred is None:
        pred = proba.argmax(axis=1)
    if task == "ordinal":
        return float(cohen_kappa_score(y_true, pred, weights="quadratic"))
    return float(accuracy_score(y_true, pred))


def bootstrap_ci(task: str, y_true: np.ndarray, proba: np.ndarray,
                 pred: np.ndarray | None = None, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the primary metric over resampled test rows.

    Resamples where the metric is undefined (one class only) are left out. Returns
    (nan, nan) when ``n_boot`` is 0.
    """
    if n_boot <= 0:
        return float("nan"), float("nan")
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        try:
            values[b] = primary_score(task, y_true[idx], proba[idx],
                                      None if pred is None else pred[idx])
        except (ValueError, ProbeError):  # a resample with a single class
            values[b] = np.nan
    if np.isnan(values).all():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, score))
