"""Readers that turn files on disk into a :class:`Manifest`.

Supported inputs (``--data`` on every verb), a path or ``KIND:PATH`` with a layout name of
:data:`BUILDERS` (``pcam:/data/pcam``, ``nih:/data/nih``, ``aptos:/data/aptos``, ...):

- a manifest table (``.csv``, or ``.parquet`` when pandas is installed), paths relative to
  the table's folder unless ``root`` is given;
- a MedMNIST v2 ``.npz`` (``{train,val,test}_images`` and ``_labels``);
- an image-folder tree ``<root>/<split>/<class>/*.{png,jpg,jpeg}``;
- a PatchCamelyon release folder (``camelyonpatch_level_2_split_*_{x,y}.h5``);
- an NIH ChestX-ray14 release folder (``Data_Entry_2017.csv``, ``images*/``, split lists);
- an EyePACS (``trainLabels.csv``) or APTOS 2019 (``train.csv``) folder;
- the paediatric pneumonia release (a folder holding ``chest_xray/``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from featstore._hashing import sha256_file
from featstore.data.manifest import SPLITS, Manifest, build_manifest
from featstore.errors import ManifestError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# MedMNIST v2 datasets: (task, number of classes or labels). Size variants share the entry.
MEDMNIST_TASKS: dict[str, tuple[str, int]] = {
    "pathmnist": ("multiclass", 9),
    "chestmnist": ("multilabel", 14),
    "dermamnist": ("multiclass", 7),
    "octmnist": ("multiclass", 4),
    "pneumoniamnist": ("binary", 2),
    "retinamnist": ("ordinal", 5),
    "breastmnist": ("binary", 2),
    "bloodmnist": ("multiclass", 8),
    "tissuemnist": ("multiclass", 8),
    "organamnist": ("multiclass", 11),
    "organcmnist": ("multiclass", 11),
    "organsmnist": ("multiclass", 11),
}


def load_dataset(data: str | Path, *, root: str | Path | None = None,
                 task: str | None = None) -> Manifest:
    """Turn a ``--data`` value into a validated :class:`Manifest`.

    The same value always gives the same manifest (and the same store group).

    Raises
    ------
    ManifestError
        The path does not exist, has an unknown kind, or its content is invalid.
    """
    kind, sep, rest = str(data).partition(":")
    if sep and kind in BUILDERS:  # a named layout: pcam:/data/pcam, nih:/data/nih, ...
        if not Path(rest).exists():
            raise ManifestError(f"--data {str(data)!r}: no such file or folder: {rest}")
        return BUILDERS[kind](Path(rest))
    p = Path(data)
    if not p.exists():
        raise ManifestError(f"--data {str(data)!r}: no such file or folder")
    if p.is_dir():
        if any(p.glob(PCAM_PATTERN.format(split="*", part="*"))):
            return read_pcam(p)
        if (p / NIH_ENTRY).is_file():
            return read_nih(p)
        if (p / "chest_xray").is_dir():
            return read_pneumonia(p)
        for kind, layout in DR_LAYOUTS.items():
            if (p / layout[0]).is_file():
                return read_diabetic_retinopathy(p, kind)
        return read_image_folder(p, task=task)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return read_medmnist(p, task=task)
    if suffix in (".csv", ".parquet"):
        return read_manifest_table(p, root=root, task=task)
    raise ManifestError(
        f"--data {str(data)!r}: unknown kind; expected a .csv/.parquet manifest, a MedMNIST "
        ".npz or an image-folder root"
    )


def read_manifest_table(path: str | Path, *, root: str | Path | None = None,
                        task: str | None = None) -> Manifest:
    """Read a manifest table (CSV, or Parquet with pandas) and validate it.

    Errors name the CSV line (header = line 1) of the offending row.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise ManifestError(
                f"{path}: reading Parquet needs pandas and pyarrow "
                "(pip install 'featstore[parquet]')"
            ) from None
        frame = pd.read_parquet(path)
        columns = {str(c): ["" if v is None else str(v) for v in frame[c].tolist()]
                   for c in frame.columns}
        row_label, first_row = "row", 0
    else:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise ManifestError(f"{path}: empty file, expected a header line")
                header = [h.strip() for h in header]
                rows = list(reader)
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not a UTF-8 CSV file ({e.reason})") from None
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise ManifestError(
                    f"{path.name}: line {line}: {len(row)} fields, header has {len(header)}"
                )
        columns = {h: [r[j] for r in rows] for j, h in enumerate(header)}
        row_label, first_row = "line", 2
    return build_manifest(
        path.stem, columns, root=root if root is not None else path.parent, task=task,
        row_label=row_label, first_row=first_row,
    )


