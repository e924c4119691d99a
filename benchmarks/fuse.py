"""DVME fusion on this CPU: training time and test metric against the concat baseline, and
the wall time of a full fractions x seeds DVME grid.

    python benchmarks/fuse.py [--rows 50000] [--seeds 5]

Three generated embedding sets of dims 2048, 2048 and 384 (two ResNet-50s and a ViT-S/16),
each carrying part of a 5-class signal; split 80/10/10.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from featstore.fusion import fuse_embeddings
from featstore.store.zarr_store import Embeddings

DIMS = (2048, 2048, 384)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


def generated(rows: int, classes: int = 5, seed: int = 0) -> list[Embeddings]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    centres = rng.normal(0, 1, (len(DIMS), classes, 16))
    split = np.array(["train"] * rows, dtype=object)
    perm = rng.permutation(rows)
    split[perm[: rows // 10]] = "val"
    split[perm[rows // 10: rows // 5]] = "test"
    ids = np.array([f"r{i:06d}" for i in range(rows)])
    embs = []
    for k, dim in enumerate(DIMS):
        latent = centres[k][y] * (0.3 + 0.2 * k) + rng.normal(0, 1, (rows, 16))
        X = np.maximum(latent @ rng.normal(0, 1, (16, dim)) / 4
                       + rng.normal(0, 1, (rows, dim)), 0)
        embs.append(Embeddings(X=X.astype(np.float32), ids=ids, split=split,
                               labels=y[:, None], group=np.full(rows, ""), alias=f"b{k}-{dim}",
                               key=f"k{k}" * 8, dataset="generated", attrs={}))
    return embs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    embs = generated(args.rows)
    results: dict[str, list[tuple[float, float]]] = {"dvme-softmax": [], "concat": []}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        recs = fuse_embeddings(embs, task="multiclass", seed=seed, n_bootstrap=0,
                               baselines=False)
        t_dvme = time.perf_counter() - t0
        results["dvme-softmax"].append((t_dvme, next(r.value for r in recs if r.primary)))
        t0 = time.perf_counter()
        recs = fuse_embeddings(embs, task="multiclass", seed=seed, n_bootstrap=0,
                               attentions=(), baselines=True)
        t_concat = time.perf_counter() - t0  # concat + the three single probes
        results["concat"].append((t_concat, next(r.value for r in recs
                                                 if r.primary and r.method == "concat")))
        singles = {r.method: r.value for r in recs if r.primary and r.method != "concat"}
    print(f"\nfusion, {args.rows} rows x dims {DIMS}, 5 classes, fraction 1.0, "
          f"{args.seeds} seeds (accuracy on test)")
    print(f"{'method':<38}{'s per seed':>11}{'accuracy':>20}")
    for name, label in (("dvme-softmax", "DVME (softmax attention)"),
                        ("concat", "concat + 3 single probes (linear)")):
        t = np.array([r[0] for r in results[name]])
        v = np.array([r[1] for r in results[name]])
        print(f"{label:<38}{t.mean():>11.1f}{v.mean():>12.4f} +- {v.std(ddof=1):.4f}")
    for name, v in singles.items():
        print(f"{'  ' + name + ' (linear probe)':<38}{'':>11}{v:>12.4f}  (seed {args.seeds - 1})")
    t0 = time.perf_counter()
    for fraction in FRACTIONS:
        for seed in range(args.seeds):
            fuse_embeddings(embs, task="multiclass", fraction=fraction, seed=seed,
                            n_bootstrap=0, baselines=False)
    grid = time.perf_counter() - t0
    print(f"full DVME grid, fractions {FRACTIONS} x {args.seeds} seeds: {grid:.0f} s "
          f"(target: under 300 s on a 2-core CPU)")


if __name__ == "__main__":
    main()
