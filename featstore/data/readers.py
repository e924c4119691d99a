"""``--data`` to :class:`Manifest`: a path (its layout detected) or ``KIND:PATH`` with a
layout name of :data:`BUILDERS` (``pcam:/data/pcam``, ``nih:/data/nih``, ...).

Supported inputs:

- a manifest table (``.csv``, or ``.parquet`` when pandas is installed), paths relative to
  the table's folder unless ``root`` is given;
- a MedMNIST v2 ``.npz`` (``{train,val,test}_images`` and ``_labels``);
- an image-folder tree ``<root>/<split>/<class>/*.{png,jpg,jpeg}``;
- a PatchCamelyon release folder (``camelyonpatch_level_2_split_*_{x,y}.h5``);
- an NIH ChestX-ray14 release folder (``Data_Entry_2017.csv``, ``images*/``, split lists);
- an EyePACS (``trainLabels.csv``) or APTOS 2019 (``train.csv``) folder;
- the paediatric pneumonia release (a folder holding ``chest_xray/``).

Each layout lives in its own module under :mod:`featstore.data.layouts`; the readers are
re-exported here under the names the rest of featstore imports.
"""

from __future__ import annotations

from pathlib import Path

from featstore.data.layouts import BUILDERS, LAYOUTS, detect_layout
from featstore.data.layouts.image_folder import read_image_folder
from featstore.data.layouts.medmnist import read_medmnist
from featstore.data.layouts.nih import NIH_FINDINGS, read_nih
from featstore.data.layouts.pcam import PCAM_PATTERN, PCAM_SPLITS, read_pcam
from featstore.data.layouts.pneumonia import pneumonia_patient, read_pneumonia
from featstore.data.layouts.retinopathy import read_diabetic_retinopathy
from featstore.data.layouts.table import TABLE_SUFFIXES, read_manifest_table, write_manifest_csv
from featstore.data.manifest import Manifest
from featstore.errors import ManifestError

__all__ = [
    "BUILDERS",
    "NIH_FINDINGS",
    "PCAM_PATTERN",
    "PCAM_SPLITS",
    "build_release_manifest",
    "load_dataset",
    "pneumonia_patient",
    "read_diabetic_retinopathy",
    "read_image_folder",
    "read_manifest_table",
    "read_medmnist",
    "read_nih",
    "read_pcam",
    "read_pneumonia",
    "write_manifest_csv",
]


def load_dataset(data: str | Path, *, root: str | Path | None = None,
                 task: str | None = None) -> Manifest:
    """Turn a ``--data`` value into a validated :class:`Manifest`.

    ``root`` is the folder a manifest table's paths are relative to; ``task`` applies to
    layouts whose files do not fix it (tables, image folders, MedMNIST). The same value always
    gives the same manifest (and the same store group).

    Raises
    ------
    ManifestError
        The path does not exist, has an unknown kind, or its content is invalid.
    """
    kind, sep, rest = str(data).partition(":")
    if sep and kind in LAYOUTS:  # a named layout: pcam:/data/pcam, nih:/data/nih, ...
        if not Path(rest).exists():
            raise ManifestError(f"--data {str(data)!r}: no such file or folder: {rest}")
        return LAYOUTS[kind].read(Path(rest), task=task)
    p = Path(data)
    if not p.exists():
        raise ManifestError(f"--data {str(data)!r}: no such file or folder")
    layout = detect_layout(p)
    if layout is not None:
        return layout.read(p, task=task)
    if p.suffix.lower() in TABLE_SUFFIXES:
        return read_manifest_table(p, root=root, task=task)
    raise ManifestError(
        f"--data {str(data)!r}: unknown kind; expected a .csv/.parquet manifest, a MedMNIST "
        ".npz or an image-folder root"
    )


def build_release_manifest(kind: str, root: str | Path, output: str | Path, *,
                           val_fraction: float | None = None,
                           seed: int = 0) -> tuple[Manifest, dict]:
    """Read a raw release of layout ``kind`` and write its canonical manifest CSV.

    ``val_fraction`` (pneumonia only) moves that share of the train patients into val,
    drawn with ``seed``. Returns the manifest and the layout's spec (source, licence,
    metric, split rule).

    Raises
    ------
    ManifestError
        An unknown kind, a missing ``root``, ``val_fraction`` for a layout with its own split
        rule or outside (0, 1), or an invalid release.
    """
    from featstore.data.specs import load_spec

    if kind not in BUILDERS:
        raise ManifestError(f"unknown manifest kind {kind!r} (expected one of "
                            f"{', '.join(BUILDERS)})")
    root = Path(root)
    if not root.exists():
        raise ManifestError(f"{root}: no such file or folder")
    if val_fraction is not None and kind != "pneumonia":
        raise ManifestError(f"--val-fraction applies to pneumonia only; {kind} has its own "
                            "split rule (see its spec: featstore/data/specs/)")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ManifestError(f"--val-fraction {val_fraction}: expected a share in (0, 1)")
    if val_fraction is not None:
        m = read_pneumonia(root, val_fraction=val_fraction, seed=seed)
    else:
        m = BUILDERS[kind](root)
    write_manifest_csv(m, output)
    return m, load_spec(kind)
