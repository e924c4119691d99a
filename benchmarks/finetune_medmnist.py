"""Finetuning accuracy against a published table: ResNet-18 trained from scratch at 28 px on
MedMNIST v2 (Yang et al., Scientific Data 2023, Table 3), beside a linear probe of the same
random weights.

    python benchmarks/finetune_medmnist.py [--epochs 40] [--seeds 1]

Needs ../shared/data/medmnist/{breastmnist,pneumoniamnist_balanced}.npz. A CPU-sized recipe:
`timm:resnet18@random` at 28 px (timm's ImageNet stem: 7x7 stride-2 conv and max-pool, so a
28 px image is 7x7 after the stem and 1x1 at the last stage; the paper's ResNet-18 (28) has a
CIFAR-style 3x3 stride-1 stem and no max-pool, so this is a different, smaller-resolution
network), AdamW, cosine with 1 warmup epoch, light RandomResizedCrop (scale 0.8-1) and flips,
best epoch on val. The balanced pneumonia file is a class-balanced subset of PneumoniaMNIST, so
its numbers are not the paper's test set: read them as a sanity check, not a reproduction.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist"
# MedMNIST v2, Table 3, ResNet-18 (28): test AUC / ACC
PUBLISHED = {"breastmnist": (0.901, 0.863), "pneumoniamnist_balanced": (0.944, 0.854)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    from featstore.data import load_dataset
    from featstore.extract import extract_embeddings
    from featstore.finetune import FinetuneConfig, finetune_grid
    from featstore.models import parse_backbone
    from featstore.probe import ProbeConfig, probe_grid
    from featstore.store import FeatureStore

    spec = parse_backbone("timm:resnet18@random", input_size=28)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp) / "store")
        for name, (pub_auc, pub_acc) in PUBLISHED.items():
            path = DATA / f"{name}.npz"
            if not path.is_file():
                print(f"skipped {name}: {path} not found")
                continue
            m = load_dataset(path)
            config = FinetuneConfig(task=m.task, epochs=args.epochs,
                                    batch_size=args.batch_size, lr=args.lr, warmup_epochs=1,
                                    crop_scale=(0.8, 1.0), n_bootstrap=1000)
            tuned = finetune_grid(m, [spec], config, store=store, seeds=args.seeds)
            [res] = extract_embeddings(m, [spec], store)
            probed = probe_grid(store.dataset(m).embedding_sets(), ProbeConfig(task=m.task),
                                seeds=args.seeds)
            for label, recs in (("finetune", tuned), ("linear probe", probed)):
                auc = [r for r in recs if r.metric == "auc"]
                acc = [r.value for r in recs if r.metric == "accuracy"]
                ci = f"[{auc[0].ci_low:.3f}, {auc[0].ci_high:.3f}]"
                best = (f"best epoch {auc[0].config['best_epoch']}/{args.epochs}"
                        if label == "finetune" else auc[0].hyperparameter)
                rows.append((name, label, statistics.mean(r.value for r in auc), ci,
                             statistics.mean(acc), pub_auc, pub_acc, best))
    print(f"ResNet-18 @random at 28 px (timm stem), {args.epochs} epochs, {args.seeds} seed(s), "
          "CPU; published: MedMNIST v2 ResNet-18 (28)")
    print(f"{'dataset':24s} {'method':13s} {'AUC':>6s} {'95% CI':>16s} {'ACC':>6s} "
          f"{'pub AUC':>8s} {'pub ACC':>8s}  chosen")
    for name, label, auc, ci, acc, pa, pc, best in rows:
        print(f"{name:24s} {label:13s} {auc:6.3f} {ci:>16s} {acc:6.3f} {pa:8.3f} {pc:8.3f}  "
              f"{best}")


if __name__ == "__main__":
    main()
