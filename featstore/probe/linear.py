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
from featstore.task import (
    Standardiser,
    Targets,
    check_features,
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


def _prepare(task: str, X: np.ndarray, y: np.ndarray, device: str) -> _Problem:
    check_task(task)
    Xt = check_features(X, device)
    targets = make_targets(task, y, device)
    if len(Xt) != len(targets.target):
        raise ProbeError(f"{len(Xt)} feature rows but {len(targets.target)} labels")
    standardiser = Standardiser.fit(Xt)
    return _Problem(standardiser(Xt), targets, standardiser)


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
        """Logits (N, outputs) on standardised features."""
        Xt = check_features(X, self.device)
        mean = torch.as_tensor(self.mean_, device=self.device)
        scale = torch.as_tensor(self.scale_, device=self.device)
        W = torch.as_tensor(self.coef_, device=self.device)
        b = torch.as_tensor(self.intercept_, device=self.device)
        return (((Xt - mean) / scale) @ W + b).cpu().numpy()

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


@dataclass
class SweepResult:
    """The probe chosen on val, with the whole sweep."""

    probe: LinearProbe
    l2: float
    val_scores: dict[float, float]
    n_iter: dict[float, int] = field(default_factory=dict)
    converged: dict[float, bool] = field(default_factory=dict)


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
                        tol: float = DEFAULT_TOL) -> SweepResult:
    """Fit one probe per L2 value and keep the best on val by the task's metric.

    All L2 values are solved side by side over one standardised copy of the features
    (:mod:`featstore.probe._lbfgs`), each to its own convergence test. Val scores within
    ``VAL_TIE`` of the best count as ties and go to the stronger regularisation
    (:func:`choose_on_val`); a probe that did not converge is reported as such.

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
    prob = _prepare(task, X_train, y_train, device)
    sol = _solve(prob, grid, max_iter, tol)
    scores: dict[float, float] = {}
    probes = []
    for i, l2 in enumerate(grid):
        probe = LinearProbe(task, l2=l2, device=device, max_iter=max_iter, tol=tol)
        probes.append(probe._set_solution(prob, sol, i))
        scores[l2] = probe.score(X_val, y_val)
    best = choose_on_val(list(scores.values()))
    return SweepResult(probe=probes[best], l2=grid[best], val_scores=scores,
                       n_iter={l2: int(sol.n_iter[i]) for i, l2 in enumerate(grid)},
                       converged={l2: bool(sol.converged[i]) for i, l2 in enumerate(grid)})
