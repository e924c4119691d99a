"""Batched L-BFGS for many L2-regularised logistic regressions on one design matrix.

A probe sweep fits the same features under P regularisation strengths. On a CPU each
function evaluation is dominated by reading X (N x D); solving the P problems side by side
reads X once per evaluation for all of them (one (N, D) @ (D, P*C) matmul instead of P
thin ones). Each problem keeps its own L-BFGS history, step length (Armijo backtracking)
and convergence test, so the result is each problem's own minimiser, as if solved alone;
converged problems drop out of the matmuls.

Embeddings are strongly correlated (a few directions carry most of the variance), which makes
plain L-BFGS crawl. The solver therefore works in preconditioned coordinates: with the
feature covariance S = U diag(e) U^T (estimated once, from a row sample), W = U (V / d) with
d = sqrt(CURVATURE * e + l2) per problem. This is an exact change of variables (same objective,
same minimiser, convergence still tested on the gradient with respect to W); it only
equalises the curvature L-BFGS sees.

Fewer training rows than dimensions (a small labelled fraction of a wide embedding, the
study's own setting) is solved in the row space of X: with the thin SVD X = Us diag(s) Vs^T,
W = Vs Wr exactly, because the gradient of the mean loss, X^T G, always lies in that space and
the L2 term only shrinks what is outside it (from W = 0, the iterates above never leave it).
The same eigen-coordinates (e = s^2 / N), on the N x N design Us diag(s) instead of the
N x D one, and no D x D eigendecomposition.

Each iteration computes the change of the logits along its search direction once
(dZ = X dW, one matmul); the line search then evaluates the loss at Z + t dZ in float64
without touching X, and only an accepted step pays for its gradient. The logits are carried in
float64 from step to step, so the line search sees decreases far below float32's resolution
of the loss; a strongly regularised problem (l2 = 1e4) no longer stalls at its noise floor.

X need not be held: a :class:`Streamed` design (the standardised concatenation of several
backbones' compact embeddings, fusion's concat probe at full size) is made a block of rows
at a time for each of the two passes an iteration reads it in (X dW, G^T X); the same
arithmetic, only the sums of G^T X taken block by block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from featstore import progress

if TYPE_CHECKING:
    from featstore.rows import ColumnBlocks

ARMIJO = 1e-4
MAX_BACKTRACK = 30
PRECONDITION_ROWS = 8192
# rows of the covariance sample per dimension at least: a sample of about as many rows as
# dimensions spreads the eigenvalues of an isotropic part from 0 to 4x (Marchenko-Pastur),
# and the directions it reads as flat get steps 1 / sqrt(l2) too long at a weak l2: the
# concatenation of four 2,048-d sets (8,576 dims) on 8,192 sampled rows took 500 iterations
# without converging at l2 <= 1e-5 where 4 rows a dimension converge in ~10
SAMPLE_ROWS_PER_DIM = 4
EIGH64_DIMS = 4096  # wider covariances are decomposed in float32 (covariance_eigh)
TINY_LOG = -69.0  # log(1e-30)
# weight of the feature covariance against l2 in the preconditioner; any positive value
# gives the same minimiser, this one converged fastest on benchmarks/probe_vs_sklearn.py
CURVATURE = 2.0


STREAM_ROWS = 2048  # rows of a Streamed block (a 2048 x 8576 float32 block is 67 MiB)


class Streamed:
    """The standardised matrix ``(X - mean) / scale`` of ``X``, a
    :class:`featstore.rows.ColumnBlocks` of compact parts, made a block of rows at a time
    (the same elementwise arithmetic as standardising it whole); never held whole. Each
    part of a block is converted into its own float32 buffer (a contiguous copy, ~2x faster
    than filling one wide block) and multiplied by its rows of the weights."""

    def __init__(self, X: ColumnBlocks, mean: torch.Tensor, scale: torch.Tensor,
                 block_rows: int | None = None) -> None:
        self.source, self.mean, self.scale = X, mean, scale
        self.shape = X.shape
        self.dtype, self.device = torch.float32, mean.device
        self.block_rows = block_rows = block_rows or STREAM_ROWS
        rows = min(block_rows, len(X))
        self._bufs = [torch.empty(rows, w, dtype=torch.float32, device=mean.device)
                      for w in X.widths]
        edges = np.cumsum([0, *X.widths]).tolist()
        self._cols = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def __len__(self) -> int:
        return self.shape[0]

    def _blocks(self):
        """(row slice, [(columns, standardised float32 rows of one part)])."""
        from featstore.rows import blocks

        for b in blocks(len(self), self.block_rows):
            out = []
            for part, buf, cols in zip(self.source.parts, self._bufs, self._cols,
                                       strict=True):
                Xb = buf[:b.stop - b.start]
                Xb.copy_(torch.from_numpy(part[b]))
                out.append((cols, Xb.sub_(self.mean[cols]).div_(self.scale[cols])))
            yield b, out

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Standardised rows ``idx`` (a dense (len(idx), D) tensor)."""
        Xb = torch.from_numpy(self.source.block(idx.cpu().numpy())).to(self.device)
        return Xb.sub_(self.mean).div_(self.scale)

    def mm(self, M: torch.Tensor) -> torch.Tensor:
        """X @ M."""
        out = torch.empty(len(self), M.shape[1], dtype=M.dtype, device=M.device)
        for b, parts in self._blocks():
            (cols, Xb), *rest = parts
            acc = Xb @ M[cols]
            for cols, Xb in rest:
                acc += Xb @ M[cols]
            out[b] = acc
        return out

    def tmm(self, G: torch.Tensor) -> torch.Tensor:
        """G^T @ X (G: (N, K))."""
        out = torch.zeros(G.shape[1], self.shape[1], dtype=G.dtype, device=G.device)
        for b, parts in self._blocks():
            Gt = G[b].T
            for cols, Xb in parts:
                out[:, cols] += Gt @ Xb
        return out