def read_image_folder(root: str | Path, *, task: str | None = None) -> Manifest:
    """Build a manifest from ``<root>/<split>/<class>/*.{png,jpg,jpeg}``.

    Class indices follow the sorted class-folder names across all splits. Ids are the
    paths relative to ``root`` (``train/NORMAL/IM-0001.jpeg``).
    """
    root = Path(root)
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not split_dirs:
        raise ManifestError(f"{root}: no split folders (expected {', '.join(SPLITS)})")
    for d in split_dirs:
        if d.name not in SPLITS:
            raise ManifestError(
                f"{root}: folder {d.name!r} is not a split (expected {', '.join(SPLITS)})"
            )
    classes = sorted({c.name for d in split_dirs for c in d.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        names = ", ".join(d.name for d in split_dirs)
        raise ManifestError(f"{root}: no class folders under {names}")
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "label": []}
    for d in split_dirs:
        for k, cls in enumerate(classes):
            cdir = d / cls
            if not cdir.is_dir():
                continue
            for f in sorted(cdir.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                    continue
                rel = f.relative_to(root).as_posix()
                cols["id"].append(rel)
                cols["split"].append(d.name)
                cols["path"].append(rel)
                cols["label"].append(str(k))
    if not cols["id"]:
        raise ManifestError(f"{root}: no .png/.jpg/.jpeg images under <split>/<class>/")
    return build_manifest(root.resolve().name, cols, root=root, task=task,
                          num_classes=len(classes), classes=classes)


PCAM_PATTERN = "camelyonpatch_level_2_split_{split}_{part}.h5"
PCAM_SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))


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
                if x.ndim != 4 or x.shape[1:] != (96, 96, 3) or x.dtype != np.uint8:
                    raise ManifestError(f"{xf.name}: x has shape {x.shape} {x.dtype}, "
                                        "expected (N, 96, 96, 3) uint8")
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
    return build_manifest("pcam", cols, root=root, task="binary", num_classes=2,
                          classes=("normal", "tumour"), sources=sources)


NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                "Pleural_Thickening", "Hernia")
NIH_ENTRY = "Data_Entry_2017.csv"


def read_nih(root: str | Path, *, val_fraction: float = 0.1, seed: int = 0) -> Manifest:
    """Build a manifest over NIH ChestX-ray14 as released: 14 findings, multilabel.

    Reads ``Data_Entry_2017.csv`` (Image Index, Finding Labels '|'-separated, Patient ID),
    the official ``train_val_list.txt`` / ``test_list.txt``, and finds the images under
    ``images*/`` (any depth) by name, without opening them. "No Finding" is all zeros. A
    val split of ``val_fraction`` of the train_val patients is drawn with ``seed``, so no
    patient straddles train and val.

    Raises
    ------
    ManifestError
        A missing file or column, an unknown finding, an image listed without a file, a file
        without a row, or an image in neither list, naming the row or file.
    """
    root = Path(root)
    entry = root / NIH_ENTRY
    lists = {name: root / name for name in ("train_val_list.txt", "test_list.txt")}
    for f in (entry, *lists.values()):
        if not f.is_file():
            raise ManifestError(f"{root}: NIH ChestX-ray14 file missing: {f.name}")
    with open(entry, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        need = ("Image Index", "Finding Labels", "Patient ID")
        missing = [c for c in need if c not in header]
        if missing:
            raise ManifestError(f"{entry.name}: missing columns {missing} (header: {header})")
        pos = [header.index(c) for c in need]
        rows = [(line, [r[i].strip() for i in pos]) for line, r in enumerate(reader, start=2)
                if any(x.strip() for x in r)]
    split_of: dict[str, str] = {}
    for name, path in lists.items():
        for image in path.read_text().split():
            split_of[image] = "test" if name == "test_list.txt" else "train"
    on_disk = {p.name: p.relative_to(root).as_posix()
               for d in sorted(root.glob("images*")) if d.is_dir() for p in d.rglob("*.png")}
    index = {f: k for k, f in enumerate(NIH_FINDINGS)}
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "group": []}
    labels = np.zeros((len(rows), len(NIH_FINDINGS)), dtype=np.int64)
    for r, (line, (image, findings, patient)) in enumerate(rows):
        if image not in on_disk:
            raise ManifestError(f"{entry.name}: line {line} (id {image!r}): no image file "
                                "under images*/")
        if image not in split_of:
            raise ManifestError(f"{entry.name}: line {line} (id {image!r}): in neither "
                                "train_val_list.txt nor test_list.txt")
        for finding in findings.split("|"):
            if finding == "No Finding":
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
    # patient-grouped val split carved from train_val, reproducible from the seed
    patients = sorted({g for g, s in zip(cols["group"], cols["split"], strict=True)
                       if s == "train"})
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * len(patients))) if patients else 0
    val_patients = set(rng.choice(patients, size=n_val, replace=False).tolist()) if n_val else set()
    cols["split"] = ["val" if s == "train" and g in val_patients else s
                     for s, g in zip(cols["split"], cols["group"], strict=True)]
    for k, finding in enumerate(NIH_FINDINGS):
        cols[f"label_{finding}"] = labels[:, k].astype(str).tolist()
    return build_manifest("nih-chestxray14", cols, root=root, task="multilabel",
                          row_label="line", first_row=2)


