"""Finetuning throughput: `featstore finetune` against a plain PyTorch training loop with the
same model, data, batch size, augmentation and optimiser, side by side in one run.

    python benchmarks/finetune.py                       # CPU: resnet18 @random, 64 px
    python benchmarks/finetune.py --device cuda --precision bf16 --arch resnet50 --size 224 \\
        --rows 4096 --batch-size 128 --workers 8        # the GPU half (channels_last, bf16)

Data: ../shared/data/medmnist/pneumoniamnist_balanced.npz when present (train rows, capped at
--rows), else generated images. Both sides decode the same rows through the same timm train
transform in a DataLoader with the same workers, train the same timm network (pooled features
+ a linear head, AdamW, BCE) for --epochs epochs; the plain loop seeds nothing, checkpoints
nothing and evaluates nothing. Reported: training images/s of each epoch after the first
(featstore's from its run history: its own training time, not its val pass and checkpoint
writes), and the whole wall time of each side (featstore's includes its val pass per epoch,
its per-epoch checkpoint, the test pass and the persisted run). Target on CPU: featstore's
training throughput >= 0.90 of the plain loop's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_balanced.npz"


def dataset(folder: Path, rows: int) -> Path:
    """A MedMNIST-layout .npz: the real balanced pneumonia file (train capped at ``rows``),
    else generated 28 px images with a learnable signal."""
    out = folder / "bench.npz"
    if SHARED.is_file():
        with np.load(SHARED) as d:
            arrays = {k: d[k] for k in d.files}
        keep = np.sort(np.random.default_rng(0).permutation(  # the file is sorted by label
            len(arrays["train_images"]))[:rows])
        arrays["train_images"] = arrays["train_images"][keep]
        arrays["train_labels"] = arrays["train_labels"][keep]
    else:
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", rows), ("val", rows // 8), ("test", rows // 8)):
            labels = (np.arange(n) % 2).astype(np.uint8)
            img = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
            img[labels == 1, 8:20, 8:20] += 100
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = img, labels
    np.savez(out, **arrays)
    return out


def plain_loop(data: Path, args: argparse.Namespace) -> tuple[list[float], float]:
    """What a user writes by hand: same rows, transform, network, optimiser and loss."""
    import timm
    import timm.data
    from PIL import Image

    with np.load(data) as d:
        images, labels = d["train_images"], d["train_labels"].reshape(-1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = timm.data.create_transform(input_size=(3, args.size, args.size), is_training=True,
                                    scale=(0.08, 1.0), hflip=0.5, color_jitter=None,
                                    interpolation="bilinear", mean=mean, std=std)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            img = Image.fromarray(images[i]).convert("RGB")
            return tf(img), torch.tensor([float(labels[i])])

    dev = torch.device(args.device)
    backbone = timm.create_model(args.arch, num_classes=0)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 1)).to(dev)
    cl = dev.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(Rows(), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, pin_memory=cl)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if args.precision == "bf16" else None
    rates = []
    t_all = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cl:
                x = x.to(memory_format=torch.channels_last)
            if amp is not None:
                with amp:
                    loss = loss_fn(model(x).float(), y)
            else:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates, time.perf_counter() - t_all


def featstore_run(data: Path, store: Path, args: argparse.Namespace) -> tuple[list[float], float]:
    from featstore.data import load_dataset
    from featstore.finetune import FinetuneConfig, finetune_run
    from featstore.models import parse_backbone
    from featstore.store import FeatureStore

    m = load_dataset(data)
    spec = parse_backbone(f"timm:{args.arch}@random", input_size=args.size)
    config = FinetuneConfig(task=m.task, epochs=args.epochs, batch_size=args.batch_size,
                            lr=1e-3, warmup_epochs=0, precision=args.precision,
                            n_bootstrap=100)
    t0 = time.perf_counter()
    [rec, *_] = finetune_run(m, spec, config, store=FeatureStore(store), device=args.device,
                             num_workers=args.workers, recompute=True)
    return [h["img_s"] for h in rec.config["history"]], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp), args.rows)
        plain_rates, plain_wall = plain_loop(data, args)
        fs_rates, fs_wall = featstore_run(data, Path(tmp) / "store", args)
    plain = statistics.median(plain_rates[1:] or plain_rates)
    ours = statistics.median(fs_rates[1:] or fs_rates)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"finetune {args.arch} @random at {args.size} px, {args.rows} train images "
          f"({'real pneumonia' if SHARED.is_file() else 'generated'}), batch {args.batch_size}, "
          f"{args.workers} workers, {args.precision}, {args.epochs} epochs, {where}")
    print(f"{'':34s} {'train img/s':>12s} {'ratio':>7s} {'wall s':>8s}")
    print(f"{'plain PyTorch loop':34s} {plain:12.1f} {1.0:7.2f} {plain_wall:8.1f}")
    print(f"{'featstore finetune':34s} {ours:12.1f} {ours / plain:7.2f} {fs_wall:8.1f}")
    print("(img/s: median over epochs after the first; featstore's wall time adds a val pass "
          "per epoch, a checkpoint per epoch, the test pass with bootstrap CI)")
    print("target: featstore >= 0.90 of the plain loop's training throughput")


if __name__ == "__main__":
    main()
