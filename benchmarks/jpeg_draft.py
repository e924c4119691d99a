"""JPEG draft decoding (libjpeg DCT scaling) vs a full decode, on fundus-photo sized JPEGs.

    python benchmarks/jpeg_draft.py [--jpegs 32] [--jpeg-size 2048x1536] [--input-size 224]

featstore's extract decodes a JPEG at the smallest of 1/2, 1/4 or 1/8 scale that keeps the
shorter side at or above the backbone's resize side (256 px for a 224-px input), then
resizes and crops as usual. Both sides read the same files through featstore.data's
``read_image``; one table for the decode alone, one for decode + the backbone's transform
(what extract does per image). The tensors of the two paths are compared at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from extract import write_fundus_jpegs

from featstore.data import load_dataset, read_image
from featstore.models import Preprocessing


def per_image_ms(fn, n_images: int, reps: int) -> list[float]:
    """Milliseconds per image of ``fn(i)`` over all images, once per repetition."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n_images):
            fn(i)
        out.append((time.perf_counter() - t0) * 1000 / n_images)
    return out


def print_table(title: str, times: dict[str, list[float]]) -> None:
    """Median ms per image per method; ratios against the first method."""
    base = statistics.median(next(iter(times.values())))
    print(f"\n{title}")
    print(f"{'method':<36}{'ms/img':>9}{'img/s':>9}{'ratio':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<36}{med:>9.2f}{1000 / med:>9.1f}{med / base:>8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jpegs", type=int, default=32)
    ap.add_argument("--jpeg-size", default="2048x1536", help="WIDTHxHEIGHT of the JPEGs")
    ap.add_argument("--input-size", type=int, default=224, help="network input size")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    w, h = (int(v) for v in args.jpeg_size.split("x"))
    prep = Preprocessing(args.input_size, 0.875, "bicubic", (0.485, 0.456, 0.406),
                         (0.229, 0.224, 0.225))
    tf = prep.transform()
    with tempfile.TemporaryDirectory() as tmp:
        m = load_dataset(write_fundus_jpegs(Path(tmp), args.jpegs, w, h))
        n = len(m)
        read_image(m, 0)  # warm the file cache and the decoder
        draft_size = read_image(m, 0, draft=prep.resize).size
        decode = {
            "full decode": per_image_ms(lambda i: read_image(m, i), n, args.reps),
            f"draft decode ({draft_size[0]}x{draft_size[1]})":
                per_image_ms(lambda i: read_image(m, i, draft=prep.resize), n, args.reps),
        }
        transformed = {
            "full decode + transform": per_image_ms(lambda i: tf(read_image(m, i)), n,
                                                    args.reps),
            "draft decode + transform": per_image_ms(
                lambda i: tf(read_image(m, i, draft=prep.resize)), n, args.reps),
        }
        diffs = [(tf(read_image(m, i, draft=prep.resize)) - tf(read_image(m, i))).abs()
                 for i in range(n)]
    scale = w // draft_size[0]
    print_table(f"A. decode only: {n} JPEGs of {w}x{h}, draft for a {prep.resize}-px resize "
                f"(1/{scale} scale), {torch.get_num_threads()} torch threads, median of "
                f"{args.reps}", decode)
    print_table(f"B. decode + transform to a {args.input_size}-px tensor ({prep.interpolation} "
                f"resize {prep.resize}, centre crop, normalise)", transformed)
    print(f"tensor difference, draft - full (normalised units): mean "
          f"{torch.stack([d.mean() for d in diffs]).mean():.4f}, max "
          f"{max(d.max() for d in diffs):.4f}")


if __name__ == "__main__":
    main()
