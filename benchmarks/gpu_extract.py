"""GPU extraction throughput: featstore extract vs the backbone's pure forward pass.

For ResNet-50 and ViT-S/16 at 224 px in bf16 (random weights: speed does not depend on them),
one run measures, side by side:

- pure forward: the model on a batch already on the GPU (channels_last for the CNN), no
  data loading at all: the ceiling;
- featstore from pre-decoded tensors: uint8 224x224 images in an HDF5 file (read by row, no
  decoding), through the whole featstore path (DataLoader workers, transform, pinned copies,
  forward, Zarr writes with checksums);
- featstore from JPEG files (500x375, decoded and resized by the DataLoader workers).

Target: featstore from pre-decoded input >= 85% of the pure forward throughput.

    python benchmarks/gpu_extract.py [--n 8192] [--batch 256] [--workers 14]

Needs a CUDA GPU; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featstore.data import load_dataset
from featstore.extract import extract_embeddings
from featstore.models import parse_backbone
from featstore.models.registry import build_backbone
from featstore.store import FeatureStore

BACKBONES = {"ResNet-50": "timm:resnet50@random", "ViT-S/16": "timm:vit_small_patch16_224@random"}


def pure_forward(spec: str, batch: int, iters: int) -> float:
    """Images/s of the model alone on a resident bf16 batch."""
    loaded = build_backbone(parse_backbone(spec))
    model = loaded.model.cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    if "resnet" in spec:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def write_predecoded(folder: Path, n: int) -> Path:
    """n uint8 224x224x3 images in one HDF5 dataset, with a manifest CSV pointing into it."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(folder / "tensors.h5", "w") as f:
        x = f.create_dataset("x", shape=(n, 224, 224, 3), dtype="uint8",
                             chunks=(1, 224, 224, 3))
        block = rng.integers(0, 255, (256, 224, 224, 3), dtype=np.uint8)
        for i in range(0, n, 256):
            x[i:i + 256] = block[: min(256, n - i)]
    return _manifest(folder / "tensors.csv", [("tensors.h5", "x", i) for i in range(n)])


def write_jpegs(folder: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "jpeg").mkdir()
    base = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8))
            for _ in range(16)]
    for i in range(n):
        base[i % 16].save(folder / "jpeg" / f"{i:06d}.jpeg", quality=90)
    return _manifest(folder / "jpeg.csv", [(f"jpeg/{i:06d}.jpeg", "", "") for i in range(n)])


def _manifest(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "path", "array", "index", "label"])
        for i, (p, a, k) in enumerate(rows):
            w.writerow([f"{i:06d}", "train", p, a, k, i % 2])
    return path


def featstore_rate(manifest_csv: Path, spec: str, store: Path, batch: int | None,
                   workers: int) -> tuple[float, int]:
    m = load_dataset(manifest_csv)
    t0 = time.perf_counter()
    [res] = extract_embeddings(m, [parse_backbone(spec)], FeatureStore(store), device="cuda",
                               precision="bf16", batch_size=batch, num_workers=workers,
                               shard_rows=4096)
    return len(m) / (time.perf_counter() - t0), res.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="images per featstore run")
    ap.add_argument("--batch", type=int, default=None, help="default: featstore's auto size")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_extract.py needs a CUDA GPU (none here): nothing measured")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, 224 px")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tensors, jpegs = write_predecoded(tmp, args.n), write_jpegs(tmp, args.n)
        for name, spec in BACKBONES.items():
            r_pre, bs = featstore_rate(tensors, spec, tmp / f"s-{name}-pre", args.batch,
                                       args.workers)
            pure = pure_forward(spec, bs, args.iters)
            r_jpeg, _ = featstore_rate(jpegs, spec, tmp / f"s-{name}-jpeg", bs, args.workers)
            rows += [(name, "pure forward (resident batch)", bs, pure, 1.0),
                     (name, "featstore, pre-decoded uint8 (HDF5)", bs, r_pre, r_pre / pure),
                     (name, "featstore, JPEG 500x375", bs, r_jpeg, r_jpeg / pure)]
    print(f"\n{'backbone':<11}{'input':<38}{'batch':>6}{'img/s':>10}{'of pure':>9}")
    for name, what, bs, rate, frac in rows:
        print(f"{name:<11}{what:<38}{bs:>6}{rate:>10,.0f}{frac:>9.0%}")
    print("target: featstore from pre-decoded input >= 85% of pure forward")


if __name__ == "__main__":
    main()
