"""NIH ChestX-ray14: ``Data_Entry_2017.csv``, the official split lists and ``images*/``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from featstore.data.fractions import split_by_group
from featstore.data.layouts._layout import Layout
from featstore.data.manifest import Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

SPEC = load_spec("nih")
FILES = SPEC["layout"]
NIH_FINDINGS: tuple[str, ...] = tuple(SPEC["label_names"])
NIH_ENTRY: str = FILES["entry"]


def looks_like_nih(path: Path) -> bool:
    """A folder holding ``Data_Entry_2017.csv``."""
    return (path / NIH_ENTRY).is_file()


def read_nih(root: str | Path, *, val_fraction: float = SPEC["split_rule"]["val"],
             seed: int = SPEC["split_rule"]["seed"]) -> Manifest:
    """Build a manifest over NIH ChestX-ray14 as released: 14 findings, multilabel.

    Reads ``Data_Entry_2017.csv`` (Image Index, Finding Labels '|'-separated, Patient ID),
    the official ``train_val_list.txt`` / ``test_list.txt``, and finds the images under
    ``images*/`` (any depth) by name, without opening them. "No Finding" is all zeros. A
    val split of ``val_fraction`` of the train_val patients (at least one) is drawn with
    ``seed`` by :func:`~featstore.data.fractions.split_by_group`, so no patient straddles
    train and val.

    Raises
    ------
    ManifestError
        A missing file or column, an unknown finding, an image listed without a file, a file
        without a row, or an image in neither list, naming the row or file.
    """
    root = Path(root)
    entry = root / NIH_ENTRY
    lists = {"train": root / FILES["train_list"], "test": root / FILES["test_list"]}
    for f in (entry, *lists.values()):
        if not f.is_file():
            raise ManifestError(f"{root}: NIH ChestX-ray14 file missing: {f.name}")
    with open(entry, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        need = FILES["columns"]
        missing = [c for c in need if c not in header]
        if missing:
            raise ManifestError(f"{entry.name}: missing columns {missing} (header: {header})")
        pos = [header.index(c) for c in need]
        rows = [(line, [r[i].strip() for i in pos]) for line, r in enumerate(reader, start=2)
                if any(x.strip() for x in r)]
    split_of: dict[str, str] = {}
    for split, path in lists.items():
        for image in path.read_text().split():
            split_of[image] = split
    on_disk = {p.name: p.relative_to(root).as_posix()
               for d in sorted(root.glob(FILES["images"])) if d.is_dir()
               for p in d.rglob("*.png")}
    index = {f: k for k, f in enumerate(NIH_FINDINGS)}
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "group": []}
    labels = np.zeros((len(rows), len(NIH_FINDINGS)), dtype=np.int64)
    for r, (line, (image, findings, patient)) in enumerate(rows):
        if image not in on_disk:
            raise ManifestError(f"{entry.name}: line {line} (id {image!r}): no image file "
                                f"under {FILES['images']}/")
        if image not in split_of:
            raise ManifestError(f"{entry.name}: line {line} (id {image!r}): in neither "
                                f"{lists['train'].name} nor {lists['test'].name}")
        for finding in findings.split("|"):
            if finding == FILES["no_finding"]:
                continue
            if finding not in index:
                raise ManifestError(f"{entry.name}: line {line} (id {image!r}): unknown "
                                    f"finding {finding!r}")
            labels[r, index[finding]] = 1
        cols["id"].append(image)
        cols["split"].append(split_of[image])
        cols["path"].append(on_disk[image])
        cols["group"].append(f"patient-{patient}")
    unlabelled = sorted(set(on_disk) - set(cols["id"]))
    if unlabelled:
        raise ManifestError(f"{root}: {len(unlabelled)} images have no row in {entry.name}, "
                            f"e.g. {unlabelled[0]}")
    split = np.array(cols["split"], dtype=object)
    train = split == "train"
    split[train] = split_by_group(labels[train], np.array(cols["group"])[train],
                                  val=val_fraction, test=0.0, seed=seed)
    cols["split"] = split.tolist()
    for k, finding in enumerate(NIH_FINDINGS):
        cols[f"label_{finding}"] = labels[:, k].astype(str).tolist()
    return build_manifest("nih-chestxray14", cols, root=root, task=SPEC["task"],
                          row_label="line", first_row=2)


LAYOUT = Layout("nih", detect=looks_like_nih, build=read_nih, task=SPEC["task"])
