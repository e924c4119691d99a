"""featstore extract vs a plain PyTorch loop that writes with np.save: same images, same model,
same transform, same batch size and DataLoader workers. Runs alternate, median of --reps.

    python benchmarks/extract_overhead.py [--images 1024] [--arch resnet18] [--size 112]

Both sides time the whole job: build the model, read and decode every image, forward, write.
featstore additionally hashes the weights, validates the manifest, writes a Zarr store with
per-shard checksums and done marks, and records provenance.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from featstore.data import load_dataset
from featstore.demo import write_demo_dataset
from featstore.extract import extract_embeddings
from featstore.extract.engine import default_workers
from featstore.models import Preprocessing, parse_backbone
from featstore.store import FeatureStore


def plain_loop(csv_path: Path, arch: str, size: int, batch: int, workers: int,
               out: Path) -> np.ndarray:
    """What a researcher writes by hand: DataLoader -> model -> np.save."""
    import csv

    from PIL import Image

    with open(csv_path) as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
    paths = [csv_path.parent / r["path"] for r in rows]
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=0).eval()
    tf = Preprocessing.from_timm(model, input_size=size).transform()

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as img:
                return tf(img.convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    outs = []
    with torch.inference_mode():
        for x in loader:
            outs.append(model(x).numpy())
    emb = np.concatenate(outs)
    np.save(out, emb)
    return emb


def featstore_run(csv_path: Path, arch: str, size: int, batch: int, workers: int,
                  store: Path) -> np.ndarray:
    m = load_dataset(csv_path)
    fs = FeatureStore(store)
    [res] = extract_embeddings(m, [parse_backbone(f"timm:{arch}@random", input_size=size)], fs,
                               batch_size=batch, num_workers=workers)
    return fs.load(m, res.key).X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--image-px", type=int, default=128, help="side of the generated PNGs")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=112, help="network input size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv_path = write_demo_dataset(tmp / "data", size=args.image_px,
                                      splits={"train": args.images})
        workers = default_workers(args.images, args.batch)
        times: dict[str, list[float]] = {"plain loop + np.save": [], "featstore extract": []}
        check = {}
        for rep in range(args.reps):
            for name in times:
                t0 = time.perf_counter()
                if name == "featstore extract":
                    emb = featstore_run(csv_path, args.arch, args.size, args.batch, workers,
                                        tmp / f"store{rep}")
                else:
                    emb = plain_loop(csv_path, args.arch, args.size, args.batch, workers,
                                     tmp / f"plain{rep}.npy")
                times[name].append(time.perf_counter() - t0)
                check[name] = emb
        a, b = check.values()
        same = np.array_equal(a, b)
    base = statistics.median(times["plain loop + np.save"])
    print(f"\nextract overhead: {args.images} PNG files ({args.image_px}px), timm {args.arch} at "
          f"{args.size}px, batch {args.batch}, {workers} workers, {torch.get_num_threads()} "
          f"torch threads, median of {args.reps}")
    print(f"{'method':<24}{'wall s':>9}{'img/s':>9}{'ratio':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24}{med:>9.2f}{args.images / med:>9.0f}{med / base:>8.3f}")
    print(f"embeddings identical: {same}  (target: featstore <= 1.15x the plain loop)")


if __name__ == "__main__":
    main()
