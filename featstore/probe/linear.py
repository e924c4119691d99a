"""Linear probes on frozen embeddings: full-batch L-BFGS in torch, L2 chosen on val."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featstore.data.manifest import TASKS
from featstore.errors import ProbeError
from featstore.probe.metrics import primary_score

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, 2, 9))


class LinearProbe:
    """A linear classifier on standardised features (an sklearn-style estimator).

    The objective is the mean cross-entropy (sigmoid for binary and multilabel, softmax for
    multiclass and ordinal) plus ``l2 / 2 * ||W||^2`` (the bias is not penalised), minimised
    by full-batch L-BFGS with a strong-Wolfe line search. Equivalent to sklearn's
    ``LogisticRegression(C=1 / (l2 * n_samples))``.

    Parameters
    ----------
    task : str
        ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
    l2 : float
        Weight-decay strength (see above).
    max_iter : int
        L-BFGS iterations at most.
    tol : float
        Gradient-norm tolerance (max abs component) for convergence.
    device : str
        Torch device for the solve.
    """

    def __init__(self, task: str = "binary", *, l2: float = 1e-4, max_iter: int = 500,
                 tol: float = 1e-5, device: str = "cpu") -> None:
        self.task = task
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    def _check_X(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ProbeError(f"features must be 2-D (N, D), got shape {X.shape}")
        if not np.isfinite(X).all():
            bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise ProbeError(f"features hold NaN or inf (first at row {bad})")
        return torch.as_tensor(X, dtype=torch.float32, device=self.device)

    def fit(self, X: np.ndarray, y: np.ndarray, *,
            init: tuple[np.ndarray, np.ndarray] | None = None) -> LinearProbe:
        """Fit on features ``X`` (N, D) and labels ``y`` ((N,) ints, or (N, K) 0/1 multilabel).

        ``init``: optional (coef, intercept) to start from (warm start along an L2 path).

        Raises
        ------
        ProbeError
            Non-finite features, unknown task, or fewer than two classes in ``y``.
        """
        if self.task not in TASKS:
            raise ProbeError(f"unknown task {self.task!r} (expected one of {', '.join(TASKS)})")
        Xt = self._check_X(X)
        y = np.asarray(y)
        if self.task == "multilabel":
            y = y.reshape(len(y), -1)
            n_out = y.shape[1]
            target = torch.as_tensor(y, dtype=torch.float32, device=self.device)
            self.classes_ = np.arange(n_out)
        else:
            y = y.reshape(-1)
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ProbeError(f"training labels hold one class only ({self.classes_[0]}); "
                                 "a probe needs at least two")
            n_classes = int(max(y.max() + 1, len(self.classes_)))
            n_out = 1 if self.task == "binary" else n_classes
            target = torch.as_tensor(y, dtype=torch.long if n_out > 1 else torch.float32,
                                     device=self.device)
        if len(Xt) != len(y):
            raise ProbeError(f"{len(Xt)} feature rows but {len(y)} labels")

        mean = Xt.mean(0)
        std = Xt.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        Xs = (Xt - mean) / std
        self.mean_, self.scale_ = mean.cpu().numpy(), std.cpu().numpy()

        W = torch.zeros(Xs.shape[1], n_out, device=self.device)
        b = torch.zeros(n_out, device=self.device)
        if init is not None:
            W = torch.as_tensor(init[0], dtype=torch.float32, device=self.device).clone()
            b = torch.as_tensor(init[1], dtype=torch.float32, device=self.device).clone()
        W.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, history_size=20,
                                tolerance_grad=self.tol, tolerance_change=1e-10,
                                line_search_fn="strong_wolfe")
        l2 = float(self.l2)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = Xs @ W + b
            if n_out == 1 or self.task == "multilabel":
                loss = F.binary_cross_entropy_with_logits(logits.squeeze(1) if n_out == 1
                                                          else logits, target)
            else:
                loss = F.cross_entropy(logits, target)
            loss = loss + 0.5 * l2 * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        state = opt.state[opt._params[0]]
        self.n_iter_ = int(state.get("n_iter", 0))
        grad = torch.cat([W.grad.reshape(-1), b.grad.reshape(-1)]).abs().max().item()
        self.converged_ = bool(grad <= self.tol * 10 or self.n_iter_ < self.max_iter)
        self.coef_ = W.detach().cpu().numpy()
        self.intercept_ = b.detach().cpu().numpy()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits (N, outputs) on standardised features."""
        Xt = self._check_X(X)
        mean = torch.as_tensor(self.mean_, device=self.device)
        scale = torch.as_tensor(self.scale_, device=self.device)
        W = torch.as_tensor(self.coef_, device=self.device)
        b = torch.as_tensor(self.intercept_, device=self.device)
        return (((Xt - mean) / scale) @ W + b).cpu().numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C); for multilabel, per-label probabilities (N, K)."""
        z = torch.as_tensor(self.decision_function(X))
        if self.task == "multilabel":
            return torch.sigmoid(z).numpy()
        if z.shape[1] == 1:
            p = torch.sigmoid(z[:, 0])
            return torch.stack([1 - p, p], dim=1).numpy()
        return torch.softmax(z, dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class (N,), or 0/1 labels (N, K) for multilabel."""
        p = self.predict_proba(X)
        return (p >= 0.5).astype(int) if self.task == "multilabel" else p.argmax(1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """The task's primary metric (AUC, accuracy, quadratic kappa or mean AUC)."""
        return primary_score(self.task, np.asarray(y), self.predict_proba(X))


@dataclass
class SweepResult:
    """The probe chosen on val, with the whole sweep."""

    probe: LinearProbe
    l2: float
    val_scores: dict[float, float]


def fit_with_validation(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                        y_val: np.ndarray, *, task: str,
                        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                        device: str = "cpu", max_iter: int = 500) -> SweepResult:
    """Fit one probe per L2 value (strongest first, warm-started) and keep the best on val.

    Ties go to the stronger regularisation. Raises :class:`ProbeError` as ``fit`` does.
    """
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    best: tuple[float, float, LinearProbe] | None = None
    scores: dict[float, float] = {}
    init = None
    for l2 in grid:
        probe = LinearProbe(task, l2=l2, device=device, max_iter=max_iter)
        probe.fit(X_train, y_train, init=init)
        init = (probe.coef_, probe.intercept_)
        s = probe.score(X_val, y_val)
        scores[l2] = s
        if best is None or (np.isfinite(s) and (not np.isfinite(best[0]) or s > best[0])):
            best = (s, l2, probe)
    assert best is not None
    return SweepResult(probe=best[2], l2=best[1], val_scores=scores)
