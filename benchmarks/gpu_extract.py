"""GPU extraction throughput: featstore extract vs the backbone's pure forward pass.

For ResNet-50 and ViT-S/16 at 224 px in bf16 (random weights: speed does not depend on them),
one run measures, side by side, images/s through the whole featstore path (DataLoader
workers, pinned copies, the device-side resize and normalisation, forward, the writer
thread's Zarr writes with checksums) against the ceiling:

- pure forward: the model on a batch already on the GPU (channels_last for the CNN), no
  data loading at all; with ``--compile`` also under ``torch.compile`` and with CUDA graphs
  (``mode="reduce-overhead"``);
- stored uint8 arrays in an HDF5 file: at the input size (one indexed read a batch) and at
  96 px (PatchCamelyon's size, resized to 224 on the GPU in batches);
- JPEG 500x375 (the pneumonia release's size), decoded by PIL in the workers and with
  ``--decode device`` (nvJPEG);
- 15-MP JPEG (4928x3264, a fundus camera's size; ``--n-large`` rows): PIL's reduced DCT
  decode in the workers against ``--decode device``;
- 1024x1024 grey PNG (NIH ChestX-ray14's format): PIL in the workers, resized there or on
  the device;
- five backbones in one pass over the stored 224 px arrays, against the ceiling of their
  pure forwards run one after the other.

Rows point into small pools of distinct images (a manifest names a file or array row many
times), so writing the inputs takes seconds; the page cache serves the bytes, so the
numbers are decode and compute, not disk. Targets on an H200: stored uint8 >= 85% of pure
forward; JPEG 500x375 >= 40%.

    python benchmarks/gpu_extract.py [--n 50000] [--n-large 512] [--workers 14] [--compile]
    python benchmarks/gpu_extract.py --device cpu --n 64 --n-large 8 --size 64 --iters 2 \\
        --workers 2 --backbones 1 --five 0        # checks the script on a CPU

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
FIVE = ["timm:resnet50@random", "timm:vit_small_patch16_224@random", "timm:resnet18@random",
        "timm:efficientnet_b0@random", "timm:convnext_tiny@random"]
POOL = 64  # distinct files per image source
ARRAY_POOL = 2048  # distinct rows per HDF5 source


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pure_forward(spec: str, batch: int, iters: int, device: str, size: int,
                 compile_mode: str | None = None) -> float:
    """Images/s of the model alone on a resident batch (bf16 autocast on CUDA)."""
    loaded = build_backbone(parse_backbone(spec, input_size=size))
    model = loaded.model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride
           for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        model = torch.compile(model, mode=compile_mode)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                enabled=device == "cuda"):
        for _ in range(min(5, iters) if compile_mode is None else 5):
            model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def _manifest(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "path", "array", "index", "label"])
        for i, (p, a, k) in enumerate(rows):
            w.writerow([f"{i:07d}", "train", p, a, k, i % 2])
    return path


def write_arrays(folder: Path, n: int, size: int) -> Path:
    """A pool of uint8 size x size x 3 images in one HDF5 dataset (PatchCamelyon's layout
    at 96 px); the manifest's n rows cycle through it."""
    import h5py

    rng = np.random.default_rng(0)
    pool = min(n, ARRAY_POOL)
    with h5py.File(folder / f"arrays{size}.h5", "w") as f:
        x = f.create_dataset("x", shape=(pool, size, size, 3), dtype="uint8",
                             chunks=(1, size, size, 3))
        block = rng.integers(0, 255, (256, size, size, 3), dtype=np.uint8)
        for i in range(0, pool, 256):
            x[i:i + 256] = block[: min(256, pool - i)]
    return _manifest(folder / f"arrays{size}.csv",
                     [(f"arrays{size}.h5", "x", i % pool) for i in range(n)])


