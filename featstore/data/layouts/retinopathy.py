"""Diabetic-retinopathy grading: EyePACS (Kaggle DR detection) and APTOS 2019, a label CSV of
image ids and grades 0-4 beside the images."""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featstore.data.fractions import split_by_group
from featstore.data.layouts._layout import Layout
from featstore.data.manifest import Manifest, build_manifest
from featstore.data.specs import load_spec
from featstore.errors import ManifestError

SPECS = {kind: load_spec(kind) for kind in ("eyepacs", "aptos")}


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


def _patient_of(layout: dict) -> Callable[[str], str]:
    """Image id -> patient id, by the spec's ``patient_id`` pattern (absent: the id itself)."""
    if "patient_id" not in layout:
        return lambda image: image
    pattern = re.compile(layout["patient_id"])
    return lambda image: pattern.match(image)[0]


def read_diabetic_retinopathy(root: str | Path, kind: str) -> Manifest:
    """EyePACS (Kaggle DR detection) or APTOS 2019: a CSV of image ids and grades 0-4.

    Images are found by name anywhere under ``root`` (``<image>.jpeg`` / ``<id_code>.png``)
    without being opened. EyePACS eyes of one patient (``10_left``, ``10_right``) share a
    group. The competitions' unlabelled test folders (``test/``, ``test_images/``) are left
    out, unless EyePACS's later-released ``retinopathy_solution.csv`` is present: then those
    images are the official test split and val (10%) is drawn from train. Otherwise val and
    test (10% each) are drawn by patient, stratified by the patient's worse grade, with seed
    0 (recorded in the manifest name). Names, columns, shares and seed: the kind's spec.

    Raises
    ------
    ManifestError
        Missing label file, wrong header, a grade outside 0-4, a labelled id without an
        image, or an image without a label, naming the file or row.
    """
    root = Path(root)
    spec = SPECS[kind]
    layout, rule = spec["layout"], spec["split_rule"]
    label_file, (id_col, grade_col), suffix = layout["labels"], layout["columns"], layout["suffix"]
    test_dir, solution = layout["test_folder"], layout.get("test_labels")
    patient = _patient_of(layout)
    grades_known = len(spec["label_names"])
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
            if not grade.isdigit() or int(grade) >= grades_known:
                raise ManifestError(f"{source}: line {line} (id {image!r}): grade "
                                    f"{grade!r} is not 0-{grades_known - 1}")
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
    drawn = split_by_group(grades[todo], np.array(cols["group"])[todo], val=rule["val"],
                           test=0.0 if solution in labelled else rule["test"],
                           seed=rule["seed"])
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
    return build_manifest(f"{kind}-split{rule['seed']}", cols, root=root, task=spec["task"],
                          num_classes=grades_known, notes=notes, **one_file)


def _layout(kind: str) -> Layout:
    label_file = SPECS[kind]["layout"]["labels"]
    return Layout(kind, detect=lambda path: (path / label_file).is_file(),
                  build=functools.partial(read_diabetic_retinopathy, kind=kind),
                  task=SPECS[kind]["task"])


EYEPACS = _layout("eyepacs")
APTOS = _layout("aptos")
