"""Seeds at fraction 1: `probe_grid` fits the probe once on the rows every seed shares and
scores it per seed (its own bootstrap), against fitting each seed again (what it did before,
and what a plain loop over seeds does), side by side on one synthetic set.

    python benchmarks/probe_seeds.py [--rows 20000] [--dim 512] [--seeds 3] [--probe linear]
                                     [--runs 3]

The set is written through the store's own writer (binary labels with a class signal in a
few dimensions, 10% test, val carved from train). Target: 3 seeds <= 1.3x one seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import manifest, write_set  # noqa: E402

from featstore.probe import ProbeConfig, probe_grid  # noqa: E402
from featstore.probe.run import probe_embeddings  # noqa: E402
from featstore.store import FeatureStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--probe", default="linear", choices=["linear", "knn"])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        m = manifest(Path(tmp) / "data", args.rows)
        y = m.labels[:, 0].astype(np.float32)
        X = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
        X[:, :8] += y[:, None]  # a class signal
        fs = FeatureStore(Path(tmp) / "store")
        es = write_set(fs, m, X, {"bench": "seeds"}, "synthetic")
        cfg = ProbeConfig(task="binary", n_bootstrap=1000)
        emb = es.load()

        def grid(seeds: int) -> float:
            t0 = time.perf_counter()
            probe_grid([es], cfg, probes=[args.probe], fractions=[1.0], seeds=seeds,
                       recompute=True)
            return time.perf_counter() - t0

        def refit_each() -> float:
            t0 = time.perf_counter()
            for seed in range(args.seeds):
                probe_embeddings(emb, cfg, probe=args.probe, fraction=1.0, seed=seed)
            return time.perf_counter() - t0

        grid(1)  # warm: imports and torch's first calls are no seed's cost
        one, many, loop = (min(f() for _ in range(args.runs))
                           for f in (lambda: grid(1), lambda: grid(args.seeds), refit_each))
    print(f"{args.probe} probe, {args.rows:,} x {args.dim} float32, fraction 1, "
          f"bootstrap 1000, best of {args.runs}")
    print(f"{'method':<40} {'s':>8} {'vs one seed':>12}")
    print(f"{'probe_grid, 1 seed':<40} {one:>8.2f} {1.0:>11.2f}x")
    print(f"{f'probe_grid, {args.seeds} seeds (one fit)':<40} {many:>8.2f} {many / one:>11.2f}x")
    print(f"{f'refit per seed, {args.seeds} seeds':<40} {loop:>8.2f} {loop / one:>11.2f}x")


if __name__ == "__main__":
    main()
