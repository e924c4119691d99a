"""featstore extract vs the obvious alternatives, side by side in one run on this machine.

A. One backbone: featstore vs a plain PyTorch loop that writes with np.save (same PNGs, model,
   transform, batch size and DataLoader workers). Target: featstore <= 1.10x the plain loop.
B. Three backbones over large JPEGs (decode-heavy, fundus-photo sized): one featstore pass
   (one decode per image) vs three separate featstore runs, and vs three plain loops.

    python benchmarks/extract.py [--images 1024] [--arch resnet18] [--size 112] [--jpegs 192]

Every side times the whole job: build the model, read and decode every image, forward, write.
featstore additionally hashes the weights, validates the manifest, claims each shard, writes a
Zarr store with per-shard checksums and done marks, and records provenance.
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


def featstore_run(csv_path: Path, archs: list[str], size: int, batch: int, workers: int,
                  store: Path) -> list[np.ndarray]:
    """featstore extract of one or several backbones in one pass."""
    m = load_dataset(csv_path)
    fs = FeatureStore(store)
    specs = [parse_backbone(f"timm:{a}@random", input_size=size) for a in archs]
    res = extract_embeddings(m, specs, fs, batch_size=batch, num_workers=workers)
    return [fs.load(m, r.key).X for r in res]


def write_fundus_jpegs(folder: Path, n: int, width: int, height: int) -> Path:
    """Large colour JPEGs (fundus-photo sized) and a manifest CSV: decode-heavy input."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (0.45 * height) ** 2
    rows = []
    for i in range(n):
        px = np.zeros((height, width, 3), np.uint8)
        shade = rng.normal(0, 12, (height // 16, width // 16))
        base = 120 + np.kron(shade, np.ones((16, 16)))[:height, :width]
        px[..., 0] = np.clip(base + 60, 0, 255) * disc
        px[..., 1] = np.clip(base - 40 + 30 * (i % 2), 0, 255) * disc
        px[..., 2] = np.clip(base - 80, 0, 255) * disc
        rel = f"images/{i:05d}.jpeg"
        Image.fromarray(px).save(folder / rel, quality=92)
        rows.append({"id": f"{i:05d}", "split": "train", "path": rel, "label": i % 2})
    manifest = folder / "fundus.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "split", "path", "label"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--image-px", type=int, default=128, help="side of the generated PNGs")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=112, help="network input size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jpegs", type=int, default=192, help="large JPEGs for the 3-backbone run")
    ap.add_argument("--jpeg-size", default="2048x1536", help="WIDTHxHEIGHT of the JPEGs")
    ap.add_argument("--three", default="resnet18,mobilenetv3_small_100,efficientnet_b0",
                    help="the backbones of the one-pass comparison")
    ap.add_argument("--three-size", type=int, default=96)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv_path = write_demo_dataset(tmp / "data", size=args.image_px,
                                      splits={"train": args.images})
        workers = default_workers(args.images, args.batch)
        times: dict[str, list[float]] = {"plain loop + np.save": [], "featstore extract": []}
        check = {}
        for rep in range(args.reps):
            for name in times:
                if name == "featstore extract":
                    t, (emb,) = timed(featstore_run, csv_path, [args.arch], args.size,
                                      args.batch, workers, tmp / f"store{rep}")
                else:
                    t, emb = timed(plain_loop, csv_path, args.arch, args.size, args.batch,
                                   workers, tmp / f"plain{rep}.npy")
                times[name].append(t)
                check[name] = emb
        a, b = check.values()
        same = np.array_equal(a, b)

        w, h = (int(v) for v in args.jpeg_size.split("x"))
        jpeg_csv = write_fundus_jpegs(tmp / "fundus", args.jpegs, w, h)
        three = args.three.split(",")
        jw = default_workers(args.jpegs, args.batch)
        multi: dict[str, list[float]] = {"3 separate featstore runs": [],
                                         "featstore, 3 backbones, one pass": [],
                                         "3 plain loops (full decode)": []}
        outs = {}
        for rep in range(args.reps):
            t_sep = 0.0
            sep = []
            for k, arch in enumerate(three):
                t, (x,) = timed(featstore_run, jpeg_csv, [arch], args.three_size, args.batch,
                                jw, tmp / f"sep{rep}-{k}")
                t_sep += t
                sep.append(x)
            multi["3 separate featstore runs"].append(t_sep)
            t, one = timed(featstore_run, jpeg_csv, three, args.three_size, args.batch, jw,
                           tmp / f"one{rep}")
            multi["featstore, 3 backbones, one pass"].append(t)
            t_plain = 0.0
            for k, arch in enumerate(three):
                t, _ = timed(plain_loop, jpeg_csv, arch, args.three_size, args.batch, jw,
                             tmp / f"plainj{rep}-{k}.npy")
                t_plain += t
            multi["3 plain loops (full decode)"].append(t_plain)
            outs = {"sep": sep, "one": one}
        one_equals_sep = all(np.array_equal(a, b) for a, b in
                             zip(outs["sep"], outs["one"], strict=True))

    print_table(f"A. one backbone: {args.images} PNG files ({args.image_px}px), timm "
                f"{args.arch} at {args.size}px, batch {args.batch}, {workers} workers, "
                f"{torch.get_num_threads()} torch threads, median of {args.reps}",
                times, args.images)
    print(f"embeddings identical: {same}  (target: featstore <= 1.10x the plain loop)")
    print_table(f"B. three backbones ({', '.join(three)} at {args.three_size}px): "
                f"{args.jpegs} JPEGs of {w}x{h}, batch {args.batch}, {jw} workers, "
                f"median of {args.reps}", multi, args.jpegs)
    print(f"one pass == separate runs, bit for bit: {one_equals_sep}  (featstore decodes JPEGs "
          "at reduced DCT scale; the plain loops decode in full, so their numbers differ)")


def print_table(title: str, times: dict[str, list[float]], n_images: int) -> None:
    """Median wall time per method; ratios against the first method."""
    base = statistics.median(next(iter(times.values())))
    print(f"\n{title}")
    print(f"{'method':<36}{'wall s':>9}{'img/s':>9}{'ratio':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<36}{med:>9.2f}{n_images / med:>9.1f}{med / base:>8.3f}")

if __name__ == "__main__":
    main()
