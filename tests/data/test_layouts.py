"""The registry of release layouts: every layout is found by its path and by its name, reads
the same either way, and never puts a patient in two splits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from featstore.data import load_dataset
from featstore.data.layouts import BUILDERS, LAYOUTS, detect_layout
from tests.conftest import make_medmnist
from tests.data.test_datasets import make_dr, make_nih, make_pcam, make_pneumonia
from tests.data.test_layouts_compat import REPLICAS

REPO = Path(__file__).resolve().parents[2]


def release(kind: str, tmp: Path) -> Path:
    """The seeded replica of one release layout, as a path a user would pass."""
    if kind == "pcam":
        return make_pcam(tmp / "pcam")
    if kind == "nih":
        return make_nih(tmp / "nih")
    if kind in ("eyepacs", "aptos"):
        return make_dr(tmp / kind, kind)
    if kind == "pneumonia":
        return make_pneumonia(tmp / "kermany")
    if kind == "image-folder":
        return make_pneumonia(tmp / "kermany") / "chest_xray"
    return make_medmnist(tmp / "retinamnist.npz", classes=5)


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_each_layout_is_detected_and_reads_the_same_by_name(tmp_path, kind):
    path = release(kind, tmp_path)
    assert detect_layout(path).kind == kind
    by_path, by_name = load_dataset(path), load_dataset(f"{kind}:{path}")
    assert by_name.sha256 == by_path.sha256 and by_name.name == by_path.name
    assert BUILDERS[kind](path).sha256 == by_path.sha256  # `featstore manifest build KIND`


def test_a_named_generic_layout_takes_the_requested_task(tmp_path):
    path = make_medmnist(tmp_path / "mydata.npz", classes=5)
    assert load_dataset(f"medmnist:{path}", task="ordinal").task == "ordinal"
    assert load_dataset(path, task="ordinal").task == "ordinal"


def test_a_csv_is_a_manifest_table_and_other_files_are_refused(tmp_path):
    from featstore.errors import ManifestError

    (tmp_path / "m.csv").write_text("id,split,path,label\na,train,a.png,0\n")
    assert detect_layout(tmp_path / "m.csv") is None
    assert load_dataset(tmp_path / "m.csv").name == "m"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown kind"):
        load_dataset(tmp_path / "notes.txt")


def patient(case: str, group: str) -> str:
    """The patient behind a group: pneumonia groups are '<official split>/<patient>'."""
    return group.partition("/")[2] if case.startswith("pneumonia") else group


# PCam, MedMNIST and image folders name no patients: their manifests have no groups.
WITH_PATIENTS = [c for c in REPLICAS if c.split("-")[0] not in ("pcam", "medmnist", "image")]


@pytest.mark.parametrize("case", WITH_PATIENTS)
def test_no_patient_is_in_two_splits(tmp_path, case):
    m = REPLICAS[case](tmp_path)
    assert m.group is not None and len(set(m.split)) >= 2
    seen: dict[str, set[str]] = {}
    for g, s in zip(m.group, m.split, strict=True):
        seen.setdefault(patient(case, g), set()).add(s)
    if case == "pneumonia":  # the release reuses patient ids across its own splits (see notes)
        assert "more than one official split" in m.notes[0]
        return
    if case.startswith("pneumonia-val"):  # only the carve is ours: no patient in train and val
        assert not [p for p, splits in seen.items() if {"train", "val"} <= splits]
        return
    assert {p: s for p, s in seen.items() if len(s) > 1} == {}


def test_importing_the_data_package_loads_no_torch_timm_sklearn_or_h5py():
    code = ("import sys, featstore.data, featstore.data.manifest; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'sklearn', 'h5py') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import featstore.data as d; print(d.RowDataset.__name__, d.read_image.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["RowDataset", "read_image"]  # still there, loaded on first use


def test_an_image_folder_is_not_announced_as_the_pneumonia_release(capsys, tmp_path):
    from PIL import Image

    from tests.conftest import cli

    for split, cls in (("train", "cats"), ("train", "dogs"), ("test", "cats"),
                       ("test", "dogs")):
        (tmp_path / "pets" / split / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "pets" / split / cls / "a.png")
    code, _, err = cli(capsys, "manifest", "build", "image-folder", str(tmp_path / "pets"),
                       "-o", str(tmp_path / "pets.csv"))
    assert code == 0, err
    assert "image folder" in err and "mendeley" not in err and "CC BY" not in err
