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
from featstore.rows import blocks
from featstore.task import (
    check_features,
    check_matrix,
    check_task,
    make_targets,
    proba_to_labels,
)

TEMPERATURE = 0.07
CHUNK_ROWS = 512  # queries a block
TRAIN_BLOCK_ROWS = 4096  # training rows a block: a (512 x 4096) float32 block is 8 MiB
NORM_EPS = 1e-12  # torch.nn.functional.normalize's


def normalise_(X: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of ``X`` in place, a block at a time (the numbers of
    ``torch.nn.functional.normalize``); returns ``X``."""
    for b in blocks(len(X)):
        X[b].div_(X[b].norm(dim=1, keepdim=True).clamp_min(NORM_EPS))
    return X


def top_k(Q: torch.Tensor, T: torch.Tensor, k: int, *, query_rows: int = CHUNK_ROWS,
          train_rows: int = TRAIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest inner products of each row of ``Q`` with the rows of ``T``
    (values, indices into ``T``, largest first), in bounded memory: query blocks x training
    blocks, each block's top k merged into the running top k. At most a (query_rows x
    train_rows) block of products is held; the same code runs on any device."""
    k = min(k, len(T))
    vals = torch.empty(len(Q), k, dtype=Q.dtype, device=Q.device)
    idx = torch.empty(len(Q), k, dtype=torch.long, device=Q.device)
    for q in range(0, len(Q), query_rows):
        Qb = Q[q:q + query_rows]
        best_v = best_i = None
        for t in range(0, len(T), train_rows):
            S = Qb @ T[t:t + train_rows].T
            v, i = S.topk(min(k, S.shape[1]), dim=1)
            i += t
            if best_v is not None:  # merge with the running top k
                v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_v, best_i = v, i
        vals[q:q + query_rows], idx[q:q + query_rows] = best_v, best_i
    return vals, idx


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

    def fit(self, X: np.ndarray, y: np.ndarray, *, overwrite: bool = False) -> KNNProbe:
        """Store the normalised training embeddings and their labels (with ``overwrite``, a
        float32 ``X`` the caller gives up is normalised in place and kept: no copy).

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
        owned = overwrite and isinstance(X, np.ndarray) and X.dtype == np.float32 and (
            Xt.device.type == "cpu")
        self.train_ = normalise_(Xt if owned else Xt.clone())
        self.votes_ = votes.to(self.device)
        return self

    def neighbours(self, X: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities and indices (N, k) of the k nearest training rows, most similar
        first; the queries converted and normalised a block at a time (:func:`top_k`)."""
        X = check_matrix(X)
        k = min(k, len(self.train_))
        sims = torch.empty(len(X), k, dtype=torch.float32, device=self.device)
        idx = torch.empty(len(X), k, dtype=torch.long, device=self.device)
        for rows in blocks(len(X)):
            Q = normalise_(torch.as_tensor(X[rows], dtype=torch.float32, device=self.device))
            sims[rows], idx[rows] = top_k(Q, self.train_, k)
        return sims, idx

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
                        device: str = "cpu", overwrite: bool = False) -> KNNSweep:
    """Choose k on val; the neighbours are searched once, for the largest k. A k above the
    training rows is that many rows (k = 200 on 40 rows is k = 40, and says so). With
    ``overwrite``, a float32 ``X_train`` is normalised in place and kept by the probe."""
    ks = sorted({min(int(k), len(X_train)) for k in ks})
    probe = KNNProbe(task, k=max(ks), device=device).fit(X_train, y_train, overwrite=overwrite)
    sims, idx = probe.neighbours(X_val, max(ks))
    scores = {int(k): primary_score(task, np.asarray(y_val), probe._vote(sims, idx, k))
              for k in sorted(set(ks))}
    # more neighbours smooth more: the largest k is the "strongest regularisation"
    order = sorted(scores, reverse=True)
    best = order[choose_on_val([scores[k] for k in order])]
    probe.k = best
    return KNNSweep(probe=probe, k=best, val_scores=scores)
