"""GPU extraction throughput: featstore extract vs the backbone's pure forward pass.

For ResNet-50 and ViT-S/16 at 224 px in bf16 (random weights: speed does not depend on them),
one run measures, side by side:

- pure forward: the model on a batch already on the GPU (channels_last for the CNN), no
  data loading at all: the ceiling;
- featstore from stored uint8 images in an HDF5 file (no decoding): at the input size (read
  a batch at a time, normalised on the GPU) and at 96 px (PatchCamelyon's size, resized to
  224 on the GPU in batches), through the whole featstore path (DataLoader workers, pinned
  copies, forward, the writer thread's Zarr writes with checksums);
- featstore from JPEG files (500x375, decoded and resized by the DataLoader workers).

Target: featstore from pre-decoded input >= 85% of the pure forward throughput.

    python benchmarks/gpu_extract.py [--n 8192] [--batch 256] [--workers 14]
    python benchmarks/gpu_extract.py --device cpu --n 64 --size 64 --iters 2 --workers 2
        # checks the script on a CPU (numbers mean nothing there)

Needs a CUDA GPU for its numbers; exits with a message otherwise.
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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pure_forward(spec: str, batch: int, iters: int, device: str = "cuda") -> float:
    """Images/s of the model alone on a resident bf16 batch."""
    loaded = build_backbone(parse_backbone(spec, input_size=SIZE))
    model = loaded.model.to(device).eval()
    x = torch.randn(batch, 3, SIZE, SIZE, device=device)
    if "resnet" in spec:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                enabled=device == "cuda"):
        for _ in range(min(5, iters)):
            model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def write_predecoded(folder: Path, n: int, size: int = 224) -> Path:
    """n uint8 size x size x 3 images in one HDF5 dataset (PatchCamelyon's layout at 96 px),
    with a manifest CSV pointing into it."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(folder / f"tensors{size}.h5", "w") as f:
        x = f.create_dataset("x", shape=(n, size, size, 3), dtype="uint8",
                             chunks=(1, size, size, 3))
        block = rng.integers(0, 255, (256, size, size, 3), dtype=np.uint8)
        for i in range(0, n, 256):
            x[i:i + 256] = block[: min(256, n - i)]
    return _manifest(folder / f"tensors{size}.csv",
                     [(f"tensors{size}.h5", "x", i) for i in range(n)])


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
                   workers: int, device: str = "cuda") -> tuple[float, int]:
    m = load_dataset(manifest_csv)
    t0 = time.perf_counter()
    [res] = extract_embeddings(m, [parse_backbone(spec, input_size=SIZE)], FeatureStore(store),
                               device=device, precision="bf16" if device == "cuda" else "fp32",
                               batch_size=batch, num_workers=workers, shard_rows=4096)
    return len(m) / (time.perf_counter() - t0), res.batch_size


SIZE = 224


def main() -> None:
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="images per featstore run")
    ap.add_argument("--batch", type=int, default=None, help="default: featstore's auto size")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda",
                    help="cuda; cpu only to check the script (tiny --n, --size)")
    ap.add_argument("--size", type=int, default=224, help="the backbones' input size")
    args = ap.parse_args()
    SIZE = args.size
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_extract.py needs a CUDA GPU (none here): nothing measured")
    what = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (a dry run)"
    print(f"device: {what}, torch {torch.__version__}, "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}, {SIZE} px")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = [(f"featstore, stored uint8 {SIZE} px (HDF5)",
                   write_predecoded(tmp, args.n, SIZE)),
                  ("featstore, stored uint8 96 px, resized on device",
                   write_predecoded(tmp, args.n, 96)),
                  ("featstore, JPEG 500x375", write_jpegs(tmp, args.n))]
        for name, spec in BACKBONES.items():
            rates, bs = [], args.batch
            for k, (label, csv_path) in enumerate(inputs):
                rate, got = featstore_rate(csv_path, spec, tmp / f"s-{name}-{k}", bs,
                                           args.workers, args.device)
                bs = bs or got
                rates.append((label, rate))
            pure = pure_forward(spec, bs, args.iters, args.device)
            rows.append((name, "pure forward (resident batch)", bs, pure, 1.0))
            rows += [(name, label, bs, rate, rate / pure) for label, rate in rates]
    print(f"\n{'backbone':<11}{'input':<52}{'batch':>6}{'img/s':>10}{'of pure':>9}")
    for name, label, bs, rate, frac in rows:
        print(f"{name:<11}{label:<52}{bs:>6}{rate:>10,.0f}{frac:>9.0%}")
    print("targets: stored uint8 >= 85% of pure forward; JPEG 500x375 >= 40%")


if __name__ == "__main__":
    main()
