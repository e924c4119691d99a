"""MedMNIST v2: one ``.npz`` with ``{train,val,test}_images`` and ``_labels``; the pixels stay
in the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore._hashing import sha256_file
from featstore.data.layouts._layout import Layout
from featstore.data.manifest import SPLITS, Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

# dataset name -> (task, number of classes or labels); size variants share the entry
MEDMNIST_TASKS: dict[str, tuple[str, int]] = {
    name: (entry["task"], entry["classes"])
    for name, entry in load_spec("medmnist")["datasets"].items()
}


def looks_like_medmnist(path: Path) -> bool:
    """A file named ``*.npz``."""
    return path.suffix.lower() == ".npz" and not path.is_dir()


def medmnist_task(name: str) -> tuple[str, int] | None:
    """(task, classes) of a MedMNIST file by its name (``retinamnist_224`` -> ordinal, 5)."""
    stem = name.lower()
    for key, value in MEDMNIST_TASKS.items():
        if stem.startswith(key):
            return value
    return None


def read_medmnist(path: str | Path, *, task: str | None = None) -> Manifest:
    """Build a manifest over a MedMNIST v2 ``.npz``; the pixels stay in the file.

    Labels may be shaped (N,), (N, 1) or (N, K) (multilabel). The file's sha256 is part of
    the manifest hash, so a changed file is a different dataset.

    Raises
    ------
    ManifestError
        An unreadable file, an images array without its labels (or the reverse), shapes that
        are not images, or label arrays of different widths, naming the file and array.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile/pickle errors have many types
        raise ManifestError(f"{path}: not a readable .npz file ({e})") from None
    with npz:
        keys = set(npz.files)
        cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "array": [], "index": []}
        label_blocks = []
        for split in SPLITS:
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in keys and lk not in keys:
                continue
            if ik not in keys or lk not in keys:
                raise ManifestError(f"{path.name}: has {ik if ik in keys else lk} but not "
                                    f"{lk if ik in keys else ik}")
            labels = _npz_labels(npz, lk, path)
            n_img = _npz_rows(ik, path)
            if labels.ndim == 1:
                labels = labels[:, None]
            if labels.ndim != 2 or labels.shape[0] != n_img:
                raise ManifestError(
                    f"{path.name}: {lk} has shape {npz[lk].shape}, expected ({n_img},), "
                    f"({n_img}, 1) or ({n_img}, K)"
                )
            label_blocks.append(labels)
            width = len(str(max(n_img - 1, 0)))
            for i in range(n_img):
                cols["id"].append(f"{split}-{i:0{max(width, 5)}d}")
                cols["split"].append(split)
                cols["path"].append(path.name)
                cols["array"].append(ik)
                cols["index"].append(str(i))
        if not label_blocks:
            raise ManifestError(
                f"{path.name}: no train/val/test_images arrays (has: {', '.join(sorted(keys))})"
            )
    widths = {b.shape[1] for b in label_blocks}
    if len(widths) != 1:
        raise ManifestError(f"{path.name}: label arrays differ in width across splits: {widths}")
    labels = np.concatenate(label_blocks)
    known = medmnist_task(path.stem)
    num_classes = None
    if labels.shape[1] == 1:
        cols["label"] = [str(v) for v in labels[:, 0].tolist()]
        if known and known[0] != "multilabel":
            task = task or known[0]
            num_classes = known[1]
    else:
        for k in range(labels.shape[1]):
            cols[f"label_{k}"] = [str(v) for v in labels[:, k].tolist()]
        task = "multilabel"
    return build_manifest(
        path.stem, cols, root=path.parent, task=task, num_classes=num_classes,
        sources={path.name: sha256_file(path)},
    )


def _npz_labels(npz, key: str, path: Path) -> np.ndarray:
    """One labels array, read whole (N numbers), or one error naming the file and array."""
    from featstore.data.arrays import DAMAGED_NPZ

    try:
        return npz[key]
    except (*DAMAGED_NPZ, ValueError) as e:
        raise ManifestError(f"{path.name}: {key} cannot be read ({e})") from None


def _npz_rows(key: str, path: Path) -> int:
    """Number of images in one npz array, checked for an image shape and pixel type. Reads
    the array's header only: its pixels (hundreds of MB for a large MedMNIST+ file) are read
    where rows are embedded (``manifest validate --check-files`` reads them all)."""
    from featstore.data.arrays import ArrayFiles

    try:
        shape, dtype = ArrayFiles().header(path, key)
    except (OSError, KeyError, ValueError) as e:  # (a damaged member: ValueError)
        raise ManifestError(f"{path.name}: {key} cannot be read ({e})") from None
    if dtype.hasobject:  # an object array needs pickle, which is never allowed
        raise ManifestError(f"{path.name}: {key} cannot be read without pickle (it holds "
                            "Python objects); store the images as uint8")
    if dtype not in (np.uint8, np.uint16):
        raise ManifestError(f"{path.name}: {key} holds {dtype} pixels; expected uint8 "
                            "(or uint16) images, as MedMNIST ships them")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
        raise ManifestError(
            f"{path.name}: {key} has shape {shape}, expected (N, H, W) or (N, H, W, 1|3)"
        )
    return int(shape[0])


LAYOUT = Layout("medmnist", detect=looks_like_medmnist, build=read_medmnist)
