"""DVME: Dynamic Visual Meta-Embedding, the study's fusion head over several backbones.

After Kiela et al. (2018), "Dynamic Meta-Embeddings", as adapted by Truong et al. (2021):
each backbone k's (standardised) embedding e_k is projected to a common dimension d,
w_k = P_k e_k + b_k; a scorer shared across backbones gives a logit s_k per row; the weights
alpha are softmax_k(s_k) (default), sigmoid(s_k) (gating) or uniform; the fused vector
z = sum_k alpha_k w_k goes through dropout and a linear classifier.

The logit (head version 2) is s_k = a . LN_k(w_k) + c, divided by sqrt(d) for softmax;
LN_k is backbone k's own LayerNorm (learned gain and offset) and the scorer (a, c) starts
at zero. Version 1 scored the raw projections, s_k = a . w_k + c, with a random scorer, and
its attention did worse than the plain mean (issue 12). Measured on balanced PneumoniaMNIST
with three random-weight backbones at 64 px and on generated data (``benchmarks/fuse.py``):

- The random scorer gave each row its own weights from the first step, and the logits'
  spread over rows grew within a few steps (sd 0.3 at the start, 2.0 after five steps for
  the 1024-d backbone, 0.45 for the 64-d one: with Adam, a . w_k moves faster the wider
  backbone k). That gating fits noise: val AUC peaked early, early stopping kept an
  underfitted head (10% of the training rows: test AUC 0.895 softmax, 0.902 sigmoid,
  0.915 uniform). Where the mean is right, replacing each head's per-row weights by their
  average raised test AUC from 0.917 to 0.929 (one signal in every backbone) and from
  0.935 to 0.956 (one pure-noise backbone).
- The score grew with the size of a projection, so a large (or, on that row, loud) one
  won the row's attention for its size alone.

So the zero start makes attention begin as the plain mean and leave it only as far as the
data pays; LN_k scores each projection's direction, not its size (its offset is a learned
per-backbone prior, the part b_k plays in DME's score): it is what lets attention route
each class to the backbone that separates it (generated, softmax accuracy 0.939 without
it, 0.970 with it, uniform 0.934). A softmax logit divided by sqrt(d) is |a| times a cosine,
bounded whatever d and the projections' norms, as in scaled dot-product attention (without
it 0.918 where uniform gives 0.943); sigmoid gates are not divided: they can all open at
once (the plain sum), so per-row spread costs them little, and divided they learn that
routing too slowly (accuracy 0.66 against 0.94 on 1,200 training rows). Heads saved before
version 2 load as version 1 and predict as they did.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pickle
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

HEAD_VERSION = 2  # 1: scorer on the raw projections, random start (before the fix above)


class _DVMEModule(nn.Module):
    def __init__(self, dims: Sequence[int], dim: int, n_out: int, attention: str,
                 dropout: float, version: int = HEAD_VERSION) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in dims)
        self.scorer = nn.Linear(dim, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_out)
        self.attention = attention
        self.version = version
        if version >= 2:
            self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in dims)
            nn.init.zeros_(self.scorer.weight)
            nn.init.zeros_(self.scorer.bias)

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """Attention logits (B, K) of projected embeddings (B, K, dim)."""
        if self.version == 1:
            return self.scorer(w).squeeze(2)
        u = torch.stack([n(w[:, k]) for k, n in enumerate(self.norm)], dim=1)
        s = self.scorer(u).squeeze(2)
        return s / math.sqrt(w.shape[2]) if self.attention == "softmax" else s

    def weights(self, xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected embeddings (B, K, dim) and attention weights (B, K)."""
        w = torch.stack([p(x) for p, x in zip(self.proj, xs, strict=True)], dim=1)
        if self.attention == "uniform":
            alpha = torch.full(w.shape[:2], 1.0 / w.shape[1], device=w.device)
        else:
            s = self.logits(w)
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

    # the head architecture fit builds (module docstring); a loaded head keeps its file's
    _head_version = HEAD_VERSION

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
            self.module_ = _DVMEModule(dims, self.dim, n_out, self.attention, self.dropout,
                                       self._head_version).to(self.device)

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
        """Write the head (state dict, standardisation, config, head version) to one torch
        file."""
        torch.save({"config": json.dumps(self._config()), "n_out": self.n_out_,
                    "version": self.module_.version,
                    "dims": [len(m) for m in self.means_],
                    "means": [m.cpu() for m in self.means_],
                    "scales": [s.cpu() for s in self.scales_],
                    "state_dict": {k: v.cpu() for k, v in self.module_.state_dict().items()}},
                   path)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> DVME:
        """A head written by :meth:`save`, ready for ``predict_proba``; a head written before
        head version 2 (no ``version`` in the file) loads as version 1 and predicts as it did.

        Raises
        ------
        FusionError
            The file is not a saved head, holds a head of an unknown version, or a state that
            does not fit the head its config describes; the message names the file.
        """
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            version, config = blob.get("version", 1), json.loads(blob["config"])
        except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, AttributeError,
                ValueError) as e:
            raise FusionError(f"{path}: not a DVME head written by DVME.save ({e})") from None
        if version not in (1, HEAD_VERSION):
            raise FusionError(f"{path}: DVME head version {version!r}; this featstore reads "
                              f"versions 1 to {HEAD_VERSION} (written by a newer featstore?)")
        head = cls(**config, device=device)
        head._head_version = version
        head.means_ = [m.to(device) for m in blob["means"]]
        head.scales_ = [s.to(device) for s in blob["scales"]]
        head.n_out_ = int(blob["n_out"])
        head._build(blob["dims"], head.n_out_)
        try:
            head.module_.load_state_dict(blob["state_dict"])
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise FusionError(f"{path}: the saved state does not fit a version {version} DVME "
                              f"head ({(lines[1:] or lines)[0].strip()})") from None
        return head
