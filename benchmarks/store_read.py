"""Reading a whole embedding set into memory: featstore (checksum-verified, and with
--no-verify) against np.load of the same matrix saved as one .npy, side by side; then the
same from an S3 server against downloading one .npy object of the same size.

    python benchmarks/store_read.py [--rows 100000] [--dim 2048] [--dtype float16] [--runs 3]
                                    [--no-s3]

The set is written through the store's own writer (1024-row shards). Local: the page cache
is warm for every method (each is run once before timing), so this measures decoding and
checking, not the disk. S3: moto's server on 127.0.0.1 in its own process (the dev extra
installs it); every method moves the same bytes over the same loopback, so the ratio is what
featstore's per-shard requests and checks cost over one big GET; --cache rows: the first
read fills a new cache, the next ones read it (a new store handle each time, so every featstore
row includes opening the dataset: its index arrays come from the server). Target: featstore
within 2x of np.load.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import MotoServer, manifest, write_set  # noqa: E402

from featstore.store import FeatureStore  # noqa: E402


def timed(fn, runs: int) -> tuple[list[float], np.ndarray]:
    out = fn()  # warm-up: page cache, imports, connections
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def table(title: str, results: dict, ref_name: str, X: np.ndarray) -> None:
    ref = statistics.median(results[ref_name][0])
    mb = X.nbytes / 2**20
    print(title)
    print(f"{'method':38s} {'s':>7s} {'MiB/s':>8s} {'vs ' + ref_name:>24s}  identical")
    for name, (times, out) in results.items():
        med = statistics.median(times)
        print(f"{name:38s} {med:7.3f} {mb / med:8,.0f} {med / ref:23.2f}x  "
              f"{np.array_equal(out, X)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="local disk only")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.dim)).astype(args.dtype)
    n = args.rows
    mb = X.nbytes / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        m = manifest(Path(tmp) / "data", n)
        fs = FeatureStore(Path(tmp) / "store")
        es = write_set(fs, m, X, {"bench": 1}, "bench")
        npy = Path(tmp) / "X.npy"
        np.save(npy, X)
        local = {
            "np.load (.npy)": timed(lambda: np.load(npy), args.runs),
            "featstore read, verified": timed(lambda: es.read(), args.runs),
            "featstore read, --no-verify": timed(lambda: es.read(verify=False), args.runs),
        }
        table(f"read {n:,} x {args.dim} {args.dtype} ({mb:,.0f} MiB) into memory, local "
              f"disk, warm cache, median of {args.runs}", local, "np.load (.npy)", X)
        if args.no_s3:
            return
        with MotoServer():
            import s3fs

            s3 = s3fs.S3FileSystem(skip_instance_cache=True)
            s3.mkdir("bench")
            s3.put(str(Path(tmp) / "store"), "bench/", recursive=True)
            s3.put(str(npy), "bench/X.npy")

            def get_npy() -> np.ndarray:
                return np.load(io.BytesIO(s3.cat_file("bench/X.npy")))

            def read(verify: bool, cache: Path | None = None) -> np.ndarray:
                fs = FeatureStore("s3://bench/store", cache=cache)  # a fresh handle
                return fs.dataset(m).embedding_set("bench").read(verify=verify)

            caches = iter(range(1000))

            def fill_cache() -> np.ndarray:  # a new, empty cache folder each time
                return read(True, Path(tmp) / f"cache{next(caches)}")

            warm = Path(tmp) / "warm-cache"
            read(True, warm)
            results = {
                "one GET of the .npy + np.load": timed(get_npy, args.runs),
                "featstore read, verified": timed(lambda: read(True), args.runs),
                "featstore read, --no-verify": timed(lambda: read(False), args.runs),
                "featstore read, --cache, first read": timed(fill_cache, args.runs),
                "featstore read, --cache, next reads": timed(lambda: read(True, warm),
                                                             args.runs),
            }
        print()
        table(f"the same from moto's S3 server on 127.0.0.1, median of {args.runs}", results,
              "one GET of the .npy + np.load", X)
    print("target: featstore within 2x of np.load")


if __name__ == "__main__":
    main()