def _photo(rng, width: int, height: int, grey: bool = False):
    """A photo-like image: smooth blobs, a gradient and sensor noise (compresses like a
    photograph, not like pure noise)."""
    from PIL import Image

    small = rng.normal(120, 50, (max(2, height // 64), max(2, width // 64), 3))
    img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC)
    px = np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, (height, width, 3))
    img = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    return img.convert("L") if grey else img


def write_files(folder: Path, n: int, width: int, height: int, fmt: str) -> Path:
    """A pool of photo-like files (JPEG quality 90, or grey PNG); n manifest rows cycle
    through them."""
    rng = np.random.default_rng(0)
    sub = folder / f"{fmt}{width}x{height}"
    sub.mkdir()
    pool = min(n, POOL if width * height < 4_000_000 else 16)
    for i in range(pool):
        img = _photo(rng, width, height, grey=fmt == "png")
        img.save(sub / f"{i:03d}.{fmt}", **({"quality": 90} if fmt == "jpeg" else {}))
    return _manifest(folder / f"{fmt}{width}x{height}.csv",
                     [(f"{sub.name}/{i % pool:03d}.{fmt}", "", "") for i in range(n)])


def featstore_rate(manifest_csv: Path, specs: list[str], store: Path, batch: int | None,
                   workers: int, device: str, size: int, **kw) -> tuple[float, int]:
    """(rows/s end to end through extract_embeddings, the batch size it used)."""
    m = load_dataset(manifest_csv)
    t0 = time.perf_counter()
    res = extract_embeddings(m, [parse_backbone(s, input_size=size) for s in specs],
                             FeatureStore(store), device=device,
                             precision="bf16" if device == "cuda" else "fp32",
                             batch_size=batch, num_workers=workers, shard_rows=4096, **kw)
    return len(m) / (time.perf_counter() - t0), res[0].batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="rows per featstore run")
    ap.add_argument("--n-large", type=int, default=512, help="rows of the 15-MP JPEG arms")
    ap.add_argument("--batch", type=int, default=None, help="default: featstore's auto size")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda",
                    help="cuda; cpu only to check the script (tiny --n, --size)")
    ap.add_argument("--size", type=int, default=224, help="the backbones' input size")
    ap.add_argument("--backbones", type=int, default=2, help="how many of ResNet-50, ViT-S")
    ap.add_argument("--five", type=int, default=1, help="run the five-backbone pass (0: no)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the pure forward compiled and with CUDA graphs")
    args = ap.parse_args()
    size, dev = args.size, args.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_extract.py needs a CUDA GPU (none here): nothing measured")
    what = torch.cuda.get_device_name() if dev == "cuda" else "cpu (a dry run)"
    print(f"device: {what}, torch {torch.__version__}, "
          f"{'bf16' if dev == 'cuda' else 'fp32'}, {size} px, {args.n} rows "
          f"({args.n_large} for 15 MP), {args.workers} workers")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        arrays = write_arrays(tmp, args.n, size)
        jpeg = write_files(tmp, args.n, 500, 375, "jpeg")
        inputs = [  # (label, manifest, extract keywords)
            (f"stored uint8 {size} px (HDF5)", arrays, {}),
            ("stored uint8 96 px, resized on device", write_arrays(tmp, args.n, 96),
             {"resize": "device"}),
            ("JPEG 500x375, PIL in workers", jpeg, {}),
            ("JPEG 500x375, --decode device", jpeg, {"decode": "device"}),
        ]
        big = write_files(tmp, args.n_large, 4928, 3264, "jpeg")
        png = write_files(tmp, args.n_large * 4, 1024, 1024, "png")
        inputs += [("JPEG 15 MP, PIL draft in workers", big, {}),
                   ("JPEG 15 MP, --decode device", big, {"decode": "device"}),
                   ("PNG 1024 grey, PIL in workers", png, {}),
                   ("PNG 1024 grey, resized on device", png, {"decode": "device"})]
        print(f"inputs written in {time.perf_counter() - t0:.1f} s")
        for name, spec in list(BACKBONES.items())[:args.backbones]:
            bs = args.batch
            measured = []
            for k, (label, csv_path, kw) in enumerate(inputs):
                rate, got = featstore_rate(csv_path, [spec], tmp / f"s-{name}-{k}", bs,
                                           args.workers, dev, size, **kw)
                bs = bs or got
                measured.append((label, rate))
                print(f"  {name}: {label}: {rate:,.0f} img/s", flush=True)
            pure = pure_forward(spec, bs, args.iters, dev, size)
            rows.append((name, "pure forward (resident batch)", bs, pure, 1.0))
            if args.compile:
                for mode, label in ((None, "torch.compile"),
                                    ("reduce-overhead", "torch.compile + CUDA graphs")):
                    try:
                        rate = pure_forward(spec, bs, args.iters, dev, size,
                                            compile_mode=mode or "default")
                        rows.append((name, f"pure forward, {label}", bs, rate, rate / pure))
                    except Exception as e:  # a compiler failure is a result, not a crash
                        print(f"  {name}: {label} failed: {type(e).__name__}: {e}")
            rows += [(name, label, bs, rate, rate / pure) for label, rate in measured]
        if args.five:
            rate, bs = featstore_rate(arrays, FIVE, tmp / "s-five", args.batch, args.workers,
                                      dev, size)
            ceiling = 1 / sum(1 / pure_forward(s, bs, args.iters, dev, size) for s in FIVE)
            rows.append(("5 in 1 pass", "pure forwards one after another", bs, ceiling, 1.0))
            rows.append(("5 in 1 pass", f"stored uint8 {size} px, one pass", bs, rate,
                         rate / ceiling))
    print(f"\n{'backbone':<13}{'input':<42}{'batch':>6}{'img/s':>10}{'of pure':>9}")
    for name, label, bs, rate, frac in rows:
        print(f"{name:<13}{label:<42}{bs:>6}{rate:>10,.0f}{frac:>9.0%}")
    print("targets: stored uint8 >= 85% of pure forward; JPEG 500x375 >= 40%")


if __name__ == "__main__":
    main()
