"""The study's metrics (the task layer), by scikit-learn's functions on model outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from featstore.errors import ProbeError

PRIMARY_METRIC = {
    "binary": "auc",
    "multiclass": "accuracy",
    "ordinal": "kappa",
    "multilabel": "mean_auc",
}


def task_metrics(task: str, y_true: np.ndarray, proba: np.ndarray,
                 pred: np.ndarray | None = None,
                 label_names: Sequence[str] | None = None) -> dict[str, float]:
    """All metrics of a task. ``proba``: (N, C) class probabilities, or (N, K) for multilabel.

    ``pred`` overrides the argmax decision (an ordinal probe decoding expected grades).

    binary: auc, accuracy, balanced_accuracy, f1; multiclass: accuracy, auc (macro
    one-vs-rest), balanced_accuracy, macro_f1; ordinal: kappa (quadratic-weighted, on the
    argmax grade), accuracy; multilabel: mean_auc over labels with both classes in
    ``y_true``, and ``auc[<label>]`` per label, named by ``label_names`` (e.g. the NIH
    findings) or by index (NaN where a label has one class only).
    """
    y_true = np.asarray(y_true)
    if task == "multilabel":
        out: dict[str, float] = {}
        aucs = []
        names = list(label_names) if label_names is not None and len(label_names) == (
            y_true.shape[1]) else [str(k) for k in range(y_true.shape[1])]
        for k, name in enumerate(names):
            col = y_true[:, k]
            if col.min() == col.max():
                out[f"auc[{name}]"] = float("nan")
                continue
            out[f"auc[{name}]"] = float(roc_auc_score(col, proba[:, k]))
            aucs.append(out[f"auc[{name}]"])
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


def decision_threshold(y_val: np.ndarray, score_val: np.ndarray) -> float:
    """The positive-class probability from which a binary model predicts positive: the one
    that maximises balanced accuracy (Youden's J, TPR - FPR) on val, halfway between the
    val score it keeps and the next one below. 0.5 where val cannot tell (one class, or no
    threshold beats chance)."""
    y_val, score_val = np.asarray(y_val), np.asarray(score_val, dtype=np.float64)
    if len(np.unique(y_val)) < 2 or not np.isfinite(score_val).all():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_val, score_val, drop_intermediate=False)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1  # thresholds[0] is +inf: no row positive
    if j[i] <= 0:
        return 0.5
    below = thresholds[i + 1] if i + 1 < len(thresholds) else thresholds[i]
    return float((thresholds[i] + below) / 2)


def binary_predictions(score: np.ndarray, threshold: float) -> np.ndarray:
    """Labels (0, 1) of positive-class probabilities ``score`` at ``threshold``."""
    return (np.asarray(score) >= threshold).astype(np.int64)


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

    Resample ``b`` takes the rows ``rng.integers(0, n, n)``, the ``b``-th draw from
    ``np.random.default_rng(seed)``; its metric equals :func:`primary_score` on those rows.
    Resamples where the metric is undefined (one class only) are left out. Returns
    (nan, nan) when ``n_boot`` is 0 or no resample has a defined metric.

    Raises
    ------
    ProbeError
        An unknown task, or binary labels with more than two values.
    """
    if n_boot <= 0:
        return float("nan"), float("nan")
    values = _bootstrap_values(task, y_true, proba, pred, n_boot=n_boot, seed=seed)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_sd(task: str, y_true: np.ndarray, proba_a: np.ndarray,
                        proba_b: np.ndarray, *, n_boot: int = 200, seed: int = 0) -> float:
    """Standard deviation, over resampled rows, of the difference of the primary metric of
    two models scored on the same rows (each resample scores both on the same draw): how
    far apart two models' scores on these rows can fall by the choice of rows alone. NaN
    where no resample has both metrics defined."""
    a = _bootstrap_values(task, y_true, proba_a, None, n_boot=n_boot, seed=seed)
    b = _bootstrap_values(task, y_true, proba_b, None, n_boot=n_boot, seed=seed)
    d = a - b
    d = d[np.isfinite(d)]
    return float(d.std(ddof=1)) if len(d) > 1 else float("nan")


# Resamples are drawn and scored in blocks of about this many row indices (8 MB of int64),
# so n = 20k and 1000 resamples never hold the whole (n_boot, n) index array.
_BLOCK_ROWS = 1 << 20


def _bootstrap_values(task: str, y_true: np.ndarray, proba: np.ndarray,
                      pred: np.ndarray | None, *, n_boot: int, seed: int) -> np.ndarray:
    """The primary metric of each of ``n_boot`` resamples, NaN where it is undefined.

    The resamples of a block are scored together: AUC by :class:`_ResampledAUC`, accuracy
    from counts of correct rows, kappa from confusion matrices. Equal to scikit-learn's
    functions on each resample, up to rounding.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    n = len(y_true)
    values = np.full(n_boot, np.nan)
    if n == 0:
        return values
    if task in ("binary", "multilabel"):
        if task == "binary" and len(np.unique(y_true)) > 2:
            raise ProbeError(f"binary task: labels take {len(np.unique(y_true))} values")
        auc = _ResampledAUC(y_true, proba[:, 1] if task == "binary" else proba)
    elif task in ("multiclass", "ordinal"):
        pred = proba.argmax(axis=1) if pred is None else np.asarray(pred)
        labels, codes = np.unique(np.concatenate([y_true, pred]), return_inverse=True)
        n_labels = len(labels)
        correct = (codes[:n] == codes[n:]).astype(np.int64)
        cells = codes[:n] * n_labels + codes[n:]  # confusion-matrix cell of each row
    else:
        raise ProbeError(f"unknown task {task!r}")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ROWS // n)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, n, (b, n))  # the same numbers as b successive draws of size n
        out = values[start:start + b]
        if task == "multiclass":
            out[:] = correct[idx].sum(axis=1) / n
        elif task == "ordinal":
            out[:] = _quadratic_kappa(cells[idx], n_labels)
        else:
            counts = _row_counts(idx)
            aucs = auc(counts)  # (b, labels); binary: one label
            defined = ~np.isnan(aucs)  # labels with both classes in the resample
            count = defined.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:] = np.where(defined, aucs, 0.0).sum(axis=1) / count
            out[count == 0] = np.nan
            # scikit-learn raises on a non-finite score in a label it scores
            out[(defined & auc.hits_non_finite(counts)).any(axis=1)] = np.nan
    return values


class _ResampledAUC:
    """ROC AUC of each score column on many resamples at once, from their row counts.

    A resample's AUC of a column is ``U / (P N)`` with the Mann-Whitney statistic
    ``U = sum_i c_i (N_<i + N_=i / 2)`` over its positive rows ``i`` (``c_i`` copies of
    each), where ``N_<i`` and ``N_=i`` count its negatives scored below and equal to row
    ``i``: average ranks for ties, as ``roc_auc_score``. The negatives are cut, in score
    order, into segments at the positives' scores; one sparse product sums each resample's
    counts per segment for all columns, and running sums over segments give ``N_<i`` and
    ``N_<=i``. Integer arithmetic up to the final division.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        y = np.asarray(y).reshape(len(y), -1)
        score = np.asarray(score, dtype=np.float64).reshape(len(y), -1)
        rows, cols = [], []
        self.columns = []  # per column: first segment, segments, positives, cut positions
        first = 0
        for k in range(y.shape[1]):
            positive = y[:, k] == y[:, k].max()  # roc_auc_score's pos_label: greater label
            pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
            neg = neg[np.argsort(score[neg, k], kind="stable")]
            below = np.searchsorted(score[neg, k], score[pos, k], side="left")
            at_or_below = np.searchsorted(score[neg, k], score[pos, k], side="right")
            cuts, where = np.unique(np.concatenate([below, at_or_below]), return_inverse=True)
            # segment j: the negatives of sorted rank in [cuts[j-1], cuts[j]); then the rest
            rows.append(first + np.searchsorted(cuts, np.arange(len(neg)), side="right"))
            cols.append(neg)
            self.columns.append((first, len(cuts) + 1, pos, where.reshape(2, -1)))
            first += len(cuts) + 1
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        self.segments = sparse.csr_array((np.ones(len(rows), np.int32), (rows, cols)),
                                         shape=(first, len(y)))
        self.non_finite = [np.flatnonzero(~np.isfinite(s)) for s in score.T]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """AUC (b, columns); ``counts`` (n, b): how often each row is in each resample.

        NaN where a resample has one class of a column; a resample holding a non-finite
        score gets a number, to be discarded by way of :meth:`hits_non_finite`.
        """
        per_segment = self.segments @ counts  # (segments, b)
        aucs = np.empty((counts.shape[1], len(self.columns)))
        for k, (first, n_seg, pos, (below, at_or_below)) in enumerate(self.columns):
            running = np.cumsum(per_segment[first:first + n_seg], axis=0, dtype=np.int64)
            pos_counts = counts[pos].astype(np.int64)
            twice_u = np.einsum("ib,ib->b", pos_counts, running[below] + running[at_or_below])
            n_pos, n_neg = pos_counts.sum(axis=0), running[-1]
            with np.errstate(invalid="ignore", divide="ignore"):
                aucs[:, k] = twice_u / (2.0 * n_pos * n_neg)
            aucs[(n_pos == 0) | (n_neg == 0), k] = np.nan
        return aucs

    def hits_non_finite(self, counts: np.ndarray) -> np.ndarray:
        """(b, columns): which resamples hold a row with a non-finite score in a column."""
        return np.stack([counts[rows].any(axis=0) for rows in self.non_finite], axis=1)


def _row_counts(idx: np.ndarray) -> np.ndarray:
    """(b, n) row indices of b resamples -> (n, b) int32 counts of each row in each."""
    b, n = idx.shape
    keys = idx + (n * np.arange(b))[:, None]
    counts = np.bincount(keys.ravel(), minlength=b * n).reshape(b, n)
    return np.ascontiguousarray(counts.T, dtype=np.int32)


def _quadratic_kappa(cells: np.ndarray, n_labels: int) -> np.ndarray:
    """Quadratic-weighted Cohen's kappa per row of ``cells`` (b, n): confusion-matrix cells
    ``true * n_labels + pred`` of each resample.

    As scikit-learn's ``cohen_kappa_score``: the weights are squared differences of the
    positions of the labels among those present in the resample (true or predicted); NaN
    where only one label is present.
    """
    b, n = cells.shape
    cc = n_labels * n_labels
    keys = cells + (cc * np.arange(b))[:, None]
    conf = np.bincount(keys.ravel(), minlength=cc * b).reshape(b, n_labels, n_labels)
    conf = conf.astype(np.float64)
    sum0, sum1 = conf.sum(axis=1), conf.sum(axis=2)  # predicted, true label counts
    expected = sum0[:, :, None] * sum1[:, None, :] / n
    position = np.cumsum((sum0 + sum1) > 0, axis=1)
    weight = ((position[:, :, None] - position[:, None, :]) ** 2).astype(np.float64)
    num = (weight * conf).sum(axis=(1, 2))
    den = (weight * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = 1 - num / den
    kappa[den == 0] = np.nan
    return kappa


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, score))
