"""What a task means for a classifier head: targets, output width, loss, probabilities.

One place for the rules every head on embeddings or images shares (the linear probe, the
kNN probe, the DVME fusion head, finetuning): how labels become training targets, how many
outputs a head has, which loss it minimises, how its outputs become probabilities and
labels, how features are checked and standardised, how a run's metrics carry their
bootstrap CI, and how a run is keyed.

binary: one logit, logistic loss; multiclass and ordinal: one logit per class, softmax
cross-entropy; multilabel: one logit per label, a logistic loss per label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featstore.choices import TASKS
from featstore.errors import ProbeError

if TYPE_CHECKING:
    from featstore.rows import ColumnBlocks


def check_task(task: str) -> str:
    """``task`` itself, or :class:`ProbeError` (a ``ValueError``) naming the valid ones."""
    if task not in TASKS:
        raise ProbeError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    return task


def check_matrix(X: np.ndarray | ColumnBlocks) -> np.ndarray | ColumnBlocks:
    """``X`` as a 2-D array (or :class:`featstore.rows.ColumnBlocks`, each part checked),
    checked: :class:`ProbeError` on a bad shape or NaN/inf (found a block of rows at a time,
    never with an (N, D) mask)."""
    from featstore.rows import ColumnBlocks, first_non_finite

    if isinstance(X, ColumnBlocks):
        for part in X.parts:
            check_matrix(part)
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ProbeError(f"features must be 2-D (N, D), got shape {X.shape}")
    bad = first_non_finite(X)
    if bad is not None:
        raise ProbeError(f"features hold NaN or inf (first at row {bad})")
    return X


def check_features(X: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """Features as a float32 tensor (sharing ``X``'s memory when it is a float32 array on
    the CPU); raises :class:`ProbeError` on a bad shape or NaN/inf."""
    return torch.as_tensor(check_matrix(X), dtype=torch.float32, device=device)


@dataclass
class Targets:
    """Training targets of a task and the head they call for.

    ``target``: float (N, 1) for binary, long (N,) for multiclass/ordinal, float (N, K) for
    multilabel; ``kind``: ``sigmoid`` or ``softmax``; ``n_out``: the head's output width;
    ``classes``: the labels seen (label indices for multilabel).
    """

    target: torch.Tensor
    kind: str
    n_out: int
    classes: np.ndarray

    def loss(self) -> torch.nn.Module:
        """The mean loss of this task (logistic per output, or softmax cross-entropy)."""
        return torch.nn.BCEWithLogitsLoss() if self.kind == "sigmoid" else (
            torch.nn.CrossEntropyLoss())


def task_loss(task: str, *, reduction: str = "mean") -> torch.nn.Module:
    """The loss of ``task``'s head: logistic per output (binary, multilabel) or softmax
    cross-entropy (multiclass, ordinal); ``reduction="none"``: per element (a caller that
    weights rows reduces it)."""
    check_task(task)
    return (torch.nn.BCEWithLogitsLoss(reduction=reduction) if task in ("binary", "multilabel")
            else torch.nn.CrossEntropyLoss(reduction=reduction))


def target_tensor(task: str, y: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Labels as the loss of ``task`` takes them: float (N, 1) for binary, float (N, K) for
    multilabel, long (N,) otherwise. No check of the classes (a mini-batch may hold one)."""
    y = np.asarray(y)
    if task == "binary":
        return torch.as_tensor(y.reshape(-1), dtype=torch.float32, device=device).view(-1, 1)
    if task == "multilabel":
        return torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32, device=device)
    return torch.as_tensor(y.reshape(-1), dtype=torch.long, device=device)


def make_targets(task: str, y: np.ndarray, device: str = "cpu") -> Targets:
    """Targets for labels ``y`` ((N,) ints, or (N, K) 0/1 for multilabel).

    Raises
    ------
    ProbeError
        Unknown task, or fewer than two classes in a single-label ``y``.
    """
    check_task(task)
    y = np.asarray(y)
    if task == "multilabel":
        y = y.reshape(len(y), -1)
        return Targets(target_tensor(task, y, device), "sigmoid", y.shape[1],
                       np.arange(y.shape[1]))
    y = y.reshape(-1)
    classes = np.unique(y)
    if len(classes) < 2:
        only = classes[0] if len(classes) else "none"
        raise ProbeError(f"training labels hold one class only ({only}); "
                         "a classifier needs at least two")
    if task == "binary":
        if not set(classes.tolist()) <= {0, 1}:
            raise ProbeError(f"binary labels must be 0 or 1, got {classes.tolist()}")
        return Targets(target_tensor(task, y, device), "sigmoid", 1, classes)
    return Targets(target_tensor(task, y, device), "softmax",
                   int(max(y.max() + 1, len(classes))), classes)


