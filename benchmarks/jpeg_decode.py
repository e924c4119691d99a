"""JPEG decode + resize + centre crop to model input, per decoder: what a GPU decode would buy.

    python benchmarks/jpeg_decode.py [--n 256] [--sizes 500x375,2048x1536] [--device cuda]
        [--batch 64] [--workers 14] [--pngs 1024x1024]

Issue 20 asks for GPU JPEG decoding chosen by measurement. Each arm turns the same JPEG files
into uint8 (B, 3, 224, 224) batches (resize of the shorter side to 256, centre crop), the
work a loader worker does per image today:

- ``pil``: featstore's worker path, one process: ``read_image`` (libjpeg with DCT draft
  scaling for large files) and the backbone's timm transform up to its to-tensor; the
  ``x workers`` line scales it by ``--workers`` (the DataLoader's processes, at best);
- ``--decode device, <decoder> <device>``: featstore's device path
  (:func:`featstore.extract.pixels.decode_rows` and ``resize_rows``: a batched
  ``decode_jpeg`` in full, the block-mean reduction PIL's draft would take, the batched
  torch resize), with TorchCodec's decoder (the ``decode`` extra; what featstore uses when
  it is installed) and torchvision's (deprecated since 0.29, the fallback), on the CPU
  (libjpeg-turbo) and on ``--device`` (nvJPEG);
- ``nvimgcodec``: NVIDIA nvImageCodec's batched decoder (``pip install
  nvidia-nvimgcodec-cu13``) and the same reduction and resize, only when it imports and a
  GPU is there. NVIDIA DALI is not an arm: it is a whole pipeline of its own, not a
  decoder to call from featstore's loop.

``--pngs`` adds grey PNGs of that size (NIH ChestX-ray14's 1024x1024 8-bit): ``pil`` as above,
``--decode device (PIL decodes, <device> resizes)`` (what featstore does with a PNG under
``--decode device``: :func:`featstore.data.decode.read_encoded` decodes it in full in the
worker, the model's side resizes) and ``nvimgcodec`` on the PNG bytes (GPU only).

The files are read into memory first: the arms time decoding and resizing, not the disk.
Every arm's output is compared with the PIL path's (mean absolute pixel difference).
On a CPU only the first two arms run (the GPU arms say why they did not).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featstore.data import load_dataset, read_image
from featstore.models import Preprocessing


def write_jpegs(folder: Path, n: int, width: int, height: int) -> Path:
    """``n`` photo-like JPEGs (smooth gradients, blobs and sensor noise; quality 90) and
    their manifest."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = []
    for k in range(8):
        img = np.zeros((height, width, 3), np.float32)
        for c in range(3):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(0.2, 0.6) * min(width, height)
            img[..., c] = 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img[..., c] += 40 * (xx / width) + 20 * k / 8
        img += rng.normal(0, 6, img.shape)
        base.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    lines = ["id,split,path,label"]
    for i in range(n):
        name = f"{width}x{height}-{i:05d}.jpeg"
        base[i % len(base)].save(folder / name, quality=90)
        lines.append(f"r{i},train,{name},0")
    csv = folder / f"{width}x{height}.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def write_pngs(folder: Path, n: int, width: int, height: int) -> Path:
    """``n`` radiograph-like grey 8-bit PNGs (a bright disc, soft gradients and sensor noise)
    and their manifest."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    lines = ["id,split,path,label"]
    for k in range(min(n, 8)):
        r = rng.uniform(0.3, 0.45) * min(width, height)
        img = 160 * np.exp(-((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (2 * r * r))
        img += 50 * (yy / height) + rng.normal(0, 3, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(
            folder / f"png-{width}x{height}-{k}.png")
    for i in range(n):
        lines.append(f"p{i},train,png-{width}x{height}-{i % 8}.png,0")
    csv = folder / f"png-{width}x{height}.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def pil_arm(manifest, prep: Preprocessing, batch: int):
    stage = prep.pixel_stage()
    draft = prep.resize  # as featstore's loader views ask: DCT scaling down to 256 px

    def run() -> torch.Tensor:
        out = []
        for i in range(len(manifest)):
            out.append(stage(read_image(manifest, i, draft=draft)))
            if len(out) == batch:
                out = [torch.stack(out)]
        return torch.cat([o if o.ndim == 4 else o[None] for o in out])
    return run


def decoders() -> dict[str, object]:
    """The decode_jpeg functions installed: TorchCodec's and torchvision's."""
    out = {}
    try:
        from torchcodec.decoders import decode_jpeg as codec

        out["torchcodec"] = codec
    except ImportError:
        pass
    from torchvision.io import decode_jpeg as vision

    out["torchvision"] = vision
    return out


def device_arm(datas: list[torch.Tensor], prep: Preprocessing, batch: int, device: str,
               decoder):
    """featstore's ``--decode device`` path over the JPEG bytes, with ``decoder``."""
    from featstore.extract.pixels import decode_rows, resize_rows

    dev = torch.device(device)

    def run() -> torch.Tensor:
        out = []
        for s in range(0, len(datas), batch):
            decoded, bad = decode_rows(datas[s:s + batch], dev, decoder=decoder)
            assert not bad, bad
            out.append(resize_rows(prep, decoded))
        x = torch.cat(out)
        if device != "cpu":
            torch.cuda.synchronize()
        return x
    return run


