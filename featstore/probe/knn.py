"""Weighted k-nearest-neighbour probe on frozen embeddings, as DINO evaluates (Caron et al.).

Cosine similarity between L2-normalised embeddings; each of the k nearest training rows votes
for its label with weight exp(similarity / T) (T = 0.07); class probabilities are the
normalised votes (for multilabel, the weighted mean of the neighbours' label vectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from featstore.choices import DEFAULT_KS
from featstore.errors import ProbeError
from featstore.metrics import primary_score
from featstore.probe.linear import choose_on_val
from featstore.task import check_features, check_task, make_targets, proba_to_labels

TEMPERATURE = 0.07
CHUNK_ROWS = 1024


class KNNProbe(ClassifierMixin, BaseEstimator):
    """A weighted kNN classifier (a scikit-learn estimator).

    Parameters
    ----------
    task : str
        ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
    k : int
        Neighbours (capped at the number of training rows).
    temperature : float
        Vote weight exp(cosine / temperature).
    """

    def __init__(self, task: str = "binary", *, k: int = 20,
                 temperature: float = TEMPERATURE, device: str = "cpu") -> None:
        self.task = task
        self.k = k
        self.temperature = temperature
        self.device = device

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNProbe:
        """Store the normalised training embeddings and their labels.

        Raises
        ------
        ProbeError
            Unknown task, k < 1, non-finite features, a single class, misaligned rows.
        """
        check_task(self.task)
        if int(self.k) < 1:
            raise ProbeError(f"k={self.k!r}: expected at least 1 neighbour")
        if not self.temperature > 0:
            raise ProbeError(f"temperature={self.temperature!r}: expected a value > 0")
        Xt = check_features(X, self.device)
        targets = make_targets(self.task, y)
        if targets.kind == "softmax" or self.task == "binary":
            votes = torch.nn.functional.one_hot(targets.target.view(-1).long(),
                                                max(targets.n_out, 2)).float()
        else:
            votes = targets.target
        if len(votes) != len(Xt):
            raise ProbeError(f"{len(Xt)} feature rows but {len(votes)} labels")
        self.classes_ = targets.classes
        self.train_ = torch.nn.functional.normalize(Xt, dim=1)
        self.votes_ = votes.to(self.device)
        return self

    def neighbours(self, X: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities and indices (N, k) of the k nearest training rows, most similar first."""
        Q = torch.nn.functional.normalize(check_features(X, self.device), dim=1)
        k = min(k, len(self.train_))
        sims, idx = [], []
        for start in range(0, len(Q), CHUNK_ROWS):
            s, i = (Q[start:start + CHUNK_ROWS] @ self.train_.T).topk(k, dim=1)
            sims.append(s)
            idx.append(i)
        return torch.cat(sims), torch.cat(idx)

    def _vote(self, sims: torch.Tensor, idx: torch.Tensor, k: int) -> np.ndarray:
        w = (sims[:, :k] / self.temperature).exp()
        votes = (w.unsqueeze(2) * self.votes_[idx[:, :k]]).sum(1)
        return (votes / w.sum(1, keepdim=True)).cpu().numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C), or per-label probabilities (N, K) for multilabel."""
        sims, idx = self.neighbours(X, self.k)
        return self._vote(sims, idx, self.k)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class label (N,), or 0/1 labels (N, K) for multilabel."""
        return proba_to_labels(self.task, self.predict_proba(X))

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """The task's primary metric."""
        return primary_score(self.task, np.asarray(y), self.predict_proba(X))


@dataclass
class KNNSweep:
    """The k chosen on val, with the val score of every k."""

    probe: KNNProbe
    k: int
    val_scores: dict[int, float]


def knn_with_validation(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                        y_val: np.ndarray, *, task: str, ks: Sequence[int] = DEFAULT_KS,
                        device: str = "cpu") -> KNNSweep:
    """Choose k on val; the neighbours are searched once, for the largest k. A k above the
    training rows is that many rows (k = 200 on 40 rows is k = 40, and says so)."""
    ks = sorted({min(int(k), len(X_train)) for k in ks})
    probe = KNNProbe(task, k=max(ks), device=device).fit(X_train, y_train)
    sims, idx = probe.neighbours(X_val, max(ks))
    scores = {int(k): primary_score(task, np.asarray(y_val), probe._vote(sims, idx, k))
              for k in sorted(set(ks))}
    # more neighbours smooth more: the largest k is the "strongest regularisation"
    order = sorted(scores, reverse=True)
    best = order[choose_on_val([scores[k] for k in order])]
    probe.k = best
    return KNNSweep(probe=probe, k=best, val_scores=scores)