def _mm(X: torch.Tensor | Streamed, M: torch.Tensor) -> torch.Tensor:
    return X.mm(M) if isinstance(X, Streamed) else X @ M


def _tmm(G: torch.Tensor, X: torch.Tensor | Streamed) -> torch.Tensor:
    # G^T X reads X row-major; X^T G walks it column-wise and is ~3x slower on a CPU
    return X.tmm(G) if isinstance(X, Streamed) else G.T @ X


def covariance_eigh(X: torch.Tensor | Streamed, *, rows: int | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (D,) and eigenvectors (D, D) of X^T X / n over at most ``rows`` rows
    (default: ``PRECONDITION_ROWS``, or ``SAMPLE_ROWS_PER_DIM`` a dimension where that is
    more), sampled without replacement; a :class:`Streamed` design's sample is summed a
    block of rows at a time, never held whole.

    Solved in float64, or in float32 above ``EIGH64_DIMS`` dimensions (the concatenation
    of several backbones): there the float64 problem and its workspace would take ~2.4 GB
    (D = 8,576) and the preconditioner needs no more than float32's accuracy (any
    orthonormal basis gives the same minimiser)."""
    dt, (n, d) = X.dtype, X.shape
    if rows is None:
        rows = max(PRECONDITION_ROWS, SAMPLE_ROWS_PER_DIM * d)
    pick = None
    if n > rows or isinstance(X, Streamed):
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n, generator=g)[:rows]
    if isinstance(X, Streamed):
        pick = pick.sort().values
        cov = torch.zeros(d, d, dtype=dt, device=X.device)
        for i in range(0, len(pick), X.block_rows):
            Xb = X.rows(pick[i:i + X.block_rows])
            cov.addmm_(Xb.T, Xb)
        cov /= len(pick)
    else:
        if pick is not None:
            X = X[pick.to(X.device)]
        cov = X.T @ X / len(X)
    del X  # the sample: gone before the eigendecomposition's workspace is taken
    e, U = torch.linalg.eigh(cov.double() if cov.shape[0] <= EIGH64_DIMS else cov)
    return e.clamp(min=0).to(dt), U.to(dt)


@dataclass
class _Design:
    """What the logits are computed from, and how the solver's coordinates map to W.

    ``X`` (N, K): the design; ``rotate`` (K, K): W = rotate @ (V / scale) (eigen-coordinates
    of X itself), or None; ``lift`` (D, K): W = lift @ (V / scale) with ``X`` the row-space
    design (N < D), or None; ``e`` (K,): the curvature per coordinate, None unpreconditioned.
    """

    X: torch.Tensor | Streamed
    rotate: torch.Tensor | None = None
    lift: torch.Tensor | None = None
    e: torch.Tensor | None = None


def _design(X: torch.Tensor | Streamed, precondition: bool) -> _Design:
    n, d = X.shape
    if not precondition:
        return _Design(X)
    if n < d and n <= PRECONDITION_ROWS:
        if isinstance(X, Streamed):  # a few rows: held whole
            X = X.rows(torch.arange(n))
        # the thin SVD from the eigendecomposition of the n x n Gram matrix in float64
        # (8x faster than an SVD of X at 2,622 x 8,576; the singular values kept below are
        # at least 1e-3 of the largest, where the Gram's float64 rounding is ~1e-10 of them)
        Xd = X.double()
        e, Us = torch.linalg.eigh(Xd @ Xd.T)
        s, Us = e.flip(0).clamp(min=0).sqrt(), Us.flip(1)
        # X's rank at its own precision (numpy's matrix_rank rule): smaller singular values
        # are rounding (X is centred, so one is always ~0), and their directions, at a weak
        # l2, would take weight from rounding noise amplified by 1 / sqrt(l2)
        keep = s > s[:1].clamp(min=1e-300) * max(n, d) * torch.finfo(X.dtype).eps
        Us, s = Us[:, keep], s[keep]
        Vh = (Us.T @ Xd) / s[:, None]
        del Xd
        return _Design((Us * s).to(X.dtype), lift=Vh.T.contiguous().to(X.dtype),
                       e=(s * s / n).to(X.dtype))
    e, U = covariance_eigh(X)
    return _Design(X, rotate=U, e=e)


@dataclass
class BatchedSolution:
    """Per-problem weights (P, D, C), biases (P, C), iterations, convergence, final loss."""

    W: torch.Tensor
    b: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    grad_max: torch.Tensor
    loss: torch.Tensor


def _data_loss(Z: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss (p,) of logits ``Z`` (N, p, C) (float64 in, float64 out).

    ``kind`` is ``softmax`` (target: (N,) class ids) or ``sigmoid`` (target: (N, C) 0/1, the
    C losses summed per row).
    """
    n, p, _ = Z.shape
    if kind == "softmax":
        logp = torch.log_softmax(Z, dim=2)
        return -logp.gather(2, target.view(n, 1, 1).expand(n, p, 1)).squeeze(2).sum(0) / n
    # softplus(z) - t z  is the BCE with logits, stable for large |z|
    T = target.view(n, 1, -1).to(Z.dtype)
    return (torch.nn.functional.softplus(Z) - T * Z).sum(2).sum(0) / n