DR_LAYOUTS = {
    # kind: (label file, id column, grade column, image suffix, patient from id,
    #        the competition's unlabelled test folder, its later-released labels)
    "eyepacs": ("trainLabels.csv", "image", "level", ".jpeg", lambda i: i.split("_")[0],
                "test", "retinopathy_solution.csv"),
    "aptos": ("train.csv", "id_code", "diagnosis", ".png", lambda i: i, "test_images", None),
}
DR_SPLIT = {"val": 0.1, "test": 0.1, "seed": 0}


def _read_grades(path: Path, id_col: str, grade_col: str) -> list[tuple[int, str, str]]:
    """(line, image id, grade text) of a DR label CSV whose first columns are id, grade."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != [id_col, grade_col]:
            raise ManifestError(f"{path.name}: header {header}, expected "
                                f"[{id_col!r}, {grade_col!r}]")
        rows = []
        for line, r in enumerate(reader, start=2):
            if not r or not r[0].strip():
                continue
            if len(r) < 2:
                raise ManifestError(f"{path.name}: line {line}: {len(r)} field, expected "
                                    f"{id_col},{grade_col}")
            rows.append((line, r[0].strip(), r[1].strip()))
    return rows


def read_diabetic_retinopathy(root: str | Path, kind: str) -> Manifest:
    """EyePACS (Kaggle DR detection) or APTOS 2019: a CSV of image ids and grades 0-4.

    Images are found by name anywhere under ``root`` (``<image>.jpeg`` / ``<id_code>.png``)
    without being opened. EyePACS eyes of one patient (``10_left``, ``10_right``) share a
    group. The competitions' unlabelled test folders (``test/``, ``test_images/``) are left
    out, unless EyePACS's later-released ``retinopathy_solution.csv`` is present: then those
    images are the official test split and val (10%) is drawn from train. Otherwise val and
    test (10% each) are drawn by patient, stratified by the patient's worse grade, with seed
    0 (recorded in the manifest name).

    Raises
    ------
    ManifestError
        Missing label file, wrong header, a grade outside 0-4, a labelled id without an
        image, or an image without a label, naming the file or row.
    """
    from featstore.data.fractions import split_by_group

    root = Path(root)
    label_file, id_col, grade_col, suffix, patient, test_dir, solution = DR_LAYOUTS[kind]
    path = root / label_file
    if not path.is_file():
        raise ManifestError(f"{root}: {kind} label file missing: {label_file}")
    labelled = {label_file: _read_grades(path, id_col, grade_col)}
    if solution and (root / solution).is_file():
        labelled[solution] = _read_grades(root / solution, id_col, grade_col)
    on_disk, held_out = {}, 0
    for p in root.rglob(f"*{suffix}"):
        rel = p.relative_to(root)
        if rel.parts[0] == test_dir and solution not in labelled:
            held_out += 1
            continue
        on_disk[p.stem] = rel.as_posix()
    cols: dict[str, list[str]] = {"id": [], "path": [], "label": [], "group": [], "split": []}
    for source, rows in labelled.items():
        for line, image, grade in rows:
            if image not in on_disk:
                raise ManifestError(f"{source}: line {line} (id {image!r}): no image "
                                    f"{image}{suffix} under {root}")
            if not grade.isdigit() or int(grade) > 4:
                raise ManifestError(f"{source}: line {line} (id {image!r}): grade "
                                    f"{grade!r} is not 0-4")
            cols["id"].append(image)
            cols["path"].append(on_disk[image])
            cols["label"].append(grade)
            cols["group"].append(f"patient-{patient(image)}")
            cols["split"].append("test" if source == solution else "")
    unlabelled = sorted(set(on_disk) - set(cols["id"]))
    if unlabelled:
        raise ManifestError(f"{root}: {len(unlabelled)} images have no row in "
                            f"{' or '.join(labelled)}, e.g. {unlabelled[0]}{suffix}")
    grades = np.array([int(g) for g in cols["label"]])
    todo = np.array([s == "" for s in cols["split"]])
    drawn = split_by_group(grades[todo], np.array(cols["group"])[todo], val=DR_SPLIT["val"],
                           test=0.0 if solution in labelled else DR_SPLIT["test"],
                           seed=DR_SPLIT["seed"])
    split = np.array(cols["split"], dtype=object)
    split[todo] = drawn
    cols["split"] = split.tolist()
    notes = []
    if held_out:
        notes.append(f"{held_out} unlabelled images under {test_dir}/ (the competition's "
                     "test set) left out")
    if solution in labelled:
        notes.append(f"test: the {len(labelled[solution])} images of {solution}; val drawn "
                     f"from {label_file}")
    one_file = {"row_label": "line", "first_row": 2} if len(labelled) == 1 else {}
    return build_manifest(f"{kind}-split{DR_SPLIT['seed']}", cols, root=root, task="ordinal",
                          num_classes=5, notes=notes, **one_file)


PNEUMONIA_CLASSES = ("NORMAL", "PNEUMONIA")
# person1_bacteria_1 / person1_virus_6 -> person1; IM-0115-0001 -> IM-0115;
# NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427
PNEUMONIA_PATIENT = re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$|^((?:NORMAL2-)?IM-\d+)-\d+$")


def pneumonia_patient(file_name: str) -> str | None:
    """Patient id of a Kermany et al. file name, or None when the name has neither pattern."""
    m = PNEUMONIA_PATIENT.match(Path(file_name).stem)
    return None if m is None else (m[1] or m[2])


def read_pneumonia(root: str | Path, *, val_fraction: float | None = None,
                   seed: int = 0) -> Manifest:
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
    from featstore.data.fractions import split_by_group

    root = Path(root)
    base = root / "chest_xray" if (root / "chest_xray").is_dir() else root
    cols: dict[str, list[str]] = {"id": [], "split": [], "path": [], "label": [], "group": []}
    for split in ("train", "val", "test"):
        for k, cls in enumerate(PNEUMONIA_CLASSES):
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
    patients = {}
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
    return build_manifest(name, cols, root=root, task="binary", num_classes=2,
                          classes=("normal", "pneumonia"), notes=notes)


BUILDERS = {
    "eyepacs": lambda root: read_diabetic_retinopathy(root, "eyepacs"),
    "aptos": lambda root: read_diabetic_retinopathy(root, "aptos"),
    "pcam": lambda root: read_pcam(root),
    "nih": lambda root: read_nih(root),
    "pneumonia": lambda root: read_pneumonia(root),
    "image-folder": lambda root: read_image_folder(root),
    "medmnist": lambda root: read_medmnist(root),
}


def write_manifest_csv(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest`` as a canonical CSV whose paths are relative to the CSV's folder.

    Reading the CSV back gives the same rows, labels and groups.
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    here = path.parent.resolve()
    multilabel = manifest.task == "multilabel"
    label_cols = [f"label_{n}" for n in manifest.label_names] if multilabel else ["label"]
    header = ["id", "split", "path", *label_cols]
    if manifest.array_keys is not None:
        header += ["array", "index"]
    if manifest.group is not None:
        header.append("group")
    rel = {p: Path(os.path.relpath(Path(manifest.root).resolve() / p, here)).as_posix()
           for p in np.unique(manifest.paths)}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(manifest)):
            row = [manifest.ids[i], manifest.split[i], rel[manifest.paths[i]],
                   *manifest.labels[i].tolist()]
            if manifest.array_keys is not None:
                row += [manifest.array_keys[i], int(manifest.index[i])]
            if manifest.group is not None:
                row.append(manifest.group[i])
            w.writerow(row)
    return path


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
        for split, prefix in (("train", "train"), ("val", "val"), ("test", "test")):
            ik, lk = f"{prefix}_images", f"{prefix}_labels"
            if ik not in keys and lk not in keys:
                continue
            if ik not in keys or lk not in keys:
                raise ManifestError(f"{path.name}: has {ik if ik in keys else lk} but not "
                                    f"{lk if ik in keys else ik}")
            labels = npz[lk]
            n_img = _npz_rows(npz, ik, path)
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


def _npz_rows(npz, key: str, path: Path) -> int:
    """Number of images in one npz array, checked for an image shape."""
    arr = npz[key]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
        raise ManifestError(
            f"{path.name}: {key} has shape {arr.shape}, expected (N, H, W) or (N, H, W, 1|3)"
        )
    return int(arr.shape[0])
