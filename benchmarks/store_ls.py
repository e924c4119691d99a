"""`featstore ls` on a store with many embedding sets on an S3 server: reading the catalog
(one entry per set, fetched concurrently) against opening every set's arrays, side by side.

    python benchmarks/store_ls.py [--datasets 4] [--sets-per-dataset 50] [--runs 3]

Starts moto's S3 server on 127.0.0.1 in its own process (the dev extra installs it), writes
the sets locally through the store's writer, uploads them, and times each way of listing in
a fresh process (no listing cache carried over). Target: ls of 200 sets under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import MotoServer, manifest, write_set  # noqa: E402

from featstore.store import FeatureStore  # noqa: E402

LIST = """
import sys, time
t0 = time.perf_counter()
from featstore.store import FeatureStore
from featstore.store.listing import list_sets
rows = list_sets(FeatureStore(sys.argv[1]), use_catalog=sys.argv[2] == "catalog")
print(len(rows), time.perf_counter() - t0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=4)
    ap.add_argument("--sets-per-dataset", type=int, default=50)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with MotoServer():
        run(args)


def run(args: argparse.Namespace) -> None:
    import s3fs

    s3 = s3fs.S3FileSystem()
    s3.mkdir("bench")
    n_sets = args.datasets * args.sets_per_dataset
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        local = FeatureStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        for d in range(args.datasets):
            m = manifest(Path(tmp) / "data", args.rows, name=f"dataset{d}")
            for k in range(args.sets_per_dataset):
                X = rng.normal(size=(args.rows, 64)).astype(np.float16)
                write_set(local, m, X, {"bench": k}, alias=f"backbone{k}")
        s3.put(str(Path(tmp) / "store"), "bench/", recursive=True)
        print(f"wrote and uploaded {n_sets} sets in {time.perf_counter() - t0:.1f} s")
    url = "s3://bench/store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    timings: dict[str, list[float]] = {}
    modes = [("catalog, first ls (no snapshot yet)", "catalog"), ("catalog", "catalog"),
             ("open every set", "open")]
    for label, mode in modes:
        for _ in range(args.runs):
            if label.startswith("catalog, first"):
                s3.rm("bench/store/_catalog/snapshot.json")
            out = subprocess.run([sys.executable, "-c", LIST, url, mode], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            assert int(out[0]) == n_sets, out
            timings.setdefault(label, []).append(float(out[1]))
    cli = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "featstore", "ls", "--store", url, "--json"],
                       env=env, capture_output=True, check=True)
        cli.append(time.perf_counter() - t0)
    ref = statistics.median(timings["open every set"])
    print(f"ls of {n_sets} embedding sets ({args.datasets} datasets) on moto's S3 server, "
          f"median of {args.runs} fresh processes")
    print("(list_sets times include the process's imports; ls adds the CLI's start)")
    print(f"{'method':46s} {'s':>7s} {'vs open every set':>18s}")
    for mode, times in timings.items():
        med = statistics.median(times)
        print(f"{'list_sets, ' + mode:46s} {med:7.2f} {med / ref:17.2f}x")
    med = statistics.median(cli)
    print(f"{'featstore ls --json, end to end':46s} {med:7.2f} {med / ref:17.2f}x")
    print("target: ls of 200 sets under 2 s")


if __name__ == "__main__":
    main()
