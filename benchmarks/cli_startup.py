"""How long a user waits for the CLI's light commands, against what eager imports cost.

    python benchmarks/cli_startup.py [--runs 5]

``featstore --help``, ``featstore probe --help``, ``featstore ls`` (a store of 2 sets),
``featstore models``, a cache-hit ``featstore extract`` (the demo's two backbones, nothing to
do), a ``featstore probe`` that only reads its persisted runs back (every set, and one
named by its spec), ``featstore results`` (probe and fusion runs read back) and a
``featstore run`` of a pipeline whose every step is cached (extract, probe, fuse: planned,
nothing computed), as whole processes, beside ``python -c "import torch, timm, zarr,
sklearn"`` (what every command paid before the imports became lazy) and an empty Python.
Targets: --help and ls under 1 s; the cache hit and the read-back under 1.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featstore.demo import DEMO_BACKBONES, DEMO_INPUT_SIZE

FEATSTORE = [sys.executable, "-m", "featstore"]
PIPELINE = """
name = "startup"
store = "{store}"
fractions = [1.0]
seeds = 1
bootstrap = 20

[datasets]
demo = "{csv}"

[backbones]
a = {{ spec = "{a}", image_size = {size} }}
b = {{ spec = "{b}", image_size = {size} }}

[probe]
probes = ["linear"]

[fuse]
backbones = ["a", "b"]
dim = 16
"""


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        subprocess.run([*FEATSTORE, "demo", "--store", store, "--workdir", str(Path(tmp) / "d"),
                        "--json"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        data = ["--data", str(Path(tmp) / "d" / "demo.csv"), "--store", store]
        specs = [a for b in DEMO_BACKBONES for a in ("-b", b)]
        pipeline = Path(tmp) / "demo.toml"
        pipeline.write_text(PIPELINE.format(store=store, csv=Path(tmp) / "d" / "demo.csv",
                                            a=DEMO_BACKBONES[0], b=DEMO_BACKBONES[1],
                                            size=DEMO_INPUT_SIZE))
        subprocess.run([*FEATSTORE, "run", str(pipeline)], check=True,  # fuses: once, here
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import torch, timm, zarr, sklearn": [
                sys.executable, "-c", "import torch, timm, zarr, sklearn"],
            "featstore --help": [*FEATSTORE, "--help"],
            "featstore probe --help": [*FEATSTORE, "probe", "--help"],
            "featstore ls (2 sets)": [*FEATSTORE, "ls", "--store", store],
            "featstore models": [*FEATSTORE, "models"],
            "extract, cache hit (2 backbones)": [
                *FEATSTORE, "extract", *data, *specs, "--image-size", str(DEMO_INPUT_SIZE)],
            "probe, runs read back": [*FEATSTORE, "probe", *data],
            "probe -b SPEC, runs read back": [
                *FEATSTORE, "probe", *data, "-b", specs[1], "--image-size",
                str(DEMO_INPUT_SIZE)],
            "results (probe + fusion runs)": [*FEATSTORE, "results", *data],
            "run PIPELINE, every step cached": [*FEATSTORE, "run", str(pipeline)],
        }
        times = {name: wall(cmd, args.runs) for name, cmd in rows.items()}
    ref = statistics.median(times["import torch, timm, zarr, sklearn"])
    print(f"CLI start-up, whole processes, {args.runs} runs each (median; min..max)")
    print(f"{'command':36s} {'median s':>9s} {'min..max s':>13s} {'vs eager imports':>17s}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:36s} {med:9.2f} {min(t):6.2f}..{max(t):<6.2f} {med / ref:16.2f}x")
    print("targets: featstore --help and ls under 1 s; cache hit and read-back under 1.5 s")


if __name__ == "__main__":
    main()
