"""PatchCamelyon: six HDF5 files, patches ``x`` and labels ``y`` of each official split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore._hashing import sha256_file
from featstore.data.layouts._layout import Layout
from featstore.data.manifest import Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

SPEC = load_spec("pcam")
PCAM_PATTERN: str = SPEC["layout"]["pattern"]
# (name in the release, featstore split): valid is read as val
PCAM_SPLITS: tuple[tuple[str, str], ...] = tuple(SPEC["layout"]["splits"].items())
PATCH_SHAPE: tuple[int, ...] = tuple(SPEC["layout"]["patch_shape"])


def looks_like_pcam(path: Path) -> bool:
    """A folder holding any ``camelyonpatch_level_2_split_*_*.h5`` file."""
    return path.is_dir() and any(path.glob(PCAM_PATTERN.format(split="*", part="*")))


def read_pcam(root: str | Path) -> Manifest:
    """Build a manifest over the PatchCamelyon release (official splits), without loading it.

    Expects ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` with datasets ``x``
    (N, 96, 96, 3) uint8 and ``y`` (N, 1, 1, 1). Only shapes and the labels are read; the
    patches are read lazily by row at extraction. The label files' sha256 and the patch files'
    sizes enter the manifest hash (hashing 7 GB of patches on every run would cost minutes).

    Raises
    ------
    ManifestError
        A missing file, a missing dataset, or a wrong shape or dtype, naming the file.
    """
    import h5py

    root = Path(root)
    expected = {PCAM_PATTERN.format(split=r, part=p) for r, _ in PCAM_SPLITS for p in "xy"}
    extra = sorted(f.name for f in root.glob(PCAM_PATTERN.format(split="*", part="*"))
                   if f.name not in expected)
    if extra:
        raise ManifestError(f"{root}: unexpected PatchCamelyon file {extra[0]} (the release "
                            f"has splits {', '.join(r for r, _ in PCAM_SPLITS)} and parts x, y)")
    shape = ", ".join(map(str, PATCH_SHAPE))
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "array": [], "index": [],
                                  "label": []}
    sources: dict[str, str] = {}
    for release, split in PCAM_SPLITS:
        xf = root / PCAM_PATTERN.format(split=release, part="x")
        yf = root / PCAM_PATTERN.format(split=release, part="y")
        for f in (xf, yf):
            if not f.is_file():
                gz = f.with_name(f.name + ".gz")
                hint = f" (found {gz.name}: decompress it with gunzip)" if gz.is_file() else ""
                raise ManifestError(f"{root}: PatchCamelyon file missing: {f.name}{hint}")
        try:
            with h5py.File(xf, "r") as fx, h5py.File(yf, "r") as fy:
                if "x" not in fx or "y" not in fy:
                    raise ManifestError(f"{xf.name if 'x' not in fx else yf.name}: no dataset "
                                        f"{'x' if 'x' not in fx else 'y'}")
                x, y = fx["x"], fy["y"]
                if x.ndim != 4 or x.shape[1:] != PATCH_SHAPE or x.dtype != np.uint8:
                    raise ManifestError(f"{xf.name}: x has shape {x.shape} {x.dtype}, "
                                        f"expected (N, {shape}) uint8")
                if y.shape != (x.shape[0], 1, 1, 1):
                    raise ManifestError(f"{yf.name}: y has shape {y.shape}, expected "
                                        f"({x.shape[0]}, 1, 1, 1) to match {xf.name}")
                labels = y[...].reshape(-1)
        except OSError as e:
            raise ManifestError(f"{root}: cannot read PatchCamelyon files: {e}") from None
        n = len(labels)
        cols["id"] += [f"{split}-{i:06d}" for i in range(n)]
        cols["split"] += [split] * n
        cols["path"] += [xf.name] * n
        cols["array"] += ["x"] * n
        cols["index"] += [str(i) for i in range(n)]
        cols["label"] += [str(v) for v in labels.tolist()]
        sources[xf.name] = f"size={xf.stat().st_size}"
        sources[yf.name] = sha256_file(yf)
    classes = tuple(SPEC["label_names"])
    return build_manifest("pcam", cols, root=root, task=SPEC["task"], num_classes=len(classes),
                          classes=classes, sources=sources)


LAYOUT = Layout("pcam", detect=looks_like_pcam, build=read_pcam, task=SPEC["task"])
