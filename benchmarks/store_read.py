"""Reading a whole embedding set into memory: featstore (checksum-verified, and with
--no-verify) against np.load of the same matrix saved as one .npy, side by side.

    python benchmarks/store_read.py [--rows 100000] [--dim 2048] [--dtype float16] [--runs 3]

The set is written through the store's own writer (1024-row shards); the page cache is warm
for every method (each is run once before timing), so this measures decoding and checking,
not the disk. Target: featstore within 2x of np.load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from featstore.data.manifest import build_manifest
from featstore.store import EmbeddingKey, FeatureStore


def timed(fn, runs: int) -> tuple[list[float], np.ndarray]:
    out = fn()  # warm-up: page cache, imports
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.dim)).astype(args.dtype)
    n = args.rows
    manifest = build_manifest("bench", {
        "id": [f"r{i:07d}" for i in range(n)],
        "split": ["test" if i % 10 == 0 else "train" for i in range(n)],
        "path": [f"{i}.png" for i in range(n)],
        "label": [str(i % 2) for i in range(n)]}, task="binary")
    with tempfile.TemporaryDirectory() as tmp:
        fs = FeatureStore(Path(tmp) / "store")
        ds = fs.dataset(manifest, create=True)
        es = ds.create_embedding_set(EmbeddingKey({"bench": 1}), dim=args.dim, dtype=args.dtype,
                                     alias="bench", provenance={})
        for shard in range(es.n_shards):
            start, stop = es.shard_bounds(shard)
            es.write_shard(shard, X[start:stop])
        npy = Path(tmp) / "X.npy"
        np.save(npy, X)
        results = {
            "np.load (.npy)": timed(lambda: np.load(npy), args.runs),
            "featstore read, verified": timed(lambda: es.read(), args.runs),
            "featstore read, --no-verify": timed(lambda: es.read(verify=False), args.runs),
        }
    ref = statistics.median(results["np.load (.npy)"][0])
    mb = X.nbytes / 2**20
    print(f"read {n:,} x {args.dim} {args.dtype} ({mb:,.0f} MiB) into memory, local disk, "
          f"warm cache, median of {args.runs}")
    print(f"{'method':30s} {'s':>7s} {'MiB/s':>8s} {'vs np.load':>11s}  identical")
    for name, (times, out) in results.items():
        med = statistics.median(times)
        print(f"{name:30s} {med:7.3f} {mb / med:8,.0f} {med / ref:10.2f}x  "
              f"{np.array_equal(out, X)}")
    print("target: featstore within 2x of np.load")


if __name__ == "__main__":
    main()
