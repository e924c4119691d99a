"""Paediatric pneumonia (Kermany et al.): ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``,
with each image's patient parsed from its file name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from featstore.data.fractions import split_by_group
from featstore.data.layouts._layout import Layout
from featstore.data.layouts.image_folder import IMAGE_SUFFIXES
from featstore.data.manifest import SPLITS, Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

SPEC = load_spec("pneumonia")
FOLDER: str = SPEC["layout"]["folder"]
CLASS_FOLDERS: tuple[str, ...] = tuple(SPEC["layout"]["class_folders"])
PATIENT_ID = re.compile(SPEC["layout"]["patient_id"])


def looks_like_pneumonia(path: Path) -> bool:
    """A folder holding ``chest_xray/``."""
    return (path / FOLDER).is_dir()


def pneumonia_patient(file_name: str) -> str | None:
    """Patient id of a Kermany et al. file name, or None when the name has neither pattern."""
    m = PATIENT_ID.match(Path(file_name).stem)
    return None if m is None else next((g for g in m.groups() if g), None)


def read_pneumonia(root: str | Path, *, val_fraction: float | None = None,
                   seed: int = SPEC["split_rule"]["seed"]) -> Manifest:
    """Paediatric pneumonia (Kermany et al.): ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``.

    ``root`` is the folder holding ``chest_xray/`` or ``chest_xray/`` itself. Binary (AUC),
    official splits. Each image's patient is parsed from its file name
    (``person1_bacteria_1.jpeg`` -> ``person1``, ``IM-0115-0001.jpeg`` -> ``IM-0115``); groups
    are scoped by official split, because the release reuses patient numbers across its
    splits (kept as released and reported in :attr:`Manifest.notes`). The official val has
    16 images: ``val_fraction`` moves that share of the train patients, stratified by class
    and whole patients at a time, into val (seed recorded in the manifest name).

    Raises
    ------
    ManifestError
        A missing split or class folder, a file that is not a .jpeg/.jpg/.png image, or a
        file name with no patient id, naming the file.
    """
    root = Path(root)
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "label": [], "group": []}
    for split in SPLITS:
        for k, cls in enumerate(CLASS_FOLDERS):
            folder = base / split / cls
            if not folder.is_dir():
                raise ManifestError(f"{root}: pneumonia folder missing: "
                                    f"{folder.relative_to(root).as_posix()}")
            for f in sorted(folder.iterdir()):
                if f.name.startswith("."):  # .DS_Store ships in the release
                    continue
                rel = f.relative_to(root).as_posix()
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ManifestError(f"{root}: unexpected file {rel} (expected "
                                        f"{'/'.join(IMAGE_SUFFIXES)} images)")
                patient = pneumonia_patient(f.name)
                if patient is None:
                    raise ManifestError(
                        f"{root}: {rel}: no patient id in the file name (expected "
                        "person<N>_bacteria|virus_<K> or [NORMAL2-]IM-<N>-<K>)")
                cols["id"].append(f"{split}/{cls}/{f.stem}")
                cols["split"].append(split)
                cols["path"].append(rel)
                cols["label"].append(str(k))
                cols["group"].append(f"{split}/{patient}")
    notes = []
    patients: dict[str, set[str]] = {}
    for g in cols["group"]:
        split, _, patient = g.partition("/")
        patients.setdefault(patient, set()).add(split)
    shared = sorted(p for p, s in patients.items() if len(s) > 1)
    if shared:
        notes.append(f"{len(shared)} patient ids appear in more than one official split "
                     f"(e.g. {shared[0]}); kept as released, grouped within each split")
    name = "pneumonia"
    if val_fraction:
        train = np.array([s == "train" for s in cols["split"]])
        carved = split_by_group(np.array(cols["label"], dtype=np.int64)[train],
                                np.array(cols["group"])[train], val=val_fraction, test=0.0,
                                seed=seed)
        split_col = np.array(cols["split"], dtype=object)
        split_col[train] = carved
        # the official val's patients keep their own groups; carved ones move with theirs
        cols["split"] = split_col.tolist()
        cols["group"] = [f"val/{g.partition('/')[2]}" if s == "val" and g.startswith("train/")
                         else g for g, s in zip(cols["group"], cols["split"], strict=True)]
        name = f"pneumonia-val{val_fraction:g}-seed{seed}"
        notes.append(f"val: the release's {sum(1 for i in cols['id'] if i.startswith('val/'))}"
                     f" images plus {val_fraction:g} of the train patients (seed {seed})")
    classes = tuple(SPEC["label_names"])
    return build_manifest(name, cols, root=root, task=SPEC["task"], num_classes=len(classes),
                          classes=classes, notes=notes)


LAYOUT = Layout("pneumonia", detect=looks_like_pneumonia, build=read_pneumonia,
                task=SPEC["task"])
