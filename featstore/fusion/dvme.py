"""DVME: Dynamic Visual Meta-Embedding, the study's fusion head over several backbones.

After Kiela et al. (2018), "Dynamic Meta-Embeddings", as adapted by Truong et al. (2021):
each backbone k's (standardised) embedding e_k is projected to a common dimension,
w_k = P_k e_k + b_k; a scorer shared across backbones gives s_k = a . w_k + c; the weights
alpha are softmax_k(s_k) (default), sigmoid(s_k) (gating) or uniform; the fused vector
z = sum_k alpha_k w_k goes through dropout and a linear classifier.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from featstore.choices import ATTENTIONS
from featstore.errors import FusionError, ProbeError
from featstore.probe.metrics import primary_score
from featstore.task import (
    Standardiser,
    check_features,
    check_task,
    logits_to_proba,
    make_targets,
    proba_to_labels,
)


class _DVMEModule(nn.Module):
    def __init__(self, dims: Sequence[int], dim: int, n_out: int, attention: str,
                 dropout: float) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in dims)
        self.scorer = nn.Linear(dim, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_out)
        self.attention = attention

    def weights(self, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected embeddings (B, K, dim) and attention weights (B, K)."""
        w = torch.stack([p(x) for p, x in zip(self.proj, xs, strict=True)], dim=1)
        if self.attention == "uniform":
            alpha = torch.full(w.shape[:2], 1.0 / w.shape[1], device=w.device)
        else:
            s = self.scorer(w).squeeze(2)
            alpha = torch.softmax(s, dim=1) if self.attention == "softmax" else torch.sigmoid(s)
        return w, alpha

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        w, alpha = self.weights(xs)
        return self.head(self.drop((alpha.unsqueeze(2) * w).sum(1)))


@contextlib.contextmanager
def _as_fusion_error() -> Iterator[None]:
    """The shared task checks raise ProbeError; a DVME says FusionError (a subclass)."""
    try:
        yield
    except FusionError:
        raise
    except ProbeError as e:
        raise FusionError(str(e)) from None


