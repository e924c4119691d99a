"""featstore's linear-probe sweep vs scikit-learn LogisticRegression(lbfgs), a plain torch
L-BFGS loop and warm-started scikit-learn: same L2 grid, same standardised data, same
selection on val, one run, side by side.

    python benchmarks/probe_vs_sklearn.py [--rows 50000] [--dim 2048] [--classes 10]

(a) generated features: N x D with a low-rank class signal and correlated dimensions, the
    shape of real pooled CNN embeddings; split 80/10/10 into train/val/test;
(b) real features: a MedMNIST file from ../shared/data/medmnist embedded by featstore
    extract (timm resnet18, random weights, 64 px), when the folder is present.

sklearn gets C = 1 / (l2 * n_train), its default tol (1e-4) and max_iter=1000; featstore uses
the same tolerance and iteration cap on the same objective. Fits that hit the cap are counted
(unconv): at the weakest L2 the generated data is nearly separable.

The two other baselines, on the same standardised features:
- torch L-BFGS: what one writes by hand in torch, one model per L2 value, cold start,
  torch.optim.LBFGS with strong-Wolfe line search, history 10, float32, on the objective
  mean loss + l2/2 ||W||^2; tolerance_grad = the same 1e-4 on the largest gradient
  component, max_iter=1000, torch's other defaults (max_eval, tolerance_change). unconv:
  fits whose final largest gradient component is above 1e-4.
- sklearn warm: one LogisticRegression(warm_start=True) taken through the grid from the
  strongest L2 to the weakest, each fit starting from the previous coefficients.

Ratios: speed-up is sklearn's seconds over the method's (as before); /featstore is the
method's seconds over featstore's. The lines under each case compare each baseline's chosen
L2, its val score there and its test metric with featstore's.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from featstore.probe import DEFAULT_L2_GRID, fit_with_validation, primary_score
from featstore.probe.linear import choose_on_val

MAX_ITER = 1000
TOL = 1e-4  # sklearn's default; featstore's DEFAULT_TOL
SPLITS = ("train", "val", "test")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def generated(rows: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    latent = rng.normal(0, 1, (rows, 64)) + rng.normal(0, 0.35, (classes, 64))[y]
    mix = rng.normal(0, 1, (64, dim)) / 8
    X = np.maximum(latent @ mix + rng.normal(0, 0.5, (rows, dim)), 0)  # ReLU-like, correlated
    split = np.array(["train"] * rows, dtype=object)
    perm = rng.permutation(rows)
    split[perm[: rows // 10]] = "val"
    split[perm[rows // 10: rows // 5]] = "test"
    return X.astype(np.float32), y, split


def medmnist_features(name: str):
    from featstore.data import load_dataset
    from featstore.extract import extract_embeddings
    from featstore.models import parse_backbone
    from featstore.store import FeatureStore

    m = load_dataset(SHARED / name)
    with tempfile.TemporaryDirectory() as tmp:
        fs = FeatureStore(tmp)
        [res] = extract_embeddings(m, [parse_backbone("timm:resnet18@random", input_size=64)],
                                   fs)
        emb = fs.load(m, res.key)
    return emb.X, emb.labels[:, 0], emb.split, m.task


class Sweep(NamedTuple):
    """One method's sweep: wall time, test metric of the chosen L2, the L2, total
    iterations, fits not converged, and the val score of the chosen L2."""

    seconds: float
    test: float
    l2: float
    iters: int
    unconverged: int
    val: float


def standardised(X, y, split):
    """Train-standardised features and labels per split (StandardScaler, as sklearn users)."""
    scaler = StandardScaler().fit(X[split == "train"])
    return ({s: scaler.transform(X[split == s]) for s in SPLITS},
            {s: y[split == s] for s in SPLITS})


def choose_and_test(t0, task, Xs, ys, fits, iters, unconverged) -> Sweep:
    """``fits``: (l2, predict_proba), strongest L2 first; chosen on val by featstore's rule."""
    scores = [primary_score(task, ys["val"], proba(Xs["val"])) for _, proba in fits]
    best = choose_on_val(scores)  # the same selection rule as featstore's
    test = primary_score(task, ys["test"], fits[best][1](Xs["test"]))
    return Sweep(time.perf_counter() - t0, test, fits[best][0], sum(iters), unconverged,
                 scores[best])


