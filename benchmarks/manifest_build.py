"""Manifest build time for release-size layouts, generated once in a temporary folder:
NIH ChestX-ray14 (112,120 rows, empty placeholder PNG files) and PatchCamelyon (262,144 +
32,768 + 32,768 patches; the x datasets are allocated lazily by HDF5, so the files are small
but have the real shapes). featstore reads only the CSV, file names, shapes and labels.

    python benchmarks/manifest_build.py

Beside it, the obvious pandas version of the NIH step (read_csv + get_dummies on the
'|'-separated findings), when pandas is installed; it does no validation and no file lookup.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from featstore.data.readers import NIH_FINDINGS, read_nih, read_pcam

NIH_ROWS = 112_120
PCAM = (("train", 262_144), ("valid", 32_768), ("test", 32_768))


def make_nih(root: Path) -> None:
    rng = np.random.default_rng(0)
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
             "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    names = []
    for i in range(NIH_ROWS):
        patient = i // 4 + 1
        name = f"{patient:08d}_{i % 4:03d}.png"
        k = rng.integers(0, 3)
        found = "|".join(rng.choice(NIH_FINDINGS, k, replace=False)) if k else "No Finding"
        lines.append(f"{name},{found},{i % 4},{patient},50,F,PA,2500,2048,0.14,0.14,")
        names.append(name)
        (images / name).touch()
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    cut = int(len(names) * 0.77) // 4 * 4  # whole patients on each side
    (root / "train_val_list.txt").write_text("\n".join(names[:cut]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[cut:]) + "\n")


def make_pcam(root: Path) -> None:
    root.mkdir(parents=True)
    for split, n in PCAM:
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", shape=(n, 96, 96, 3), dtype="uint8", chunks=(1, 96, 96, 3))
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=(np.arange(n) % 2).astype("uint8").reshape(-1, 1, 1, 1))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen_nih, _ = timed(lambda: make_nih(tmp / "nih"))
        gen_pcam, _ = timed(lambda: make_pcam(tmp / "pcam"))
        t_nih, m_nih = timed(lambda: read_nih(tmp / "nih"))
        t_nih_hash, _ = timed(lambda: m_nih.sha256)
        t_pcam, m_pcam = timed(lambda: read_pcam(tmp / "pcam"))
        t_pcam_hash, _ = timed(lambda: m_pcam.sha256)
        rows = [("NIH ChestX-ray14 (featstore, validated)", len(m_nih), t_nih, t_nih_hash),
                ("PatchCamelyon (featstore, validated)", len(m_pcam), t_pcam, t_pcam_hash)]
        try:
            import pandas as pd

            def pandas_nih():
                df = pd.read_csv(tmp / "nih" / "Data_Entry_2017.csv")
                return df["Finding Labels"].str.get_dummies("|")

            t_pd, _ = timed(pandas_nih)
            rows.append(("NIH with pandas (no checks, no file lookup)", NIH_ROWS, t_pd,
                         float("nan")))
        except ImportError:
            print("(pandas not installed: the pandas comparison row is skipped)")
    print(f"\nmanifest build (layouts generated in {gen_nih:.0f}s + {gen_pcam:.0f}s)")
    print(f"{'layout':<46}{'rows':>9}{'build s':>9}{'hash s':>8}")
    for name, n, t, h in rows:
        print(f"{name:<46}{n:>9,}{t:>9.2f}{h:>8.2f}")
    print("target: seconds, not minutes")


if __name__ == "__main__":
    main()