class DVME(ClassifierMixin, BaseEstimator):
    """The DVME fusion head as a scikit-learn estimator: ``fit(Xs, y, Xs_val, y_val)``,
    ``predict_proba(Xs)``, ``predict(Xs)``.

    Parameters
    ----------
    task : str
        ``binary``, ``multiclass``, ``ordinal`` or ``multilabel`` (losses as the linear probe:
        logistic, softmax cross-entropy, per-label logistic).
    dim : int
        Common projection dimension.
    attention : str
        ``softmax`` (default), ``sigmoid`` (gating) or ``uniform`` (plain mean).
    dropout, lr, weight_decay : float
        Dropout on the fused vector; AdamW learning rate and weight decay.
    batch_size, max_epochs, patience : int
        Mini-batch size; epochs at most; epochs without val improvement before stopping
        (the best val state is restored).
    seed : int
        Seeds initialisation, dropout and shuffling: same seed, same head.

    Raises
    ------
    FusionError
        (a ``ValueError``) for invalid arguments or data, from ``fit`` and ``predict_proba``.
    """

    def __init__(self, task: str = "binary", *, dim: int = 256, attention: str = "softmax",
                 dropout: float = 0.1, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 512, max_epochs: int = 100, patience: int = 8,
                 seed: int = 0, device: str = "cpu") -> None:
        self.task = task
        self.dim = dim
        self.attention = attention
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.device = device

    def _config(self) -> dict:
        """The parameters that define the head (the device is where it runs, not what it is)."""
        return {k: v for k, v in self.get_params().items() if k != "device"}

    def _standardise(self, Xs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        if len(Xs) != len(self.means_):
            raise FusionError(f"DVME was fitted on {len(self.means_)} backbones, got {len(Xs)}")
        out = []
        for k, (X, m, s) in enumerate(zip(Xs, self.means_, self.scales_, strict=True)):
            with _as_fusion_error():
                Xt = check_features(X, self.device)
            if Xt.shape[1] != len(m):
                raise FusionError(f"backbone {k}: {Xt.shape[1]} dims, the head expects {len(m)}")
            out.append(Standardiser(m, s)(Xt))
        return out

    def _check_params(self) -> None:
        with _as_fusion_error():
            check_task(self.task)
        if self.attention not in ATTENTIONS:
            raise FusionError(f"unknown attention {self.attention!r} "
                              f"(expected one of {', '.join(ATTENTIONS)})")
        for name in ("dim", "batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise FusionError(f"{name}={getattr(self, name)!r}: expected at least 1")
        if not 0 <= self.dropout < 1:
            raise FusionError(f"dropout={self.dropout!r}: expected a value in [0, 1)")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise FusionError(f"lr={self.lr!r}, weight_decay={self.weight_decay!r}: expected "
                              "lr > 0 and weight_decay >= 0")

    def _build(self, dims: Sequence[int], n_out: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module_ = _DVMEModule(dims, self.dim, n_out, self.attention,
                                       self.dropout).to(self.device)

    def fit(self, Xs: Sequence[np.ndarray], y: np.ndarray, Xs_val: Sequence[np.ndarray],
            y_val: np.ndarray) -> DVME:
        """Train on ``Xs`` (one (N, d_k) array per backbone) and ``y``; early-stop on val.

        Raises
        ------
        FusionError
            Unknown task/attention, fewer than 2 backbones, rows that do not align, NaN/inf,
            a single class in ``y``.
        """
        self._check_params()
        if len(Xs) < 2:
            raise FusionError("DVME fuses at least two backbones")
        rows = {len(X) for X in Xs}
        if len(rows) != 1 or len(y) not in rows:
            raise FusionError(f"backbone row counts {sorted(len(X) for X in Xs)} and "
                              f"{len(y)} labels do not align")
        with _as_fusion_error():
            Xt = [check_features(X, self.device) for X in Xs]
            targets = make_targets(self.task, y, self.device)
        scalers = [Standardiser.fit(X) for X in Xt]
        self.means_ = [s.mean for s in scalers]
        self.scales_ = [s.scale for s in scalers]
        Xt = [s(X) for s, X in zip(scalers, Xt, strict=True)]
        Xv = self._standardise(Xs_val)
        target, n_out, loss_fn = targets.target, targets.n_out, targets.loss()
        self.classes_ = targets.classes
        self.n_out_ = n_out
        self._build([X.shape[1] for X in Xt], n_out)
        model = self.module_
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, stale = -np.inf, copy.deepcopy(model.state_dict()), 0
        self.history_ = []
        n = len(target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # dropout masks
            for _epoch in range(self.max_epochs):
                model.train()
                for idx in torch.randperm(n, generator=gen).split(self.batch_size):
                    idx = idx.to(self.device)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model([X[idx] for X in Xt]), target[idx])
                    loss.backward()
                    opt.step()
                score = primary_score(self.task, np.asarray(y_val), self._proba(Xv))
                self.history_.append(float(score))
                if np.isfinite(score) and score > best + 1e-6:
                    best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        model.load_state_dict(best_state)
        self.best_val_ = float(best)
        self.n_epochs_ = len(self.history_)
        return self

    @torch.inference_mode()
    def _proba(self, Xt: Sequence[torch.Tensor]) -> np.ndarray:
        self.module_.eval()
        return logits_to_proba(self.task, self.module_(Xt))

    def predict_proba(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, C), or per-label probabilities (N, K) for multilabel."""
        return self._proba(self._standardise(Xs))

    def predict(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Predicted class label (N,), or 0/1 labels (N, K) for multilabel."""
        return proba_to_labels(self.task, self.predict_proba(Xs))

    @torch.inference_mode()
    def attention_weights(self, Xs: Sequence[np.ndarray]) -> np.ndarray:
        """Per-row attention weight of each backbone, (N, K)."""
        self.module_.eval()
        return self.module_.weights(self._standardise(Xs))[1].cpu().numpy()

    def score(self, Xs: Sequence[np.ndarray], y: np.ndarray) -> float:
        """The task's primary metric."""
        return primary_score(self.task, np.asarray(y), self.predict_proba(Xs))

    def save(self, path: str | Path) -> None:
        """Write the head (state dict, standardisation, config) to one torch file."""
        torch.save({"config": json.dumps(self._config()), "n_out": self.n_out_,
                    "dims": [len(m) for m in self.means_],
                    "means": [m.cpu() for m in self.means_],
                    "scales": [s.cpu() for s in self.scales_],
                    "state_dict": {k: v.cpu() for k, v in self.module_.state_dict().items()}},
                   path)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> DVME:
        """A head written by :meth:`save`, ready for ``predict_proba``."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(**json.loads(blob["config"]), device=device)
        head.means_ = [m.to(device) for m in blob["means"]]
        head.scales_ = [s.to(device) for s in blob["scales"]]
        head.n_out_ = int(blob["n_out"])
        head._build(blob["dims"], head.n_out_)
        head.module_.load_state_dict(blob["state_dict"])
        return head
