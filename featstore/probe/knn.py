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

from featstore import progress
from featstore.choices import DEFAULT_KS
from featstore.errors import ProbeError
from featstore.metrics import primary_score
from featstore.probe.linear import choose_on_val
from featstore.rows import blocks
from featstore.task import (
    check_matrix,
    check_task,
    make_targets,
    proba_to_labels,
)

TEMPERATURE = 0.07
CHUNK_ROWS = 512  # queries a block
TRAIN_BLOCK_ROWS = 4096  # training rows a block: a (512 x 4096) float32 block is 8 MiB
NORM_EPS = 1e-12  # torch.nn.functional.normalize's


def row_norms(X: torch.Tensor) -> torch.Tensor:
    """(N, 1) float32: what :func:`normalise_` divides each row of ``X`` by (its L2 norm in
    float32, at least ``NORM_EPS``), a block at a time."""
    out = torch.empty(len(X), 1, dtype=torch.float32, device=X.device)
    for b in blocks(len(X)):
        out[b] = X[b].to(torch.float32).norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    return out


def normalise_(X: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of ``X`` in place, a block at a time (the numbers of
    ``torch.nn.functional.normalize``); returns ``X``."""
    for b in blocks(len(X)):
        X[b].div_(X[b].norm(dim=1, keepdim=True).clamp_min(NORM_EPS))
    return X


def top_k(Q: torch.Tensor, T: torch.Tensor, k: int, *, norms: torch.Tensor | None = None,
          query_rows: int = CHUNK_ROWS,
          train_rows: int = TRAIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest inner products of each row of ``Q`` with the rows of ``T``
    (values, indices into ``T``, largest first), in bounded memory: training blocks x query
    blocks, each block's top k merged into its queries' running top k (in training-block
    order). With ``norms`` (:func:`row_norms` of ``T``), ``T`` is kept as it is stored
    (float16 too) and each training block is made float32 and normalised once, as it is
    used: the same numbers as normalising a float32 copy of ``T``. At most a training
    block and a (query_rows x train_rows) block of products are held beside the running
    top k; the same code runs on any device."""
    k = min(k, len(T))
    train_rows = max(train_rows, k)  # a block holds at least the k it merges
    vals = torch.empty(len(Q), k, dtype=torch.float32, device=Q.device)
    idx = torch.empty(len(Q), k, dtype=torch.long, device=Q.device)
    for t in range(0, len(T), train_rows):
        Tb = T[t:t + train_rows]
        if norms is not None:
            Tb = Tb.to(torch.float32).div(norms[t:t + train_rows])
        for q in range(0, len(Q), query_rows):
            S = Q[q:q + query_rows] @ Tb.T
            v, i = S.topk(min(k, S.shape[1]), dim=1)
            i += t
            if t:  # merge with the running top k
                v, j = torch.cat([vals[q:q + query_rows], v], 1).topk(k, dim=1)
                i = torch.cat([idx[q:q + query_rows], i], 1).gather(1, j)
            vals[q:q + query_rows], idx[q:q + query_rows] = v, i
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
        """Store the training embeddings (float16 or float32, as given; normalised as they
        are searched), their norms and their labels (with ``overwrite``, ``X`` is the
        caller's to give up and is kept without a copy).

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
        X = check_matrix(X)
        Xt = torch.as_tensor(X, dtype=None if X.dtype in (np.float16, np.float32)
                             else torch.float32, device=self.device)
        targets = make_targets(self.task, y)
        if targets.kind == "softmax" or self.task == "binary":
            votes = torch.nn.functional.one_hot(targets.target.view(-1).long(),
                                                max(targets.n_out, 2)).float()
        else:
            votes = targets.target
        if len(votes) != len(Xt):
            raise ProbeError(f"{len(Xt)} feature rows but {len(votes)} labels")
        self.classes_ = targets.classes
        # the rows as given (float16 stays float16), normalised a block at a time as the
        # search reads them: a float32 copy of every training row is never held
        self.train_ = Xt if overwrite else Xt.clone()
        self.norms_ = row_norms(self.train_)
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
            sims[rows], idx[rows] = top_k(Q, self.train_, k, norms=self.norms_)
            progress.tick("kNN over {:,} rows: {:,} of {:,} queries", len(self.train_),
                          rows.stop, len(X))
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
    val_proba: np.ndarray | None = None  # the chosen k's probabilities on val


def knn_with_validation(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                        y_val: np.ndarray, *, task: str, ks: Sequence[int] = DEFAULT_KS,
                        device: str = "cpu", overwrite: bool = False) -> KNNSweep:
    """Choose k on val; the neighbours are searched once, for the largest k. A k above the
    training rows is that many rows (k = 200 on 40 rows is k = 40, and says so). With
    ``overwrite``, a float32 ``X_train`` is normalised in place and kept by the probe."""
    ks = sorted({min(int(k), len(X_train)) for k in ks})
    probe = KNNProbe(task, k=max(ks), device=device).fit(X_train, y_train, overwrite=overwrite)
    sims, idx = probe.neighbours(X_val, max(ks))
    proba = {int(k): probe._vote(sims, idx, k) for k in sorted(set(ks))}
    scores = {k: primary_score(task, np.asarray(y_val), p) for k, p in proba.items()}
    # more neighbours smooth more: the largest k is the "strongest regularisation"
    order = sorted(scores, reverse=True)
    best = order[choose_on_val([scores[k] for k in order])]
    probe.k = best
    return KNNSweep(probe=probe, k=best, val_scores=scores, val_proba=proba[best])