def logits_to_proba(task: str, z: torch.Tensor) -> np.ndarray:
    """Probabilities from a head's logits: (N, C) per class (binary: (N, 2)), or (N, K) per
    label for multilabel."""
    z = z.detach().float()
    if task == "multilabel":
        return torch.sigmoid(z).cpu().numpy()
    if z.shape[1] == 1:
        p = torch.sigmoid(z[:, 0])
        return torch.stack([1 - p, p], dim=1).cpu().numpy()
    return torch.softmax(z, dim=1).cpu().numpy()


def proba_to_labels(task: str, proba: np.ndarray) -> np.ndarray:
    """Predicted labels: the most probable class (N,), or 0/1 per label (N, K) at 0.5."""
    return (proba >= 0.5).astype(int) if task == "multilabel" else proba.argmax(1)


@dataclass
class Standardiser:
    """Per-feature mean and scale learned on training rows (a constant feature keeps scale 1)."""

    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, X: torch.Tensor) -> Standardiser:
        std = X.std(0, unbiased=False)
        return cls(X.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    @classmethod
    def fit_blocks(cls, X: ColumnBlocks, device: str = "cpu") -> Standardiser:
        """:meth:`fit` on rows made a block at a time (each block's mean and variance merged
        in float64, Chan et al.), for a matrix that is never held whole."""
        from featstore.rows import blocks

        n, mean, m2 = 0, None, None
        buf = np.empty((min(2048, len(X)), X.shape[1]), np.float32)
        for b in blocks(len(X), 2048):
            Xb = torch.as_tensor(X.block(b, buf), device=device)
            var, mb = (t.double() for t in torch.var_mean(Xb, dim=0, correction=0))
            nb = len(Xb)
            m2b = var * nb
            if mean is None:
                n, mean, m2 = nb, mb, m2b
                continue
            delta = mb - mean
            mean = mean + delta * (nb / (n + nb))
            m2 = m2 + m2b + delta ** 2 * (n * nb / (n + nb))
            n += nb
        std = (m2 / n).sqrt().float()
        return cls(mean.float(), torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean) / self.scale

    def apply_(self, X: torch.Tensor) -> torch.Tensor:
        """Standardise ``X`` in place (the same numbers as calling it); returns ``X``."""
        from featstore.rows import blocks

        for b in blocks(len(X)):
            X[b].sub_(self.mean).div_(self.scale)
        return X


def binary_decision(task: str, y_val: np.ndarray, proba_val: np.ndarray | None,
                    proba_test: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """A binary run's test labels and the threshold that gave them, chosen on val
    (:func:`featstore.metrics.decision_threshold`, the rule
    :data:`featstore.choices.THRESHOLD_RULE` its run id records); ``(None, None)`` for the
    other tasks, whose labels are the argmax."""
    if task != "binary" or proba_val is None:
        return None, None
    from featstore.metrics import binary_predictions, decision_threshold

    threshold = decision_threshold(np.asarray(y_val), proba_val[:, 1])
    return binary_predictions(proba_test[:, 1], threshold), threshold


def scored_metrics(task: str, y_true: np.ndarray, proba: np.ndarray,
                   pred: np.ndarray | None = None, *, n_bootstrap: int = 1000,
                   seed: int = 0, label_names: Sequence[str] | None = None,
                   ) -> list[dict[str, Any]]:
    """Every metric of the task on test, the primary one with its bootstrap 95% CI
    (per-label metrics of a multilabel task named by ``label_names``).

    Returns one dict per metric: ``metric``, ``value``, ``primary``, ``ci_low``, ``ci_high``
    (NaN off the primary metric, or when ``n_bootstrap`` is 0).
    """
    from featstore.metrics import PRIMARY_METRIC, bootstrap_ci, task_metrics

    metrics = task_metrics(task, y_true, proba, pred, label_names)
    primary = PRIMARY_METRIC[task]
    lo, hi = bootstrap_ci(task, y_true, proba, pred, n_boot=n_bootstrap, seed=seed)
    nan = float("nan")
    return [{"metric": m, "value": v, "primary": m == primary,
             "ci_low": lo if m == primary else nan, "ci_high": hi if m == primary else nan}
            for m, v in metrics.items()]
