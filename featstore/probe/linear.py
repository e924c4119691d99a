"""Linear probes on frozen embeddings: full-batch L-BFGS in torch, L2 chosen on val."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from featstore.choices import DEFAULT_L2_GRID, DEFAULT_TOL
from featstore.errors import ProbeError
from featstore.metrics import primary_score
from featstore.probe import _lbfgs
from featstore.rows import ColumnBlocks, blocks, row_block
from featstore.task import (
    Standardiser,
    Targets,
    check_features,
    check_matrix,
    check_task,
    logits_to_proba,
    make_targets,
    proba_to_labels,
)

VAL_TIE = 1e-3


@dataclass
class _Problem:
    """Standardised training data and targets, shared by every L2 value of a sweep."""

    Xs: torch.Tensor
    targets: Targets
    standardiser: Standardiser


# a ColumnBlocks design whose float32 copy would take more than this is streamed (made a
# block at a time at every pass) instead of held: the concat of five PCam backbones
DENSE_BYTES = 1 << 30


def _prepare(task: str, X: np.ndarray | ColumnBlocks, y: np.ndarray, device: str,
             overwrite: bool = False) -> _Problem:
    """The standardised problem. With ``overwrite`` (a float32 ``X`` the caller gives up),
    standardised in place: the solve then holds no copy of the training rows beside it.
    :class:`ColumnBlocks` (several backbones side by side) are concatenated when the float32
    copy takes at most ``DENSE_BYTES``, else streamed (:class:`_lbfgs.Streamed`)."""
    check_task(task)
    if isinstance(X, ColumnBlocks) and X.nbytes_float32 <= DENSE_BYTES:
        X, overwrite = check_matrix(X).dense(), True
    targets = make_targets(task, y, device)
    if len(X) != len(targets.target):
        raise ProbeError(f"{len(X)} feature rows but {len(targets.target)} labels")
    if isinstance(X, ColumnBlocks):
        standardiser = Standardiser.fit_blocks(check_matrix(X), device)
        return _Problem(_lbfgs.Streamed(X, standardiser.mean, standardiser.scale), targets,
                        standardiser)
    Xt = check_features(X, device)
    standardiser = Standardiser.fit(Xt)
    owned = overwrite and isinstance(X, np.ndarray) and X.dtype == np.float32 and (
        Xt.device.type == "cpu")
    return _Problem(standardiser.apply_(Xt) if owned else standardiser(Xt), targets,
                    standardiser)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """A linear classifier on standardised features (a scikit-learn estimator).

    The objective is the mean loss (logistic for binary, softmax cross-entropy for
    multiclass and ordinal, one logistic loss per label summed for multilabel) plus
    ``l2 / 2 * ||W||^2`` (the bias is not penalised), minimised by full-batch L-BFGS.
    Equivalent to sklearn's ``LogisticRegression(C=1 / (l2 * n_samples))`` on the same
    standardised features (per label, for multilabel).

    Parameters
    ----------
    task : str
        ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
    l2 : float
        Weight-decay strength (see above).
    max_iter : int
        L-BFGS iterations at most.
    tol : float
        Convergence: largest absolute gradient component (sklearn's lbfgs default, 1e-4).
    device : str
        Torch device for the solve.

    Attributes
    ----------
    coef_ (D, outputs), intercept_ (outputs,), mean_ and scale_ (D,) (the train
    standardisation), classes_, n_iter_, converged_.
    """

    def __init__(self, task: str = "binary", *, l2: float = 1e-4, max_iter: int = 500,
                 tol: float = DEFAULT_TOL, device: str = "cpu") -> None:
        self.task = task
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        """Fit on features ``X`` (N, D) and labels ``y`` ((N,) ints, or (N, K) 0/1 multilabel).

        Raises
        ------
        ProbeError
            Non-finite features, unknown task, or fewer than two classes in ``y``.
        """
        _check_solver_args(self.l2, self.max_iter, self.tol)
        prob = _prepare(self.task, X, y, self.device)
        sol = _solve(prob, [float(self.l2)], self.max_iter, self.tol)
        return self._set_solution(prob, sol, 0)

    def _set_solution(self, prob: _Problem, sol: _lbfgs.BatchedSolution, i: int) -> LinearProbe:
        self.classes_ = prob.targets.classes
        self.mean_ = prob.standardiser.mean.cpu().numpy()
        self.scale_ = prob.standardiser.scale.cpu().numpy()
        self.coef_ = sol.W[i].cpu().numpy()
        self.intercept_ = sol.b[i].cpu().numpy()
        self.n_iter_ = int(sol.n_iter[i])
        self.converged_ = bool(sol.converged[i])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits (N, outputs) on standardised features, a block of rows at a time (``X``
        in any float dtype; only a block is ever held in float32)."""
        X = check_matrix(X)
        mean = torch.as_tensor(self.mean_, device=self.device)
        scale = torch.as_tensor(self.scale_, device=self.device)
        W = torch.as_tensor(self.coef_, device=self.device)
        b = torch.as_tensor(self.intercept_, device=self.device)
        out = np.empty((len(X), W.shape[1]), dtype=np.float32)
        for rows in blocks(len(X)):
            Xt = torch.as_tensor(row_block(X, rows), dtype=torch.float32, device=self.device)
            out[rows] = (((Xt - mean) / scale) @ W + b).cpu().numpy()
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C); for multilabel, per-label probabilities (N, K)."""
        return logits_to_proba(self.task, torch.as_tensor(self.decision_function(X)))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class label (N,), or 0/1 labels (N, K) for multilabel."""
        return proba_to_labels(self.task, self.predict_proba(X))

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """The task's primary metric (AUC, accuracy, quadratic kappa or mean AUC)."""
        return primary_score(self.task, np.asarray(y), self.predict_proba(X))


