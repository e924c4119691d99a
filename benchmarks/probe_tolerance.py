"""The linear probe's convergence tolerance: time and agreement with scikit-learn's optimum.

    python benchmarks/probe_tolerance.py [--rows 20000] [--dim 1024]

featstore's batched sweep (the whole default L2 grid, chosen on val) at tolerance 1e-4 (the
default so far, sklearn's default) and 1e-7, against the optimum at the chosen L2 as
scikit-learn finds it with tol 1e-10: test predictions that differ, and the test metric.
Cases: an APTOS-shaped ordinal problem (5 grades, 800/160/160 rows, 512-d, kappa), a
generated 10-class problem, and real embeddings of a MedMNIST file when ../shared is there.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from probe_vs_sklearn import SHARED, generated, medmnist_features
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from featstore.probe import fit_with_validation, primary_score


def aptos_shaped(seed: int = 0):
    """Ordinal grades 0-4 from a noisy latent severity, skewed like APTOS (most grade 0)."""
    rng = np.random.default_rng(seed)
    n, d = 1120, 512
    severity = rng.gamma(1.2, 1.0, n)
    y = np.digitize(severity, [1.0, 1.8, 2.6, 3.6])
    X = rng.normal(size=(n, d)) + np.outer(severity, rng.normal(size=d)) * 0.15
    split = np.array(["train"] * 800 + ["val"] * 160 + ["test"] * 160, dtype=object)
    return X.astype(np.float32), y, split


def run(name, X, y, split, task, tols, rows):
    tr, va, te = (split == s for s in ("train", "val", "test"))
    results = {}
    for tol in tols:
        t0 = time.perf_counter()
        sweep = fit_with_validation(X[tr], y[tr], X[va], y[va], task=task, tol=tol,
                                    max_iter=1000)
        seconds = time.perf_counter() - t0
        results[tol] = (seconds, sweep)
    l2 = results[tols[0]][1].l2
    scaler = StandardScaler().fit(X[tr])
    sk = LogisticRegression(C=1 / (l2 * tr.sum()), tol=1e-10, max_iter=20000).fit(
        scaler.transform(X[tr]), y[tr])
    ref = sk.predict_proba(scaler.transform(X[te]))
    for tol, (seconds, sweep) in results.items():
        proba = sweep.probe.predict_proba(X[te])
        differ = int((proba.argmax(1) != ref.argmax(1)).sum())
        iters = sum(sweep.n_iter.values())
        rows.append((name, f"{tol:g}", seconds, iters, f"{sweep.l2:g}",
                     primary_score(task, y[te], proba), differ, int(te.sum()),
                     primary_score(task, y[te], ref) if sweep.l2 == l2 else float("nan")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1024)
    args = ap.parse_args()
    tols = (1e-4, 1e-7)
    rows: list[tuple] = []
    run("APTOS-shaped ordinal 1120x512", *aptos_shaped(), "ordinal", tols, rows)
    X, y, split = generated(args.rows, args.dim, 10)
    run(f"generated {args.rows}x{args.dim}, 10 classes", X, y, split, "multiclass", tols,
        rows)
    for f in ("breastmnist.npz", "pneumoniamnist_balanced.npz"):
        if (SHARED / f).exists():
            X, y, split, task = medmnist_features(f)
            run(f"{f} resnet18@random 64px", X, y, split, task, tols, rows)
    print(f"{'case':42s} {'tol':>6s} {'sweep s':>8s} {'iters':>6s} {'L2':>7s} "
          f"{'test':>7s} {'differ':>11s} {'sklearn':>8s} {'time ratio':>10s}")
    base = {}
    for name, tol, seconds, iters, l2, test, differ, n_te, sk in rows:
        base.setdefault(name, seconds)
        print(f"{name:42s} {tol:>6s} {seconds:8.2f} {iters:6d} {l2:>7s} {test:7.4f} "
              f"{differ:4d} of {n_te:4d} {sk:8.4f} {seconds / base[name]:9.2f}x")
    print("differ: test predictions unlike sklearn's optimum (tol 1e-10) at the L2 chosen "
          "with tol 1e-4; sklearn: its test metric there")


if __name__ == "__main__":
    main()
