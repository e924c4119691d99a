"""featstore's linear-probe sweep vs scikit-learn LogisticRegression(lbfgs), same L2 grid,
same standardised data, same selection on val, one run, side by side.

    python benchmarks/probe_vs_sklearn.py [--rows 50000] [--dim 2048] [--classes 10]

(a) generated features: N x D with a low-rank class signal and correlated dimensions, the
    shape of real pooled CNN embeddings; split 80/10/10 into train/val/test;
(b) real features: a MedMNIST file from ../shared/data/medmnist embedded by featstore
    extract (timm resnet18, random weights, 64 px), when the folder is present.

sklearn gets C = 1 / (l2 * n_train), its default tol (1e-4) and max_iter=1000; featstore uses
the same tolerance and iteration cap on the same objective. Fits that hit the cap are counted
(unconv): at the weakest L2 the generated data is nearly separable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from featstore.probe import DEFAULT_L2_GRID, fit_with_validation, primary_score
from featstore.probe.linear import choose_on_val

MAX_ITER = 1000
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


def sklearn_sweep(X, y, split, task, grid):
    t0 = time.perf_counter()
    scaler = StandardScaler().fit(X[split == "train"])
    Xs = {s: scaler.transform(X[split == s]) for s in ("train", "val", "test")}
    ys = {s: y[split == s] for s in ("train", "val", "test")}
    n = len(ys["train"])
    fits, scores, iters = [], [], []
    for l2 in sorted(grid, reverse=True):
        clf = LogisticRegression(C=1 / (l2 * n), max_iter=MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Xs["train"], ys["train"])
        iters.append(int(np.max(clf.n_iter_)))
        fits.append((l2, clf))
        scores.append(primary_score(task, ys["val"], clf.predict_proba(Xs["val"])))
    best = fits[choose_on_val(scores)]  # the same selection rule as featstore's
    test = primary_score(task, ys["test"], best[1].predict_proba(Xs["test"]))
    unconverged = sum(i >= MAX_ITER for i in iters)
    return time.perf_counter() - t0, test, best[0], sum(iters), unconverged


def featstore_sweep(X, y, split, task, grid):
    t0 = time.perf_counter()
    tr, va, te = (split == "train"), (split == "val"), (split == "test")
    sweep = fit_with_validation(X[tr], y[tr], X[va], y[va], task=task, l2_grid=grid,
                                max_iter=MAX_ITER)
    test = sweep.probe.score(X[te], y[te])
    unconverged = sum(not c for c in sweep.converged.values())
    return time.perf_counter() - t0, test, sweep.l2, sum(sweep.n_iter.values()), unconverged


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
    print(f"{'data':<52}{'method':<11}{'seconds':>9}{'iters':>7}{'unconv':>7}"
          f"{'test metric':>13}{'L2':>9}{'speed-up':>10}")
    for label, X, y, split, task in cases:
        sk = sklearn_sweep(X, y, split, task, grid)
        fs = featstore_sweep(X, y, split, task, grid)
        for name, r in (("sklearn", sk), ("featstore", fs)):
            print(f"{label:<52}{name:<11}{r[0]:>9.2f}{r[3]:>7d}{r[4]:>7d}{r[1]:>13.4f}"
                  f"{r[2]:>9.0e}{sk[0] / r[0]:>9.1f}x")
        print(f"{'':<52}test metric difference (featstore - sklearn): {fs[1] - sk[1]:+.4f}")
    print("targets: >= 10x faster, test metric within 0.005 of sklearn's or better")


if __name__ == "__main__":
    main()
