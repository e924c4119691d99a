"""`featstore run` against the obvious alternative: the same grid typed as one `featstore`
command per step (a shell script of extract, probe and fuse), cold (empty store) and warm
(everything cached).

Data: two generated MedMNIST-layout files (or --data-root with breastmnist.npz and
pneumoniamnist_balanced.npz, e.g. ../shared/data/medmnist); backbones timm:resnet18 and
timm:efficientnet_b0 at random weights, 32 px; linear probes at 0.1 and 1.0 x 2 seeds; DVME
over both. Each arm gets its own empty store; the warm arms rerun on the arm's full store.

    python benchmarks/pipeline.py [--data-root DIR] [--repeats 2]

Prints seconds per arm (median of repeats) and the ratio run / script.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """
name = "bench"
store = "{store}"
fractions = [0.1, 1.0]
seeds = 2
bootstrap = 100

[datasets]
{datasets}

[backbones]
resnet18 = {{ spec = "timm:resnet18@random", image_size = 32 }}
efficientnet = {{ spec = "timm:efficientnet_b0@random", image_size = 32 }}

[extract]
device = "cpu"
workers = 0
batch_size = 128

[probe]
probes = ["linear"]

[fuse]
backbones = ["resnet18", "efficientnet"]
dim = 32
baselines = false
"""


def script(files: list[Path], store: Path) -> list[list[str]]:
    """The same grid, one featstore command per step, as a user would type it."""
    backbones = ["timm:resnet18@random", "timm:efficientnet_b0@random"]
    common = ["--store", str(store), "--image-size", "32"]
    cmds = []
    for f in files:
        cmds.append(["extract", "--data", str(f), *common, "--device", "cpu", "--workers", "0",
                     "--batch-size", "128", *sum((["-b", b] for b in backbones), [])])
        for b in backbones:
            cmds.append(["probe", "--data", str(f), *common, "-b", b, "--fractions",
                         "0.1,1.0", "--seeds", "2", "--bootstrap", "100"])
        cmds.append(["fuse", "--data", str(f), *common, *sum((["-b", b] for b in backbones),
                                                             []),
                     "--fractions", "0.1,1.0", "--seeds", "2", "--bootstrap", "100", "--dim",
                     "32", "--heads-dir", str(store.parent / "heads"), "--no-baselines"])
    return cmds


def featstore(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "featstore", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fs-bench-pipeline-"))
    try:
        if args.data_root:
            files = [args.data_root / "breastmnist.npz",
                     args.data_root / "pneumoniamnist_balanced.npz"]
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.conftest import make_medmnist

            files = [make_medmnist(work / "a.npz", n=(600, 100, 200), seed=1),
                     make_medmnist(work / "b.npz", n=(600, 100, 200), seed=2)]
        rows = {"run cold": [], "script cold": [], "run warm": [], "script warm": []}
        for r in range(args.repeats):
            store_run, store_script = work / f"run{r}", work / f"script{r}"
            pipe = work / f"bench{r}.toml"
            pipe.write_text(PIPELINE.format(store=store_run, datasets="\n".join(
                f'd{i} = "{f}"' for i, f in enumerate(files))))
            cmds = script(files, store_script)
            rows["run cold"].append(timed(lambda p=pipe: featstore("run", str(p))))
            rows["script cold"].append(timed(lambda c=cmds: [featstore(*x) for x in c]))
            rows["run warm"].append(timed(lambda p=pipe: featstore("run", str(p))))
            rows["script warm"].append(timed(lambda c=cmds: [featstore(*x) for x in c]))
        med = {k: statistics.median(v) for k, v in rows.items()}
        n_cmds = len(script(files, work))
        print(f"grid: {len(files)} datasets x 2 backbones, extract + linear probe (2 fractions x"
              f" 2 seeds) + DVME; script = {n_cmds} featstore commands; median of "
              f"{args.repeats}")
        print(f"{'arm':<14}{'seconds':>10}")
        for k, v in med.items():
            print(f"{k:<14}{v:>10.1f}")
        print(f"{'ratio cold':<14}{med['run cold'] / med['script cold']:>10.2f}  (run / script)")
        print(f"{'ratio warm':<14}{med['run warm'] / med['script warm']:>10.2f}  (run / script)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
