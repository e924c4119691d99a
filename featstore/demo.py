"""The embedded demo: a small generated image dataset with a genuine class signal.

Class ``lesion`` images hold one bright, blurred disc at a random place and size on a
textured background; class ``normal`` images hold the background only. The signal is
local and weak against the texture, so a probe has something real to learn.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_BACKBONES = ("timm:resnet18@random", "timm:test_vit@random")
DEMO_INPUT_SIZE = 64
DEMO_SPLITS = {"train": 240, "val": 80, "test": 80}
CLASSES = ("normal", "lesion")


def _image(rng: np.random.Generator, lesion: bool, size: int) -> np.ndarray:
    """One greyscale uint8 image (size, size)."""
    coarse = rng.normal(0, 1, (size // 8, size // 8))
    texture = np.kron(coarse, np.ones((8, 8)))
    yy, xx = np.mgrid[0:size, 0:size]
    img = 110 + 18 * texture + rng.normal(0, 10, (size, size))
    if lesion:
        r = rng.uniform(size * 0.08, size * 0.18)
        cy, cx = rng.uniform(r, size - r, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img += rng.uniform(45, 80) * np.exp(-d2 / (2 * r * r))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_demo_dataset(folder: str | Path, *, seed: int = 0, size: int = 64,
                       splits: dict[str, int] | None = None) -> Path:
    """Write PNG images and ``demo.csv`` (the manifest) under ``folder``; return the manifest path.

    Two images per patient (``group``), both in one split; labels balanced per split.
    Existing files with the same content are rewritten identically (same seed, same bytes).
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (splits or DEMO_SPLITS).items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = i % 2
            rid = f"{split}-{i:04d}"
            rel = f"images/{split}/{rid}.png"
            Image.fromarray(_image(rng, bool(label), size)).save(folder / rel)
            rows.append({"id": rid, "split": split, "path": rel, "label": label,
                         "group": f"{split}-patient-{i // 2:03d}"})
    manifest = folder / "demo.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "split", "path", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def run_demo(store: str, workdir: str | Path, *, progress=None) -> tuple[list, list]:
    """Write the demo dataset, extract :data:`DEMO_BACKBONES` (random weights) in one pass,
    and probe each set linearly. Returns (extract results, probe records)."""
    from featstore.data import load_dataset
    from featstore.extract import extract_embeddings
    from featstore.models import parse_backbone
    from featstore.probe import probe_grid
    from featstore.store import FeatureStore

    manifest = load_dataset(write_demo_dataset(workdir))
    fs = FeatureStore(store)
    specs = [parse_backbone(b, input_size=DEMO_INPUT_SIZE) for b in DEMO_BACKBONES]
    results = extract_embeddings(manifest, specs, fs, batch_size=64, progress=progress)
    ds = fs.dataset(manifest)
    records = probe_grid([ds.embedding_set(r.key) for r in results])
    return results, records