def sklearn_sweep(X, y, split, task, grid, *, warm_start=False) -> Sweep:
    """One LogisticRegression(lbfgs) per L2 value; with ``warm_start``, one estimator taken
    through the grid from the strongest L2, each fit starting from the last solution."""
    t0 = time.perf_counter()
    Xs, ys = standardised(X, y, split)
    n = len(ys["train"])
    fits, iters = [], []
    clf = LogisticRegression(max_iter=MAX_ITER, tol=TOL, warm_start=warm_start)
    for l2 in sorted(grid, reverse=True):
        clf.set_params(C=1 / (l2 * n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Xs["train"], ys["train"])
        iters.append(int(np.max(clf.n_iter_)))
        fits.append((l2, copy.deepcopy(clf).predict_proba))
    unconverged = sum(i >= MAX_ITER for i in iters)
    return choose_and_test(t0, task, Xs, ys, fits, iters, unconverged)


def torch_lbfgs_sweep(X, y, split, task, grid) -> Sweep:
    """One torch.optim.LBFGS (strong Wolfe) solve per L2 value, cold start, full batch."""
    t0 = time.perf_counter()
    Xs, ys = standardised(X, y, split)
    Xt = torch.as_tensor(Xs["train"], dtype=torch.float32)
    binary = task == "binary"
    classes = 1 if binary else int(ys["train"].max()) + 1
    yt = torch.as_tensor(ys["train"], dtype=torch.float32 if binary else torch.long)

    def objective(W, b, l2):
        z = Xt @ W + b
        if binary:
            data = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], yt)
        else:
            data = torch.nn.functional.cross_entropy(z, yt)
        return data + 0.5 * l2 * (W * W).sum()

    def proba_of(W, b):
        def proba(Xe):
            with torch.no_grad():
                z = torch.as_tensor(Xe, dtype=torch.float32) @ W + b
                if binary:
                    p = torch.sigmoid(z[:, 0])
                    return torch.stack([1 - p, p], 1).numpy()
                return torch.softmax(z, 1).numpy()
        return proba

    fits, iters, unconverged = [], [], 0
    for l2 in sorted(grid, reverse=True):
        W = torch.zeros(Xt.shape[1], classes, requires_grad=True)
        b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=MAX_ITER, tolerance_grad=TOL,
                                history_size=10, line_search_fn="strong_wolfe")

        def closure(W=W, b=b, l2=l2, opt=opt):
            opt.zero_grad()
            loss = objective(W, b, l2)
            loss.backward()
            return loss

        opt.step(closure)
        closure()
        unconverged += max(W.grad.abs().max(), b.grad.abs().max()).item() > TOL
        iters.append(opt.state[opt.param_groups[0]["params"][0]]["n_iter"])
        fits.append((l2, proba_of(W.detach(), b.detach())))
    return choose_and_test(t0, task, Xs, ys, fits, iters, unconverged)


def featstore_sweep(X, y, split, task, grid) -> Sweep:
    t0 = time.perf_counter()
    tr, va, te = (split == "train"), (split == "val"), (split == "test")
    sweep = fit_with_validation(X[tr], y[tr], X[va], y[va], task=task, l2_grid=grid,
                                max_iter=MAX_ITER, tol=TOL)
    test = sweep.probe.score(X[te], y[te])
    unconverged = sum(not c for c in sweep.converged.values())
    return Sweep(time.perf_counter() - t0, test, sweep.l2, sum(sweep.n_iter.values()),
                 unconverged, sweep.val_scores[sweep.l2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    grid = list(DEFAULT_L2_GRID)
    cases = [(f"generated {args.rows}x{args.dim}, {args.classes} classes",
              *generated(args.rows, args.dim, args.classes), "multiclass")]
    for name in ("pneumoniamnist_balanced.npz", "breastmnist.npz"):
        if (SHARED / name).exists():
            X, y, split, task = medmnist_features(name)
            cases.append((f"{name} resnet18@random 64px {X.shape[0]}x{X.shape[1]}", X, y,
                          split, task))
        else:
            print(f"({SHARED / name} not present: real-feature case skipped)")
    print(f"\nlinear-probe sweep, L2 grid {grid[0]:g}..{grid[-1]:g} ({len(grid)} values), "
          "choose on val, score test")
    w = max(52, *(len(c[0]) + 2 for c in cases))  # the data column fits the longest label
    print(f"{'data':<{w}}{'method':<14}{'seconds':>9}{'iters':>7}{'unconv':>7}"
          f"{'test metric':>13}{'L2':>9}{'speed-up':>10}{'/featstore':>11}{'val score':>11}")
    for label, X, y, split, task in cases:
        sk = sklearn_sweep(X, y, split, task, grid)
        fs = featstore_sweep(X, y, split, task, grid)
        rows = {"sklearn": sk, "featstore": fs,
                "torch L-BFGS": torch_lbfgs_sweep(X, y, split, task, grid),
                "sklearn warm": sklearn_sweep(X, y, split, task, grid, warm_start=True)}
        for name, r in rows.items():
            print(f"{label:<{w}}{name:<14}{r.seconds:>9.2f}{r.iters:>7d}{r.unconverged:>7d}"
                  f"{r.test:>13.4f}{r.l2:>9.0e}{sk.seconds / r.seconds:>9.1f}x"
                  f"{r.seconds / fs.seconds:>10.1f}x{r.val:>11.4f}")
        print(f"{'':<{w}}test metric difference (featstore - sklearn): {fs.test - sk.test:+.4f}")
        for name, r in rows.items():
            if name != "featstore":
                l2 = "same L2" if r.l2 == fs.l2 else f"L2 {r.l2:.0e} (featstore {fs.l2:.0e})"
                print(f"{'':<{w}}{name + ' vs featstore:':<27} {l2}, val {r.val - fs.val:+.4f}, "
                      f"test {r.test - fs.test:+.4f}")
    print("targets: >= 10x faster, test metric within 0.005 of sklearn's or better")


if __name__ == "__main__":
    main()