def _check_solver_args(l2: float, max_iter: int, tol: float) -> None:
    if not (np.isfinite(l2) and l2 >= 0):
        raise ProbeError(f"l2={l2!r}: expected a finite value >= 0")
    if max_iter < 1:
        raise ProbeError(f"max_iter={max_iter!r}: expected at least 1")
    if not tol > 0:
        raise ProbeError(f"tol={tol!r}: expected a value > 0")


def _solve(prob: _Problem, grid: Sequence[float], max_iter: int,
           tol: float) -> _lbfgs.BatchedSolution:
    t = prob.targets
    return _lbfgs.solve(prob.Xs, t.target, t.kind, t.n_out, torch.tensor(grid),
                        max_iter=max_iter, tol=tol)


def _grid_logits(standardiser: Standardiser, sol: _lbfgs.BatchedSolution, X: np.ndarray,
                 device: str) -> list[np.ndarray]:
    """Each solution's logits (N, outputs) on rows ``X``: one standardised block at a time,
    scored by every L2 value at once."""
    X = check_matrix(X)
    P, D, C = sol.W.shape
    W = sol.W.permute(1, 0, 2).reshape(D, P * C)
    out = np.empty((P, len(X), C), dtype=np.float32)
    for rows in blocks(len(X)):
        Xs = standardiser(torch.as_tensor(row_block(X, rows), dtype=torch.float32,
                                          device=device))
        out[:, rows] = ((Xs @ W).view(-1, P, C) + sol.b).permute(1, 0, 2).cpu().numpy()
    return list(out)


@dataclass
class SweepResult:
    """The probe chosen on val, with the whole sweep."""

    probe: LinearProbe
    l2: float
    val_scores: dict[float, float]
    n_iter: dict[float, int] = field(default_factory=dict)
    converged: dict[float, bool] = field(default_factory=dict)
    val_proba: np.ndarray | None = None  # the chosen probe's probabilities on val


def choose_on_val(scores: Sequence[float], tie: float = VAL_TIE) -> int:
    """Index of the chosen hyperparameter, ``scores`` ordered strongest regularisation first.

    The first score within ``tie`` of the best wins: val differences that small are solver
    and sampling noise, and the stronger regularisation is the safer choice. NaN scores
    (undefined metric) lose; if all are NaN the strongest is chosen.
    """
    finite = [s for s in scores if np.isfinite(s)]
    if not finite:
        return 0
    top = max(finite)
    return next(i for i, s in enumerate(scores) if np.isfinite(s) and s >= top - tie)


def fit_with_validation(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                        y_val: np.ndarray, *, task: str,
                        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                        device: str = "cpu", max_iter: int = 500,
                        tol: float = DEFAULT_TOL, overwrite: bool = False) -> SweepResult:
    """Fit one probe per L2 value and keep the best on val by the task's metric.

    All L2 values are solved side by side over one standardised copy of the features
    (:mod:`featstore.probe._lbfgs`), each to its own convergence test. Val scores within
    ``VAL_TIE`` of the best count as ties and go to the stronger regularisation
    (:func:`choose_on_val`); a probe that did not converge is reported as such. With
    ``overwrite``, a float32 ``X_train`` is standardised in place (the caller's copy, given
    up: the sweep then holds the training rows once).

    Raises
    ------
    ProbeError
        As :meth:`LinearProbe.fit` does.
    """
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid:
        raise ProbeError("the L2 grid is empty")
    for l2 in grid:
        _check_solver_args(l2, max_iter, tol)
    prob = _prepare(task, X_train, y_train, device, overwrite)
    sol = _solve(prob, grid, max_iter, tol)
    probes = [LinearProbe(task, l2=l2, device=device, max_iter=max_iter, tol=tol)
              ._set_solution(prob, sol, i) for i, l2 in enumerate(grid)]
    logits = _grid_logits(prob.standardiser, sol, X_val, device)
    y_val = np.asarray(y_val)
    proba = [logits_to_proba(task, torch.from_numpy(Z)) for Z in logits]
    del logits
    scores = {l2: primary_score(task, y_val, p) for l2, p in zip(grid, proba, strict=True)}
    best = choose_on_val(list(scores.values()))
    return SweepResult(probe=probes[best], l2=grid[best], val_scores=scores,
                       val_proba=proba[best],
                       n_iter={l2: int(sol.n_iter[i]) for i, l2 in enumerate(grid)},
                       converged={l2: bool(sol.converged[i]) for i, l2 in enumerate(grid)})