def _residual(Z: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """d(mean loss)/dZ (N, p, C) in float32: (softmax or sigmoid of Z - target) / N."""
    n, p, _ = Z.shape
    if kind == "softmax":
        logp = torch.log_softmax(Z, dim=2)
        # probabilities below 1e-30 become exact zeros: left alone, near-separable problems
        # fill G with denormal floats, which make the matmuls 10x slower on x86 CPUs
        G = logp.exp().masked_fill_(logp < TINY_LOG, 0.0)
        G.scatter_add_(2, target.view(n, 1, 1).expand(n, p, 1),
                       torch.full((n, p, 1), -1.0, dtype=G.dtype, device=G.device))
    else:
        G = torch.sigmoid(Z).masked_fill_(Z < TINY_LOG, 0.0) - target.view(n, 1, -1)
    return G.div_(n)


def solve(X: torch.Tensor | Streamed, target: torch.Tensor, kind: str, n_out: int,
          l2: torch.Tensor, *,
          max_iter: int = 500, tol: float = 1e-4, history: int = 10,
          precondition: bool = True) -> BatchedSolution:
    """Minimise P logistic objectives, one per entry of ``l2``, over the same ``X``.

    Each objective is the mean loss + l2/2 ||W||^2 (the bias not penalised). Convergence:
    the largest absolute component of the gradient with respect to (W, b) is <= ``tol`` (as
    scipy's ``pgtol`` in sklearn's lbfgs). A problem whose line search cannot decrease the
    loss stops and is reported as not converged.
    """
    P = l2.shape[0]
    n = X.shape[0]
    dt, dev = X.dtype, X.device
    C = n_out
    l2 = l2.to(dev, dt)
    des = _design(X, precondition)
    Xd = des.X
    k = Xd.shape[1]
    if des.e is None:
        scale = torch.ones(P, k, dtype=dt, device=dev)
    else:
        scale = (CURVATURE * des.e.view(1, k) + l2.view(P, 1)).sqrt()  # (P, K)

    def to_design(V: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        Wr = V / scale[idx].unsqueeze(2)
        return Wr if des.rotate is None else torch.einsum("ij,pjc->pic", des.rotate, Wr)

    def gradient(Z: torch.Tensor, Wd: torch.Tensor, idx: torch.Tensor):
        """(f's gradient in the solver's coordinates (p, M), its largest component in W)."""
        p = len(idx)
        G = _residual(Z.to(dt), target, kind)
        gD = _tmm(G.reshape(n, p * C), Xd).view(p, C, k).transpose(1, 2) + (
            l2[idx].view(p, 1, 1) * Wd)
        gb = G.sum(0, dtype=torch.float64).to(dt)
        gW = gD if des.lift is None else torch.einsum("ij,pjc->pic", des.lift, gD)
        gmax = torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))
        gV = gD if des.rotate is None else torch.einsum("ji,pjc->pic", des.rotate, gD)
        gV = gV / scale[idx].unsqueeze(2)
        return torch.cat([gV.reshape(p, -1), gb], dim=1), gmax

    every = torch.arange(P, device=dev)
    M = k * C + C
    x = torch.zeros(P, M, dtype=dt, device=dev)
    Wd = torch.zeros(P, k, C, dtype=dt, device=dev)  # W, or its row-space coordinates
    Z = torch.zeros(n, P, C, dtype=torch.float64, device=dev)  # the logits X W + b
    f = _data_loss(Z, target, kind)
    g, gmax = gradient(Z, Wd, every)
    S = torch.zeros(history, P, M, dtype=dt, device=dev)
    Yh = torch.zeros(history, P, M, dtype=dt, device=dev)
    rho = torch.zeros(history, P, dtype=dt, device=dev)
    gamma = torch.ones(P, dtype=dt, device=dev)
    n_iter = torch.zeros(P, dtype=torch.long, device=dev)
    stalled = torch.zeros(P, dtype=torch.bool, device=dev)
    head = 0
    for it in range(max_iter):
        active = (gmax > tol) & ~stalled
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        p = len(idx)
        # two-loop recursion, batched over problems; rho == 0 marks an unused pair
        q = -g[idx]
        alphas = []
        for h in range(history):
            j = (head - 1 - h) % history
            a = rho[j, idx] * (S[j, idx] * q).sum(1)
            q -= a[:, None] * Yh[j, idx]
            alphas.append((j, a))
        q *= gamma[idx, None]
        for j, a in reversed(alphas):
            beta = rho[j, idx] * (Yh[j, idx] * q).sum(1)
            q += S[j, idx] * (a - beta)[:, None]
        if it == 0:
            q = -g[idx] / g[idx].abs().sum(1, keepdim=True).clamp(min=1.0)
        gtd = (g[idx] * q).sum(1)
        bad = gtd >= 0  # not a descent direction (numerical trouble): steepest descent
        if bad.any():
            q[bad] = -g[idx][bad]
            gtd[bad] = -(g[idx][bad] ** 2).sum(1)
        # the logits along the direction, once: Z + t dZ for every step length t
        dWd = to_design(q[:, : k * C].view(p, k, C), idx)
        dZ = (_mm(Xd, dWd.permute(1, 0, 2).reshape(k, p * C)).view(n, p, C)
              + q[:, k * C:]).double()
        Z0, W0 = Z[:, idx], Wd[idx].double()
        # ||Wd + t dWd||^2 = a0 + 2 t a1 + t^2 a2 (||W|| = ||Wd||: the maps are orthonormal)
        a0, a1 = (W0 * W0).sum((1, 2)), (W0 * dWd).sum((1, 2))
        a2 = (dWd.double() ** 2).sum((1, 2))
        half_l2 = 0.5 * l2[idx].double()
        t = torch.ones(p, dtype=torch.float64, device=dev)
        accepted = torch.zeros(p, dtype=torch.bool, device=dev)
        f_new = f[idx].clone()
        for _ in range(MAX_BACKTRACK):
            todo = (~accepted).nonzero().squeeze(1)
            tt = t[todo]
            ft = _data_loss(Z0[:, todo] + tt.view(1, -1, 1) * dZ[:, todo], target, kind) + (
                half_l2[todo] * (a0[todo] + 2 * tt * a1[todo] + tt * tt * a2[todo]))
            ok = torch.isfinite(ft) & (ft <= f[idx[todo]] + ARMIJO * tt * gtd[todo].double())
            f_new[todo[ok]] = ft[ok]
            accepted[todo[ok]] = True
            if accepted.all():
                break
            t[todo[~ok]] *= 0.5
        stalled[idx[~accepted]] = True
        rho[head, idx[~accepted]] = 0
        if accepted.any():
            acc = accepted.nonzero().squeeze(1)
            ok_idx = idx[acc]
            ta = t[acc]
            Z_new = Z0[:, acc] + ta.view(1, -1, 1) * dZ[:, acc]
            Wd_new = Wd[ok_idx] + ta.to(dt).view(-1, 1, 1) * dWd[acc]
            x_new = x[ok_idx] + ta.to(dt)[:, None] * q[acc]
            g_new, gmax_new = gradient(Z_new, Wd_new, ok_idx)
            s = x_new - x[ok_idx]
            yv = g_new - g[ok_idx]
            sy = (s * yv).sum(1)
            good = sy > 1e-10 * (s * s).sum(1).sqrt() * (yv * yv).sum(1).sqrt()
            S[head, ok_idx] = s
            Yh[head, ok_idx] = yv
            rho[head, ok_idx] = torch.where(good, 1.0 / sy.clamp(min=1e-30),
                                            torch.zeros_like(sy))
            gamma[ok_idx[good]] = sy[good] / (yv[good] * yv[good]).sum(1)
            x[ok_idx], g[ok_idx], gmax[ok_idx] = x_new, g_new, gmax_new
            f[ok_idx], Z[:, ok_idx], Wd[ok_idx] = f_new[acc], Z_new, Wd_new
            n_iter[ok_idx] += 1
        head = (head + 1) % history
        progress.tick("linear probe on {:,} x {:,}: iteration {}, {} of {} L2 values "
                      "converged", n, X.shape[1], it + 1, int((gmax <= tol).sum()), P)
    W = Wd if des.lift is None else torch.einsum("ij,pjc->pic", des.lift, Wd)
    return BatchedSolution(W=W.clone(), b=x[:, k * C:].clone(), n_iter=n_iter,
                           converged=gmax <= tol, grad_max=gmax, loss=f)
