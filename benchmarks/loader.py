"""What the loader alone delivers: images/s per worker and bytes per image across the worker
boundary, before (float32 per image, timm's whole eval transform in the worker) and after
(uint8: PIL's resize/crop in the worker, normalisation on the model's side; or, for
equal-sized arrays, the stored rows in one indexed read per batch, resized on the device;
or, with ``--decode device``, a JPEG's bytes as read, its header checked, decoded on the
device). The stored-rows arm is also run with the arrays read once in the main process and
shared by the forked workers (``ViewsDataset.share_arrays``, as extract does), the read timed.

    python benchmarks/loader.py [--rows 2048] [--workers 2] [--size 224]

Sources (generated): a MedMNIST-like .npz of 64 px greyscale rows, and a folder of 500x375
photo-like JPEGs. Each arm drains a ``DataLoader`` over the same rows (the model's side is
not timed; the device-side resize is timed separately on this machine's CPU, as it would run
batched on a GPU). Ratios are against the float32 arm of the same source, in one run.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featstore.data import load_dataset
from featstore.data.images import View, ViewsDataset, collate_views
from featstore.models.preprocessing import Preprocessing

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def npz_source(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    n_tr, n_va = int(rows * 0.7), int(rows * 0.1)
    n_te = rows - n_tr - n_va
    path = folder / "bench64.npz"
    arrays = {}
    for split, n in (("train", n_tr), ("val", n_va), ("test", n_te)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(path, **arrays)
    return path


def jpeg_source(folder: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    img_dir = folder / "jpegs"
    img_dir.mkdir()
    # photo-like (smooth blobs and sensor noise): compresses as a photograph does (~40 kB)
    small = Image.fromarray(rng.integers(20, 230, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(small.resize((500, 375), Image.BICUBIC), dtype=np.int16)
    base = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    lines = ["id,split,label,path"]
    for i in range(rows):
        name = f"{i:06d}.jpg"
        if i < 64:  # 64 distinct files, reused: the decode cost is what is measured
            Image.fromarray(np.roll(base, i * 7, axis=1)).save(img_dir / name, quality=90)
        lines.append(f"r{i},{'test' if i % 10 == 0 else 'train'},{i % 2},"
                     f"jpegs/{i % 64:06d}.jpg")
    csv = folder / "jpegs.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def drain(dataset: ViewsDataset, batch: int, workers: int, share: bool = False,
          ) -> tuple[float, int]:
    """(images/s, bytes per image) of a DataLoader over the whole dataset; with ``share``,
    the arrays read in this process first (timed too) and shared by the forked workers."""
    t0 = time.perf_counter()
    if share:
        dataset.share_arrays()
    rows = [[(r, (0,)) for r in range(b, min(b + batch, len(dataset)))]
            for b in range(0, len(dataset), batch)]
    lists = frozenset({0} if dataset.views[0].encoded else ())
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=rows, num_workers=workers,
                                         collate_fn=functools.partial(collate_views,
                                                                      lists=lists),
                                         prefetch_factor=4 if workers else None)
    n, nbytes = 0, 0
    for xs, r, _ in loader:
        n += len(r)
        x = xs[0] if isinstance(xs[0], list) else [xs[0]]
        nbytes += sum(t.numel() * t.element_size() for t in x)
    return n / (time.perf_counter() - t0), nbytes // max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--only", default="", help="Only the arms whose source or name holds "
                    "this text (e.g. 'stored rows' with --rows 51024).")
    args = ap.parse_args()
    prep = Preprocessing(args.size, 0.875, "bicubic", *IMAGENET)
    shape = (3, args.size, args.size)
    print(f"loader alone, {args.rows} rows, {args.workers} workers, {args.size} px "
          "(images/s per worker; bytes per image handed over)")
    print(f"{'source':10s} {'arm':34s} {'img/s/worker':>13s} {'bytes/img':>10s} "
          f"{'vs float32':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"npz 64px": npz_source(Path(tmp), args.rows),
                   "jpeg 500": jpeg_source(Path(tmp), args.rows)}
        for name, path in sources.items():
            m = load_dataset(path)
            arms = {
                "float32, transform per image (before)": (
                    View(prep.transform(), shape, prep.resize), 32),
                "uint8, PIL resize per image": (
                    View(prep.pixel_stage(), shape, prep.resize, torch.uint8), 32),
            }
            if name.startswith("npz"):
                arms["uint8, stored rows, one read/batch"] = (View(None, (64, 64), raw=True),
                                                              256)
                arms["uint8, stored rows, shared arrays"] = (
                    View(None, (64, 64), raw=True), 256)
            else:
                arms["JPEG bytes (--decode device)"] = (
                    View(None, (8, 8), dtype=torch.uint8, encoded=True), 32)
            base = None
            for arm, (view, batch) in arms.items():
                if args.only and args.only not in f"{name} {arm}":
                    continue
                rate, nbytes = drain(ViewsDataset(m, [view]), batch, args.workers,
                                     share="shared" in arm)
                per_worker = rate / max(args.workers, 1)
                base = base or per_worker
                print(f"{name:10s} {arm:34s} {per_worker:13.0f} {nbytes:10d} "
                      f"{per_worker / base:10.1f}x")
        # the device's share of the stored-rows arm, here on this CPU
        x = torch.randint(0, 256, (256, 64, 64), dtype=torch.uint8)
        prep.normalize(prep.resize_batch(x))
        t0 = time.perf_counter()
        for _ in range(3):
            prep.normalize(prep.resize_batch(x))
        rate = 3 * 256 / (time.perf_counter() - t0)
        print(f"batched resize + normalise of 64 px rows on this CPU: {rate:.0f} img/s "
              "(on a GPU: the model's side)")


if __name__ == "__main__":
    main()
