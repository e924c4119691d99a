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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ARMIJO = 1e-4
MAX_BACKTRACK = 30
PRECONDITION_ROWS = 8192
TINY_LOG = -69.0  # log(1e-30)
# weight of the feature covariance against l2 in the preconditioner; any positive value
# gives the same minimiser, this one converged fastest on benchmarks/probe_vs_sklearn.py
CURVATURE = 2.0


def covariance_eigh(X: torch.Tensor, *, rows: int = PRECONDITION_ROWS,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (D,) and eigenvectors (D, D) of X^T X / n over at most ``rows`` rows."""
    if len(X) > rows:
        g = torch.Generator().manual_seed(seed)
        X = X[torch.randperm(len(X), generator=g)[:rows].to(X.device)]
    e, U = torch.linalg.eigh((X.T @ X / len(X)).double())
    return e.clamp(min=0).to(X.dtype), U.to(X.dtype)


@dataclass
class BatchedSolution:
    """Per-problem weights (P, D, C), biases (P, C), iterations, convergence, final loss."""

    W: torch.Tensor
    b: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    grad_max: torch.Tensor
    loss: torch.Tensor


def _loss_grad(X: torch.Tensor, target: torch.Tensor, kind: str, W: torch.Tensor,
               b: torch.Tensor, l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    """Mean loss + l2/2 ||W||^2 (float64) and its gradients for p problems at once.

    W: (p, D, C), b: (p, C), l2: (p,). ``kind`` is ``softmax`` (target: (N,) class ids) or
    ``sigmoid`` (target: (N, C) 0/1, the C losses summed per row).
    """
    p, d, c = W.shape
    n = X.shape[0]
    Z = (X @ W.permute(1, 0, 2).reshape(d, p * c)).view(n, p, c) + b
    if kind == "softmax":
        logp = torch.log_softmax(Z, dim=2)
        picked = logp.gather(2, target.view(n, 1, 1).expand(n, p, 1)).squeeze(2)
        data_loss = -picked.sum(0, dtype=torch.float64) / n
        # probabilities below 1e-30 become exact zeros: left alone, near-separable problems
        # fill G with denormal floats, which make the matmuls 10x slower on x86 CPUs
        G = logp.exp().masked_fill_(logp < TINY_LOG, 0.0)
        G.scatter_add_(2, target.view(n, 1, 1).expand(n, p, 1),
                       torch.full((n, p, 1), -1.0, dtype=G.dtype, device=G.device))
    else:
        T = target.view(n, 1, c)
        # softplus(z) - t z  is the BCE with logits, stable for large |z|
        data_loss = (torch.nn.functional.softplus(Z) - T * Z).sum(2).sum(
            0, dtype=torch.float64) / n
        G = torch.sigmoid(Z).masked_fill_(Z < TINY_LOG, 0.0) - T
    G /= n
    # G^T X reads X row-major; X^T G walks it column-wise and is ~3x slower on a CPU
    gW = (G.reshape(n, p * c).T @ X).view(p, c, d).transpose(1, 2) + l2.view(p, 1, 1) * W
    gb = G.sum(0, dtype=torch.float64).to(G.dtype)
    # the loss is accumulated in float64: near the optimum, float32 sums over N rows are
    # noisier than the decrease the line search must see
    loss = data_loss + 0.5 * l2.double() * (W.double() ** 2).sum((1, 2))
    return loss, gW, gb


def solve(X: torch.Tensor, target: torch.Tensor, kind: str, n_out: int, l2: torch.Tensor, *,
          max_iter: int = 500, tol: float = 1e-4, history: int = 10,
          precondition: bool = True) -> BatchedSolution:
    """Minimise P logistic objectives, one per entry of ``l2``, over the same ``X``.

    Convergence: the largest absolute component of the gradient with respect to (W, b) is
    <= ``tol`` (as scipy's ``pgtol`` in sklearn's lbfgs). A problem whose line search cannot
    decrease the loss stops and is reported as not converged.
    """
    P = l2.shape[0]
    d = X.shape[1]
    dt, dev = X.dtype, X.device
    l2 = l2.to(dev, dt)
    if precondition:
        e, U = covariance_eigh(X)
        scale = (CURVATURE * e.view(1, d) + l2.view(P, 1)).sqrt()  # (P, D)
    else:
        U, scale = None, torch.ones(P, d, dtype=dt, device=dev)

    def to_w(V: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        Wr = V / scale[idx].unsqueeze(2)
        return Wr if U is None else torch.einsum("ij,pjc->pic", U, Wr)

    def evaluate(xv: torch.Tensor, idx: torch.Tensor):
        V, b = xv[:, : d * n_out].view(-1, d, n_out), xv[:, d * n_out:]
        f, gW, gb = _loss_grad(X, target, kind, to_w(V, idx), b, l2[idx])
        gmax = torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))
        gV = gW if U is None else torch.einsum("ji,pjc->pic", U, gW)
        gV = gV / scale[idx].unsqueeze(2)
        return f, torch.cat([gV.reshape(len(idx), -1), gb], dim=1), gmax

    every = torch.arange(P, device=dev)
    x = torch.zeros(P, d * n_out + n_out, dtype=dt, device=dev)
    f, g, gmax = evaluate(x, every)
    M = x.shape[1]
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
        # two-loop recursion, batched over problems; rho == 0 marks an unused pair
        q = -g[idx]
        alphas = []
        for k in range(history):
            j = (head - 1 - k) % history
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
        t = torch.ones(len(idx), dtype=dt, device=dev)
        accepted = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        f_new, x_new, g_new = f[idx].clone(), x[idx].clone(), g[idx].clone()
        gmax_new = gmax[idx].clone()
        for _ in range(MAX_BACKTRACK):
            todo = (~accepted).nonzero().squeeze(1)
            xt = x[idx[todo]] + t[todo, None] * q[todo]
            ft, gt, gm = evaluate(xt, idx[todo])
            ok = torch.isfinite(ft) & (ft <= f[idx[todo]] + ARMIJO * t[todo] * gtd[todo])
            done = todo[ok]
            f_new[done], x_new[done], g_new[done], gmax_new[done] = ft[ok], xt[ok], gt[ok], gm[ok]
            accepted[done] = True
            if accepted.all():
                break
            t[todo[~ok]] *= 0.5
        stalled[idx[~accepted]] = True
        ok_idx = idx[accepted]
        s = x_new[accepted] - x[ok_idx]
        yv = g_new[accepted] - g[ok_idx]
        sy = (s * yv).sum(1)
        good = sy > 1e-10 * (s * s).sum(1).sqrt() * (yv * yv).sum(1).sqrt()
        S[head, ok_idx] = s
        Yh[head, ok_idx] = yv
        rho[head, ok_idx] = torch.where(good, 1.0 / sy.clamp(min=1e-30), torch.zeros_like(sy))
        rho[head, idx[~accepted]] = 0
        gamma[ok_idx[good]] = sy[good] / (yv[good] * yv[good]).sum(1)
        head = (head + 1) % history
        x[ok_idx], f[ok_idx], g[ok_idx] = x_new[accepted], f_new[accepted], g_new[accepted]
        gmax[ok_idx] = gmax_new[accepted]
        n_iter[ok_idx] += 1
    W = to_w(x[:, : d * n_out].view(P, d, n_out), every)
    return BatchedSolution(W=W.clone(), b=x[:, d * n_out:].clone(), n_iter=n_iter,
                           converged=gmax <= tol, grad_max=gmax, loss=f)