def worker_decode_arm(manifest, prep: Preprocessing, batch: int, device: str):
    """featstore's ``--decode device`` path for a file that is not a JPEG: the worker decodes
    it in full (``read_encoded``), the model's side resizes."""
    from featstore.data.decode import read_encoded
    from featstore.extract.pixels import decode_rows, resize_rows

    dev = torch.device(device)

    def run() -> torch.Tensor:
        out = []
        for s in range(0, len(manifest), batch):
            rows = [torch.from_numpy(read_encoded(manifest, i)).to(dev)
                    for i in range(s, min(s + batch, len(manifest)))]
            out.append(resize_rows(prep, decode_rows(rows, dev)[0]))
        x = torch.cat(out)
        if device != "cpu":
            torch.cuda.synchronize()
        return x
    return run


def nvimgcodec_arm(raw: list[bytes], prep: Preprocessing, batch: int):
    from nvidia import nvimgcodec  # noqa: PLC0415 (optional)

    from featstore.extract.pixels import Decoded, resize_rows

    decoder = nvimgcodec.Decoder()

    def run() -> torch.Tensor:
        out = []
        for s in range(0, len(raw), batch):
            imgs = [torch.as_tensor(img, device="cuda").permute(2, 0, 1)  # (H, W, 3) uint8
                    for img in decoder.decode(raw[s:s + batch])]
            imgs = [i.expand(3, -1, -1) if len(i) == 1 else i for i in imgs]  # grey
            out.append(resize_rows(prep, Decoded(imgs, [True] * len(imgs))))
        x = torch.cat(out)
        torch.cuda.synchronize()
        return x
    return run


def timed(fn, reps: int) -> tuple[list[float], torch.Tensor]:
    out = fn()  # warm-up (CUDA contexts, nvJPEG handles, allocator)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def nvimgcodec(arms: dict, skipped: list[str], raw: list[bytes], prep: Preprocessing,
               args: argparse.Namespace) -> None:
    """Add the nvImageCodec arm where it can run, else say why not."""
    if args.device == "cpu":
        skipped.append("GPU arms (no --device cuda)")
        return
    try:
        arms["nvimgcodec cuda"] = nvimgcodec_arm(raw, prep, args.batch)
    except ImportError:
        skipped.append("nvimgcodec (not installed)")


def table(title: str, arms: dict, skipped: list[str], args: argparse.Namespace) -> None:
    print(f"\n{title}, batch {args.batch}, median of {args.reps}")
    print(f"{'arm':<44}{'img/s':>10}{'x pil':>8}{'mean |px diff| vs pil':>24}")
    ref, base = None, None
    for name, fn in arms.items():
        try:
            times, out = timed(fn, args.reps)
        except Exception as e:  # an optional decoder that fails here: say so, run the rest
            print(f"{name:<44}failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        rate = args.n / statistics.median(times)
        out = out.cpu()
        if ref is None:
            ref, base = out, rate
        diff = (out.float() - ref.float()).abs().mean().item()
        print(f"{name:<44}{rate:>10.0f}{rate / base:>8.2f}{diff:>24.3f}")
        if name.startswith("pil"):
            print(f"{'  x ' + str(args.workers) + ' workers (at best)':<44}"
                  f"{rate * args.workers:>10.0f}{args.workers:>8.2f}")
    for s in skipped:
        print(f"  skipped: {s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--sizes", default="500x375,2048x1536")
    ap.add_argument("--pngs", default="", help="grey PNG sizes, e.g. 1024x1024")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    prep = Preprocessing(input_size=224, crop_pct=0.875, interpolation="bilinear",
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        for size in filter(None, args.sizes.split(",")):
            w, h = (int(v) for v in size.split("x"))
            manifest = load_dataset(str(write_jpegs(Path(tmp), args.n, w, h)))
            raw = [manifest.resolve(i).read_bytes() for i in range(len(manifest))]
            datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in raw]
            arms = {"pil (featstore's workers)": pil_arm(manifest, prep, args.batch)}
            found = decoders()
            skipped = [] if "torchcodec" in found else ["torchcodec (not installed)"]
            if args.device == "cpu":  # on a GPU machine the CPU's single-process arms are
                for name, fn in found.items():  # slow and beside the point
                    arms[f"--decode device, {name} cpu"] = device_arm(datas, prep,
                                                                       args.batch, "cpu", fn)
            if args.device != "cpu":
                for name, fn in found.items():
                    arms[f"--decode device, {name} {args.device}"] = device_arm(
                        datas, prep, args.batch, args.device, fn)
            nvimgcodec(arms, skipped, raw, prep, args)
            table(f"{args.n} JPEGs {w}x{h} ({sum(map(len, raw)) / len(raw) / 1e3:.0f} kB "
                  "each) -> uint8 224x224", arms, skipped, args)
        for size in filter(None, args.pngs.split(",")):
            w, h = (int(v) for v in size.split("x"))
            manifest = load_dataset(str(write_pngs(Path(tmp), args.n, w, h)))
            raw = [manifest.resolve(i).read_bytes() for i in range(len(manifest))]
            arms = {"pil (featstore's workers)": pil_arm(manifest, prep, args.batch),
                    f"--decode device (PIL decodes, {args.device} resizes)":
                        worker_decode_arm(manifest, prep, args.batch, args.device)}
            skipped = []
            nvimgcodec(arms, skipped, raw, prep, args)
            table(f"{args.n} grey PNGs {w}x{h} ({sum(map(len, raw)) / len(raw) / 1e3:.0f} kB "
                  "each) -> uint8 224x224", arms, skipped, args)


if __name__ == "__main__":
    main()
